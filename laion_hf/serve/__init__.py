"""``laion-hf serve``: clip back's HTTP API (``/knn-service``, ``/metadata``, ``/indices-list``,
``/config.json``, ``/health``) over index folders built by ``laion-hf index``.

:func:`make_app` returns the aiohttp application (``/`` left free for a web page);
:func:`start_server` runs it on a loopback port.
"""

from __future__ import annotations

from laion_hf._lazy import lazy_getattr

_EXPORTS = {
    "make_app": "laion_hf.serve.app",
    "load_indices": "laion_hf.serve.app",
    "start_server": "laion_hf.serve.app",
    "ServeConfig": "laion_hf.serve.app",
    "KnnService": "laion_hf.serve.app",
    "SERVICE": "laion_hf.serve.app",
    "UNAVAILABLE_HEADER": "laion_hf.serve.app",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

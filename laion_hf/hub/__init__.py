"""Publish shard folders to the Hugging Face Hub: dataset cards, ``push``, ``publish``, ``reload``.

- :func:`render_card` renders ``DIR/README.md`` (+ ``assets/score_histograms.png``) from
  ``DIR/stats.json`` with the Jinja2 template ``dataset_cards/laion_subset.md.j2``.
- :func:`push` uploads ``DIR`` to a dataset repo, resumably (``laion-hf push DIR REPO_ID``).
- :func:`publish` = ``write_shards`` + ``render_card`` + ``push`` from one stream.
- :func:`reload` = plain ``datasets.load_dataset(repo_id, streaming=True)`` (optionally against a
  given endpoint, e.g. the local test server).
- :func:`configure_client` points ``huggingface_hub``/``datasets`` at another endpoint.
"""

from __future__ import annotations

from laion_hf._lazy import lazy_getattr

_EXPORTS = {
    "render_card": "laion_hf.hub.card",
    "push": "laion_hf.hub.upload",
    "PushResult": "laion_hf.hub.upload",
    "redact": "laion_hf.hub.upload",
    "resolve_token": "laion_hf.hub.upload",
    "validate_repo_id": "laion_hf.hub.upload",
    "publish": "laion_hf.hub.publishing",
    "reload": "laion_hf.hub.publishing",
    "configure_client": "laion_hf.hub.client",
}

__all__ = sorted(_EXPORTS)

# imported lazily so `laion-hf --help` stays fast
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

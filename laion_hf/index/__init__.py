"""kNN indexes over CLIP embeddings (``laion-hf index``) and searching them.

* :func:`build_index` — ``plan`` → ``run_one`` per :class:`WorkOrder` → ``finish``: faiss image
  and text indexes plus ``infos.json`` from ``laion-hf embed`` output or shards with embeddings.
* :class:`KnnIndex` — one kind of a built index with its tuned search parameter.
* :func:`open_index` — an index folder with its metadata, checked against the fingerprint.
* :func:`filter_near` — a parquet subset of the rows nearest a text, image or vector.

Needs the ``index`` extra (``pip install 'laion-hf[index]'``: faiss-cpu).
"""

from __future__ import annotations

from laion_hf._lazy import lazy_getattr

_EXPORTS = {
    "WorkOrder": "laion_hf.index.build",
    "plan": "laion_hf.index.build",
    "run_one": "laion_hf.index.build",
    "finish": "laion_hf.index.build",
    "build_index": "laion_hf.index.build",
    "build_index_ray": "laion_hf.index.engine_ray",
    "choose_index_key": "laion_hf.index.build",
    "KnnIndex": "laion_hf.index.search",
    "exact_search": "laion_hf.index.search",
    "read_infos": "laion_hf.index.search",
    "open_source": "laion_hf.index.source",
    "metadata_fingerprint": "laion_hf.index.source",
    "open_index": "laion_hf.index.query",
    "IndexFolder": "laion_hf.index.query",
    "filter_near": "laion_hf.index.query",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

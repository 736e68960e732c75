"""Image fetching: lazy, safe, cached (aiohttp + Pillow), and img2dataset-compatible downloads.

* :func:`with_images` adds ``image, status, error, width, height, original_width,
  original_height, sha256`` to a (streaming) dataset; :func:`fetch_table` does it to a table.
* :func:`laion_hf.images.download.download` (``laion-hf download``) writes tar/parquet shards.
* :mod:`laion_hf.images.status` documents the fixed status vocabulary.
"""

from __future__ import annotations

from laion_hf._lazy import lazy_getattr

_EXPORTS = {
    "with_images": "laion_hf.images.stream",
    "fetch_table": "laion_hf.images.stream",
    "fetch_counts": "laion_hf.images.stream",
    "image_features": "laion_hf.images.stream",
    "IMAGE_COLUMNS": "laion_hf.images.stream",
    "FetchConfig": "laion_hf.images.fetch",
    "ImageFetcher": "laion_hf.images.fetch",
    "ResizeConfig": "laion_hf.images.resize",
    "process_image": "laion_hf.images.resize",
    "ImageCache": "laion_hf.images.cache",
    "STATUSES": "laion_hf.images.status",
    "collect_stats": "laion_hf.images.download",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

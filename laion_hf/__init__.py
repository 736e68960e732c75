"""laion-hf: LAION image-text data as first-class Hugging Face datasets.

The public surface is small and imported lazily, so ``import laion_hf`` does not import
torch or open_clip.
"""

from __future__ import annotations

from laion_hf._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_laion": "laion_hf.builder",
    "LaionBuilder": "laion_hf.builder",
    "LaionConfig": "laion_hf.builder",
    "CANONICAL_FEATURES": "laion_hf.schema",
    "normalize_table": "laion_hf.schema",
    "PRESETS": "laion_hf.filters",
    "parse_filter": "laion_hf.filters",
    "Blocklist": "laion_hf.blocklist",
    "synthesize": "laion_hf.synth",
    "compute_stats": "laion_hf.stats",
    "filter_to_parquet": "laion_hf.export",
    "with_clip": "laion_hf.clip.stream",
    "ClipEmbedder": "laion_hf.clip.model",
    "write_shards": "laion_hf.shards",
    "render_card": "laion_hf.hub.card",
    "push": "laion_hf.hub.upload",
    "LaionTorchDataset": "laion_hf.loader",
    "make_dataloader": "laion_hf.loader",
    "with_images": "laion_hf.images.stream",
    "FetchConfig": "laion_hf.images.fetch",
    "ResizeConfig": "laion_hf.images.resize",
    "download": "laion_hf.images.download",
    "filter_to_parquet_ray": "laion_hf.engines.ray",
    "download_ray": "laion_hf.engines.ray",
    "embed_shards_ray": "laion_hf.engines.ray",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

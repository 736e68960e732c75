"""CLIP features on the fly: open_clip embeddings, similarity and LAION's score heads.

Needs the ``clip`` extra (``pip install 'laion-hf[clip]'``: torch, torchvision, open_clip_torch).
Names are imported lazily, so ``import laion_hf.clip`` (and the CLI's ``embed`` verb
registration) does not import torch.

* :class:`ClipEmbedder` — model + weights (offline), device ``"auto"``, precision ``"auto"``.
* :func:`with_clip` — add ``image_embedding``, ``text_embedding``, ``clip_similarity`` and score
  heads to an ``IterableDataset`` / ``Dataset`` / ``pa.Table``.
* :func:`aesthetic_v1`, :func:`aesthetic_v2`, :func:`nsfw_detector` — LAION's score heads.
* :func:`embed_shards` — ``laion-hf embed``: clip-retrieval's ``img_emb/ text_emb/ metadata/`` layout.
* :func:`clip_stage`, :func:`summarize_similarity`, :func:`format_similarity_summary` — for the demo.
"""

from __future__ import annotations

from laion_hf._lazy import lazy_getattr

_EXPORTS = {
    "ClipEmbedder": "laion_hf.clip.model",
    "TINY_MODEL": "laion_hf.clip.model",
    "resolve_weights": "laion_hf.clip.model",
    "resolve_device": "laion_hf.clip.model",
    "ScoreHead": "laion_hf.clip.heads",
    "aesthetic_v1": "laion_hf.clip.heads",
    "aesthetic_v2": "laion_hf.clip.heads",
    "nsfw_detector": "laion_hf.clip.heads",
    "load_head": "laion_hf.clip.heads",
    "ClipPipeline": "laion_hf.clip.stream",
    "with_clip": "laion_hf.clip.stream",
    "embed_table": "laion_hf.clip.stream",
    "clip_stage": "laion_hf.clip.stream",
    "summarize_similarity": "laion_hf.clip.stream",
    "SimilarityStats": "laion_hf.clip.stream",
    "format_similarity_summary": "laion_hf.clip.stream",
    "embed_shards": "laion_hf.clip.embed",
    "read_shards": "laion_hf.clip.embed",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

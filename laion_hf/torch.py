"""Deprecated: the training loader moved to :mod:`laion_hf.loader`.

This module only re-exports :class:`LaionTorchDataset`, :func:`make_dataloader`,
:func:`loader_demo`, :func:`fast_clip_preprocess`, ``OPENAI_MEAN`` and ``OPENAI_STD`` for one
release (``from laion_hf import make_dataloader`` is the stable spelling).
"""

from __future__ import annotations

import warnings

from laion_hf.loader import (
    OPENAI_MEAN,
    OPENAI_STD,
    LaionTorchDataset,
    fast_clip_preprocess,
    loader_demo,
    make_dataloader,
)

__all__ = ["LaionTorchDataset", "make_dataloader", "loader_demo", "fast_clip_preprocess", "OPENAI_MEAN", "OPENAI_STD"]

warnings.warn(
    "laion_hf.torch is deprecated: import from laion_hf.loader (or from laion_hf)",
    DeprecationWarning,
    stacklevel=2,
)

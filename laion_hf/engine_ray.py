"""Deprecated: the Ray engine moved to :mod:`laion_hf.engines.ray` (use
``laion_hf.engines.run_stage(stage, ..., engine="ray")``, or ``--engine ray`` on the CLI).

This module only re-exports :func:`filter_to_parquet_ray`, :func:`download_ray`,
:func:`embed_shards_ray` and :func:`init_ray` for one release.
"""

from __future__ import annotations

import warnings

from laion_hf.engines.ray import download_ray, embed_shards_ray, filter_to_parquet_ray, init_ray

__all__ = ["init_ray", "filter_to_parquet_ray", "download_ray", "embed_shards_ray"]

warnings.warn(
    "laion_hf.engine_ray is deprecated: import from laion_hf.engines.ray (or use laion_hf.engines.run_stage)",
    DeprecationWarning,
    stacklevel=2,
)

"""``index --engine ray``: the same work orders on Ray tasks give the same index files as the
local engine, and a run half done on one engine finishes on the other."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.data", reason="the Ray engine needs the ray extra: pip install 'laion-hf[ray]'")
pytest.importorskip("faiss", reason="index needs the index extra: pip install 'laion-hf[index]'")

from laion_hf.engines.ray import build_index_ray
from laion_hf.index import build_index, plan, run_one
from laion_hf.testing.knn import write_embed_folder

FILES = ("image.index", "text.index", "image.missing.npy", "text.missing.npy")
OPTS = {"index_key": "IVF16,Flat", "batch_rows": 200}


def test_ray_index_equals_local_and_resumes_across_engines(ray_local, tmp_path):
    src = write_embed_folder(tmp_path / "emb", parts=3, rows=500, dim=16, seed=2, missing_text=4)
    local = build_index(src, tmp_path / "local", **OPTS)
    on_ray = build_index_ray(src, tmp_path / "ray", workers=2, **OPTS)
    assert on_ray["kinds"]["image"]["count"] == local["kinds"]["image"]["count"] == 1500
    for name in FILES:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    orders = plan(src, tmp_path / "half", **OPTS)  # a local run that stopped after 3 orders
    for o in orders[:3]:
        run_one(o)
    build_index_ray(src, tmp_path / "half", workers=2, **OPTS)
    for name in FILES:
        assert (tmp_path / "half" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name

"""``embed`` on Ray Data (CPU decode actors -> model actors -> per-part writer tasks) writes
the same clip-retrieval parts as the local engine, with the same resume rule."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray.data", reason="the Ray engine needs the ray extra: pip install 'laion-hf[ray]'")
pytest.importorskip("torch", reason="embed needs the clip extra: pip install 'laion-hf[clip]'")
pytest.importorskip("open_clip", reason="embed needs the clip extra: pip install 'laion-hf[clip]'")

from laion_hf.clip.embed import embed_shards  # noqa: E402
from laion_hf.engines.ray import embed_shards_ray  # noqa: E402
from laion_hf.testing.image_server import make_image  # noqa: E402

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
OPTS = dict(model="laion-hf-tiny", device="cpu", precision="fp32", batch_size=8, progress=False)


def _shard(path, start: int, n: int) -> None:
    """A parquet shard like the images stage writes: image struct, caption, status; with a
    broken image, a failed fetch and a missing caption among good JPEG/PNG rows."""
    images, captions, status = [], [], []
    for i in range(start, start + n):
        if i % 11 == 3:
            images.append({"bytes": b"\xff\xd8 not a jpeg", "path": None})
        elif i % 11 == 7:
            images.append(None)
        else:
            images.append({"bytes": make_image(40 + i % 13, 36 + i % 5, "png" if i % 4 == 0 else "jpg", seed=i),
                           "path": None})  # fmt: skip
        captions.append(None if i % 9 == 5 else f"a photo number {i}")
        status.append("failed_to_download" if i % 11 == 7 else "success")
    keys = [f"{i:09d}" for i in range(start, start + n)]
    pq.write_table(pa.table({"key": keys, "caption": captions, "image": pa.array(images, IMAGE), "status": status,
                             "similarity": [0.25 + i / 1000 for i in range(start, start + n)]}), path)  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-embed-in")
    _shard(d / "00000.parquet", 0, 21)
    _shard(d / "00001.parquet", 21, 13)
    _shard(d / "00002.parquet", 34, 0)  # an empty shard is an empty part
    return str(d)


def _assert_same(a: str, b: str) -> None:
    files = sorted(os.path.relpath(os.path.join(r, f), a) for r, _, fs in os.walk(a) for f in fs)
    assert files == sorted(os.path.relpath(os.path.join(r, f), b) for r, _, fs in os.walk(b) for f in fs)
    assert len(files) == 3 * 4 + 1
    for f in files:
        x, y = os.path.join(a, f), os.path.join(b, f)
        if f.endswith(".npy"):
            u, v = np.load(x), np.load(y)
            assert u.dtype == v.dtype and np.array_equal(u, v), f
        elif f.endswith(".parquet"):
            assert pq.read_table(x).equals(pq.read_table(y)), f
        else:
            assert json.load(open(x)) == json.load(open(y)), f


@contextlib.contextmanager
def _torch_threads(n: int):
    """CPU matmuls round differently with another thread count (the last bits of fp32, so a
    float16 value now and then): Ray's model actor runs with one CPU thread, so the local run
    it is compared with does too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_embed_matches_local_and_resumes(ray_local, shards, tmp_path):
    with _torch_threads(1):
        a = embed_shards(shards, tmp_path / "local", **OPTS)
    b = embed_shards_ray(shards, tmp_path / "ray", **OPTS)
    _assert_same(str(tmp_path / "local"), str(tmp_path / "ray"))
    for k in ("parts", "parts_skipped", "count", "embedded", "failed", "status_dict"):
        assert a[k] == b[k], k
    assert (
        b["count"] == 34
        and b["failed"] == b["status_dict"].get("decode_error", 0) + b["status_dict"]["failed_to_download"]
    )
    assert b["status_dict"]["decode_error"] >= 3 and b["engine"] == "ray"
    # row-aligned parts, every embedded row once
    keys = []
    for n in range(3):
        meta = pq.read_table(tmp_path / "ray" / "metadata" / f"metadata_{n}.parquet")
        assert meta.num_rows == np.load(tmp_path / "ray" / "img_emb" / f"img_emb_{n}.npy").shape[0]
        assert meta.num_rows == np.load(tmp_path / "ray" / "text_emb" / f"text_emb_{n}.npy").shape[0]
        keys += meta["key"].to_pylist()
    assert len(keys) == len(set(keys)) == b["embedded"]
    # resume: a part without its metadata file is redone, the others are kept as they are
    os.unlink(tmp_path / "ray" / "metadata" / "metadata_1.parquet")
    kept = os.stat(tmp_path / "ray" / "img_emb" / "img_emb_0.npy").st_mtime_ns
    c = embed_shards_ray(shards, tmp_path / "ray", **OPTS)
    assert c["parts_skipped"] == 2 and c["count"] == 13
    assert os.stat(tmp_path / "ray" / "img_emb" / "img_emb_0.npy").st_mtime_ns == kept
    _assert_same(str(tmp_path / "local"), str(tmp_path / "ray"))


def test_unreadable_shard_is_a_shard_error_and_other_parts_are_written(ray_local, shards, tmp_path):
    bad = tmp_path / "00001.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    inputs = [os.path.join(shards, "00000.parquet"), str(bad)]
    from laion_hf.errors import ShardError

    with pytest.raises(ShardError, match="00001.parquet"):
        embed_shards(inputs, tmp_path / "local", **OPTS)
    with pytest.raises(ShardError, match="00001.parquet: cannot read the parquet shard"):
        embed_shards_ray(inputs, tmp_path / "ray", **OPTS)
    assert os.path.exists(tmp_path / "ray" / "metadata" / "metadata_0.parquet")
    assert not os.path.exists(tmp_path / "ray" / "metadata" / "metadata_1.parquet")


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_embed_on_gpu_actor_matches_local_gpu(ray_local, shards, tmp_path):
    """On a GPU machine the model actors ask Ray for a GPU (num_gpus=1) and match the local
    engine on the same GPU (fp32; CUDA kernels may differ in the last bits between processes)."""
    assert ray_local.cluster_resources().get("GPU", 0) >= 1
    opts = dict(OPTS, device="auto", precision="fp32")
    a = embed_shards(shards, tmp_path / "local", **opts)
    b = embed_shards_ray(shards, tmp_path / "ray", **opts)
    for k in ("count", "embedded", "failed", "status_dict"):
        assert a[k] == b[k], k
    for n in range(3):
        for sub, name in (("img_emb", "img_emb"), ("text_emb", "text_emb")):
            u = np.load(tmp_path / "local" / sub / f"{name}_{n}.npy")
            v = np.load(tmp_path / "ray" / sub / f"{name}_{n}.npy")
            assert u.shape == v.shape and np.allclose(u.astype(np.float32), v.astype(np.float32), atol=2e-3)
        x = pq.read_table(tmp_path / "local" / "metadata" / f"metadata_{n}.parquet")
        y = pq.read_table(tmp_path / "ray" / "metadata" / f"metadata_{n}.parquet")
        assert x["key"].to_pylist() == y["key"].to_pylist()

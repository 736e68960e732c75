"""The whole pipeline into the Hub: synthesize -> load_laion (preset + filter) -> fetch from the
loopback image server -> CLIP (tiny real open_clip model) -> shards + card -> push to the local
Hub -> plain ``load_dataset(..., streaming=True)`` gives back the same rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("open_clip")


@pytest.mark.slow
def test_metadata_images_clip_shards_push_reload(hub, token, tmp_path):
    import datasets

    from laion_hf import load_laion, synthesize, with_clip, with_images
    from laion_hf.hub import publish, reload
    from laion_hf.testing.image_server import ImageServer

    synthesize(300, tmp_path / "meta", files=1, seed=3, row_group_size=100)
    ds = load_laion(str(tmp_path / "meta"), where="punsafe < 0.5 and similarity >= 0.3", batch_size=64)
    with ImageServer(catch_all="image", fault_rate=0.2, pool_size=8, pool_sides=(48, 96)) as images:
        ds = ds.with_format("arrow").map(lambda t: images.rewrite_column(t, "url"), batched=True, batch_size=64)
        ds = with_images(
            ds,
            batch_size=16,
            image_size=32,
            resize_mode="center_crop",
            allow_private_networks=True,
            timeout=5,
            retries=0,
        )
        ds = with_clip(ds, model="laion-hf-tiny", device="cpu", precision="fp32", batch_size=16)
        out = publish(
            ds,
            tmp_path / "out",
            "laion-hf/e2e",
            token=token,
            endpoint=hub.url,
            max_shard_rows=40,
            progress=False,
            provenance={
                "filters": ["punsafe < 0.5", "similarity >= 0.3"],
                "clip": {"model": "laion-hf-tiny", "embedding_dim": 32},
            },
        )
    stats = out["stats"]
    assert stats["rows"] > 40 and stats["num_shards"] >= 2 and out["push"]["commits"]
    assert sum(stats["status"].values()) == stats["rows"]
    assert 0 < stats["status"]["success"] < stats["rows"] and stats["errors"].get("http_404", 0) > 0
    written = pa.concat_tables(pq.read_table(tmp_path / "out" / s["path"]) for s in stats["shards"])
    assert written.schema.field("image_embedding").type.list_size == stats["embedding_dims"]["image_embedding"]

    rows = list(reload("laion-hf/e2e"))
    assert [r["key"] for r in rows] == written.column("key").to_pylist()
    assert [r["caption"] for r in rows] == written.column("caption").to_pylist()
    src_images = written.column("image").combine_chunks().field("bytes").to_pylist()
    src_emb = written.column("image_embedding").to_pylist()
    for r, img, emb in zip(rows, src_images, src_emb):
        assert (r["image"] is None) == (img is None)
        if img is not None:
            assert r["image"].size == (32, 32)
            np.testing.assert_array_equal(np.float32(r["image_embedding"]), np.float32(emb))
    info = datasets.load_dataset_builder("laion-hf/e2e", cache_dir=str(tmp_path / "cache")).info
    assert isinstance(info.features["image"], datasets.Image)  # from the card's dataset_info
    assert info.splits["train"].num_examples == stats["rows"]
    meta = yaml.safe_load((tmp_path / "out" / "README.md").read_text().split("---\n")[1])
    assert meta["configs"][0]["data_files"][0]["path"] == "data/default/train-*.parquet"

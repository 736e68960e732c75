"""with_clip: reference equality with open_clip, bad images, streams, filters, summaries."""

from __future__ import annotations

import threading
import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from laion_hf.clip import ClipPipeline, format_similarity_summary, summarize_similarity, with_clip
from laion_hf.errors import SchemaError
from laion_hf.testing.image_server import bomb_png


def _formats(h):
    """Real encoded images of several formats and modes, 512² or larger JPEGs among them."""
    base = Image.open(__import__("io").BytesIO(h.jpeg(600, 520, seed=3)))
    return [
        h.jpeg(512, 512, seed=1),
        h.jpeg(800, 600, seed=2),
        h.jpeg(333, 777, seed=4),
        h.encoded(base, "PNG"),
        h.encoded(base.convert("RGBA"), "PNG"),
        h.encoded(base.convert("L"), "JPEG"),
        h.encoded(base.convert("P"), "PNG"),
        h.encoded(base, "WEBP"),
    ]


def test_image_and_text_embeddings_equal_open_clip_reference(tiny, h):
    images = _formats(h)
    captions = [f"a photo number {i} of a colourful field" for i in range(len(images))]
    out = with_clip(h.image_table(images, captions), tiny, embedding_dtype="float32")
    img = h.as_matrix(out["image_embedding"])
    txt = h.as_matrix(out["text_embedding"])
    ref_img = h.ref_images(tiny, images)
    ref_txt = h.ref_texts(tiny, captions)
    assert img.shape == (len(images), tiny.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-4)
    cos_img = (img * ref_img).sum(1)
    cos_txt = (txt * ref_txt).sum(1)
    assert cos_img.min() >= 0.999, cos_img
    assert cos_txt.min() >= 0.999, cos_txt
    sim = np.array(out["clip_similarity"].to_pylist())
    np.testing.assert_allclose(sim, (ref_img * ref_txt).sum(1), atol=2e-3)
    assert out["status"].to_pylist() == ["success"] * len(images)


def test_without_draft_the_embedding_is_exactly_open_clips(tiny, h):
    images = [h.jpeg(512, 512, seed=7), h.jpeg(1024, 640, seed=8)]
    out = with_clip(h.image_table(images, ["a", "b"]), tiny, draft=False)
    cos = (h.as_matrix(out["image_embedding"]) * h.ref_images(tiny, images)).sum(1)
    assert cos.min() >= 0.99999


def test_bad_images_get_nulls_and_statuses_and_never_crash(tiny, h, tmp_path):
    good = h.jpeg(512, 512, seed=1)
    on_disk = tmp_path / "local.jpg"
    on_disk.write_bytes(h.jpeg(300, 300, seed=9))
    images = [
        good,
        b"not an image at all",
        good[: len(good) // 3],
        b"",
        None,
        None,
        bomb_png(12_000, 12_000),
        good,
        None,
    ]
    statuses = [
        "success",
        "success",
        "success",
        "success",
        "success",
        "failed_to_download",
        "success",
        "success",
        "success",
    ]
    table = h.image_table(images, [f"c{i}" for i in range(9)], statuses)
    # row 8: no bytes but a local path (datasets' Image() storage for files on disk)
    structs = table["image"].to_pylist()
    structs[8] = {"bytes": None, "path": str(on_disk)}
    table = table.set_column(2, "image", pa.array(structs, h.IMAGE_TYPE))
    table = table.append_column(
        "error_message", pa.array([None] * 5 + ["timeout after 10 s", None, None, None], pa.string())
    )
    out = with_clip(table, tiny)
    assert out.num_rows == 9  # every row kept
    st = out["status"].to_pylist()
    assert st == ["success", "decode_error", "decode_error", "decode_error", "decode_error",
                  "failed_to_download", "decode_error", "success", "success"]  # fmt: skip
    valid = out["image_embedding"].is_valid().to_pylist()
    assert valid == [True, False, False, False, False, False, False, True, True]
    sim_valid = out["clip_similarity"].is_valid().to_pylist()
    assert sim_valid == valid
    assert all(out["text_embedding"].is_valid().to_pylist())  # captions are all there
    err = out["error_message"].to_pylist()
    assert err[0] is None and err[1] and err[4] == "no image bytes"
    assert err[5] == "timeout after 10 s"  # earlier failures keep their message
    assert "decompression bomb: 12000x12000" in err[6]  # between PIL's warning and error limits: still refused
    # the good rows still match the reference
    ref = h.ref_images(tiny, [good])[0]
    assert float(h.as_matrix(out["image_embedding"].filter(out["image_embedding"].is_valid()))[0] @ ref) >= 0.999


def test_null_caption_gives_null_text_and_similarity(tiny, h):
    out = with_clip(h.image_table([h.jpeg(256, 256, 1), h.jpeg(256, 256, 2)], [None, "x"]), tiny)
    assert out["text_embedding"].is_valid().to_pylist() == [False, True]
    assert out["clip_similarity"].is_valid().to_pylist() == [False, True]
    assert out["image_embedding"].is_valid().to_pylist() == [True, True]


def test_float16_embeddings_are_fixed_size_half_lists(tiny, h):
    out = with_clip(h.image_table([h.jpeg(256, 256, 1)], ["x"]), tiny, embedding_dtype="float16")
    t = out.schema.field("image_embedding").type
    assert pa.types.is_fixed_size_list(t) and t.list_size == tiny.embed_dim and t.value_type == pa.float16()
    assert out.schema.field("text_embedding").type == t


def _dataset(h, n=30):
    images = [h.jpeg(320, 240, seed=i) for i in range(n)]
    images[4] = b"broken"
    features = datasets.Features(
        {"key": datasets.Value("string"), "caption": datasets.Value("string"), "image": datasets.Image(),
         "status": datasets.Value("string")}
    )  # fmt: skip
    data = {"key": [f"{i:05d}" for i in range(n)], "caption": [f"caption {i}" for i in range(n)],
            "image": [{"bytes": b, "path": None} for b in images], "status": ["success"] * n}  # fmt: skip
    return datasets.Dataset.from_dict(data, features=features), images


def _iterable(h, n=30, shards=3):
    ds, images = _dataset(h, n)
    return ds.to_iterable_dataset(num_shards=shards), images


def test_iterable_dataset_stream_keeps_shards_order_features_and_filters(tiny, h):
    ds, images = _iterable(h)
    out = with_clip(ds, tiny, heads=["aesthetic_v1"], batch_size=4)
    assert isinstance(out, datasets.IterableDataset)
    assert out.num_shards == 3
    f = out.features
    assert f["image_embedding"] == datasets.List(datasets.Value("float32"), length=tiny.embed_dim)
    assert f["clip_similarity"] == datasets.Value("float64")
    assert f["aesthetic_score_v1"] == datasets.Value("float64")
    table = pa.concat_tables(list(out.iter(batch_size=7)))
    assert table["key"].to_pylist() == [f"{i:05d}" for i in range(30)]
    assert table["status"].to_pylist().count("decode_error") == 1
    sims = np.array([np.nan if v is None else v for v in table["clip_similarity"].to_pylist()])
    threshold = float(np.nanmedian(sims))
    kept = out.filter(lambda t: pc.fill_null(pc.greater_equal(t["clip_similarity"], threshold), False), batched=True)
    kept_keys = [k for t in kept.iter(batch_size=10) for k in t["key"].to_pylist()]
    expected = [f"{i:05d}" for i in range(30) if not np.isnan(sims[i]) and sims[i] >= threshold]
    assert kept_keys == expected and 0 < len(kept_keys) < 30
    # the same filter in laion-hf's filter language, applied inside the stage
    where = with_clip(ds, tiny, batch_size=4, where=f"clip_similarity >= {threshold!r} and aesthetic_score_v1 > 0",
                      heads=["aesthetic_v1"])  # fmt: skip
    assert [k for t in where.iter(batch_size=10) for k in t["key"].to_pylist()] == expected
    # the same rows as a direct table call (one row checked against open_clip's own path)
    ref = h.ref_images(tiny, [images[0]])[0]
    assert float(np.array(table["image_embedding"][0].as_py()) @ ref) >= 0.999


def test_iterable_stream_splits_by_shard_for_workers(tiny, h):
    from datasets.distributed import split_dataset_by_node

    ds, _ = _iterable(h, n=12, shards=4)
    out = with_clip(ds, tiny, batch_size=4)
    parts = [split_dataset_by_node(out, rank=r, world_size=2) for r in range(2)]
    keys = [[k for t in p.iter(batch_size=100) for k in t["key"].to_pylist()] for p in parts]
    assert sorted(keys[0] + keys[1]) == [f"{i:05d}" for i in range(12)]
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])


def test_map_style_dataset(tiny, h):
    mds, _ = _dataset(h, n=6)
    out = with_clip(mds, tiny)
    assert isinstance(out, datasets.Dataset) and len(out) == 6
    assert len(out[0]["image_embedding"]) == tiny.embed_dim
    assert out.features["image_embedding"] == datasets.List(datasets.Value("float32"), length=tiny.embed_dim)
    row = out.select_columns(["status", "image_embedding"])[4]
    assert row["status"] == "decode_error" and row["image_embedding"] is None


def test_stopping_early_ends_the_worker_threads(tiny, h):
    before = threading.active_count()
    pipe = ClipPipeline(tiny, prefetch=2, num_workers=2)
    table = h.image_table([h.jpeg(256, 256, seed=i) for i in range(40)], ["x"] * 40)
    gen = pipe.run([table])
    first = next(gen)
    assert first.num_rows == tiny.batch_size
    gen.close()
    deadline = time.time() + 10
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_upstream_errors_reach_the_caller(tiny, h):
    def tables():
        yield h.image_table([h.jpeg(64, 64, 1)], ["x"])
        raise RuntimeError("upstream exploded")

    with pytest.raises(RuntimeError, match="upstream exploded"):
        list(ClipPipeline(tiny).run(tables()))


def test_missing_columns_are_a_schema_error(tiny):
    with pytest.raises(SchemaError, match="image"):
        with_clip(pa.table({"caption": ["x"]}), tiny)
    with pytest.raises(SchemaError, match="struct"):
        with_clip(pa.table({"caption": ["x"], "image": [1]}), tiny)


def test_summarize_similarity():
    s = summarize_similarity(pa.array([0.1, 0.3, None, 0.29, 0.27], pa.float64()))
    assert s["count"] == 4 and s["nulls"] == 1
    assert s["share_at_least"]["0.28"] == 0.5
    assert s["share_at_least"]["0.26"] == 1.0 - 0.25
    assert abs(s["mean"] - np.mean([0.1, 0.3, 0.29, 0.27])) < 1e-12
    assert sum(s["histogram"]["counts"]) == 4
    text = format_similarity_summary(s)
    assert "over 4 rows (1 null)" in text and ">= 0.28: 50.0%" in text
    assert summarize_similarity([None])["count"] == 0


def test_similarity_stats_stream_in_batches_matches_numpy():
    from laion_hf.clip import SimilarityStats

    rng = np.random.default_rng(0)
    v = rng.normal(0.3, 0.05, size=5000)
    acc = SimilarityStats()
    for i in range(0, 5000, 700):
        acc.update(pa.table({"clip_similarity": pa.array(v[i : i + 700])}))
    acc.update(pa.array([None, None], pa.float64()))
    s = acc.result()
    assert s["count"] == 5000 and s["nulls"] == 2
    assert abs(s["mean"] - v.mean()) < 1e-9 and abs(s["std"] - v.std()) < 1e-6
    assert s["min"] == v.min() and s["max"] == v.max()
    assert s["share_at_least"]["0.28"] == float((v >= 0.28).mean())
    for q in (5, 50, 95):
        assert abs(s[f"p{q}"] - np.percentile(v, q)) < 2e-3
    assert sum(s["histogram"]["counts"]) == 5000
    assert s["histogram"]["edges"][0] == v.min() and s["histogram"]["edges"][-1] == v.max()


def test_chained_after_with_images_over_loopback_http(tiny):
    """metadata -> with_images (real aiohttp fetches from the loopback server) -> with_clip."""
    from laion_hf.images import with_images
    from laion_hf.testing.image_server import ImageServer

    with ImageServer() as srv:
        urls = [srv.image_url(512, 512, "jpg", seed=i) for i in range(6)]
        urls[2] = srv.fault_url("404")
        urls[4] = srv.fault_url("corrupt-jpeg")
        meta = datasets.Dataset.from_dict(
            {"key": [f"{i:03d}" for i in range(6)], "url": urls, "caption": [f"photo {i}" for i in range(6)]}
        ).to_iterable_dataset(num_shards=2)
        fetched = with_images(meta, batch_size=3, allow_private_networks=True, image_size=256, retries=0)
        out = with_clip(fetched, tiny, heads=["aesthetic_v1"], batch_size=4)
        table = pa.concat_tables(list(out.iter(batch_size=10)))
    assert table.num_rows == 6
    st = table["status"].to_pylist()
    assert st[2] == "http_404" and st[4] != "success"
    ok = [s == "success" for s in st]
    assert table["image_embedding"].is_valid().to_pylist() == ok
    assert table["aesthetic_score_v1"].is_valid().to_pylist() == ok
    assert "error" in table.column_names and "error_message" not in table.column_names
    assert table["error"].to_pylist()[2]  # the fetch error message is kept
    assert out.features["image"] == datasets.Image()


def test_demo_entry_point_with_cli_flags(h):
    import argparse

    from laion_hf.cli._options import add_clip_arguments
    from laion_hf.clip import SimilarityStats, clip_stage

    p = argparse.ArgumentParser()
    add_clip_arguments(p)
    args = p.parse_args(["--clip-device", "cpu", "--clip-batch-size", "4"])
    assert args.clip_model == "laion-hf-tiny" and args.clip_pretrained is None
    ds, _ = _iterable(h, n=10, shards=2)
    stream, emb = clip_stage(
        ds, args.clip_model, args.clip_pretrained, device=args.clip_device, batch_size=args.clip_batch_size
    )
    assert emb.batch_size == 4 and emb.device.type == "cpu"
    stats = SimilarityStats()
    for t in stream.iter(batch_size=5):
        stats.update(t)
        assert t["aesthetic_score_v1"].null_count == t["image_embedding"].null_count  # V1 head on by default
    res = stats.result()
    assert res["count"] + res["nulls"] == 10 and res["nulls"] == 1
    assert "clip_similarity over 9 rows (1 null)" in format_similarity_summary(res)
    from laion_hf.errors import ModelError

    with pytest.raises(ModelError, match="hf download"):
        clip_stage(ds, "ViT-B-32-quickgelu", "laion400m_e32")  # a real model whose weights are absent


def test_multi_chunk_sliced_and_large_binary_inputs(tiny, h):
    images = [h.jpeg(256, 256, seed=30 + i) for i in range(7)]
    t1 = h.image_table(images[:4], [f"c{i}" for i in range(4)])
    t2 = h.image_table(images[4:] + [None], [f"c{i}" for i in range(4, 8)], ["success"] * 3 + ["timeout"])
    table = pa.concat_tables([t1, t2])  # two chunks; batches of 3 straddle them
    assert table["image"].num_chunks == 2
    out = with_clip(table, tiny, batch_size=3)
    assert tiny.batch_size == 8  # the shared embedder is not changed by a per-call batch size
    ref = h.ref_images(tiny, images)
    got = h.as_matrix(out["image_embedding"].filter(out["image_embedding"].is_valid()))
    assert got.shape == (7, tiny.embed_dim) and (got * ref).sum(1).min() >= 0.999
    assert out["status"].to_pylist()[-1] == "timeout"
    # a plain large_binary image column (no struct) works too
    plain = pa.table({"image": pa.array(images[:2], pa.large_binary()), "caption": ["a", "b"]})
    out2 = with_clip(plain, tiny)
    assert (h.as_matrix(out2["image_embedding"]) * ref[:2]).sum(1).min() >= 0.999
    assert out2["status"].to_pylist() == ["success", "success"]  # status added when absent


def test_where_counts_what_it_removes(tiny, h):
    table = h.image_table([h.jpeg(128, 128, seed=i) for i in range(5)] + [b"junk"], list("abcdef"))
    pipe = ClipPipeline(tiny, where="clip_similarity >= -1")
    out = pipe.embed_table(table)
    assert out.num_rows == 5  # only the undecodable row (null similarity) is removed
    assert pipe.counts == {"rows_in": 6, "rows_out": 5, "removed_by_filter": 1, "decode_errors": 1}
    from laion_hf.errors import FilterError

    with pytest.raises(FilterError):
        ClipPipeline(tiny, where="clip_similarity >=").embed_table(table)

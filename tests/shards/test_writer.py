"""write_shards: parquet with Image() + fixed-length embeddings, webdataset tars, sizing, naming,
stats that sum to the input, flat memory, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_rows import PROVENANCE, make_rows, pixels

from laion_hf.errors import ShardError
from laion_hf.shards import read_stats, write_shards


def _files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_parquet_shards_named_sized_and_decodable(tmp_path):
    table = make_rows(50)
    stats = write_shards(table, tmp_path, max_shard_rows=20, progress=False, provenance=PROVENANCE)

    assert _files(tmp_path) == [
        "data/default/train-00000-of-00003.parquet",
        "data/default/train-00001-of-00003.parquet",
        "data/default/train-00002-of-00003.parquet",
        "stats.json",
    ]
    assert [s["rows"] for s in stats["shards"]] == [20, 20, 10]
    assert stats["rows"] == stats["rows_written"] == 50
    assert sum(stats["status"].values()) == 50 and stats["status"]["success"] == 40
    expected_errors = {c: table["status"].to_pylist().count(c) for c in ("http_404", "timeout", "decode_error")}
    assert stats["errors"] == {k: v for k, v in expected_errors.items() if v} and sum(expected_errors.values()) == 10
    assert stats["embedding_dims"] == {"image_embedding": 8, "text_embedding": 8}
    assert read_stats(tmp_path)["configs"]["default"]["num_shards"] == 3

    schema = pq.read_schema(tmp_path / stats["shards"][0]["path"])
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert schema.field("image_embedding").type == pa.list_(pa.float32(), 8)
    feats = datasets.Features.from_arrow_schema(schema)  # features declared in the schema metadata
    assert isinstance(feats["image"], datasets.Image)

    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "data/default/*.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.num_rows == 50
    src = table.to_pylist()
    for i in (0, 4, 7, 49):
        row = ds[i]
        assert row["key"] == src[i]["key"] and row["caption"] == src[i]["caption"]
        if src[i]["image"] is None:
            assert row["image"] is None and row["status"] != "success" and row["image_embedding"] is None
        else:
            np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), pixels(src[i]["image"]))
            np.testing.assert_array_equal(np.float32(row["image_embedding"]), np.float32(src[i]["image_embedding"]))
        np.testing.assert_array_equal(np.float32(row["text_embedding"]), np.float32(src[i]["text_embedding"]))


def test_shards_by_bytes(tmp_path):
    table = make_rows(60, image_size=(64, 64), fail_every=0)
    stats = write_shards(table, tmp_path, max_shard_bytes="40kB", row_group_rows=5, batch_size=7, progress=False)
    assert stats["num_shards"] >= 3
    per_row = max(len(b) for b in table.column("image").to_pylist())
    for s in stats["shards"]:
        assert s["bytes"] <= 40_000 + 6 * per_row + 4096, s  # at most one row group beyond the limit
    assert sum(s["rows"] for s in stats["shards"]) == 60
    assert stats["shards"][-1]["path"].endswith(f"-of-{stats['num_shards']:05d}.parquet")


def test_streaming_dataset_input_with_declared_image_feature(tmp_path):
    table = make_rows(30, fail_every=0)
    feats = datasets.Features(
        {
            "key": datasets.Value("string"),
            "caption": datasets.Value("string"),
            "image": datasets.Image(),
            "image_embedding": datasets.List(datasets.Value("float32")),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "key": table["key"].to_pylist(),
            "caption": table["caption"].to_pylist(),
            "image": [{"bytes": b, "path": None} for b in table["image"].to_pylist()],
            "image_embedding": table["image_embedding"].to_pylist(),
        },
        features=feats,
    ).to_iterable_dataset(num_shards=3)
    stats = write_shards(ds, tmp_path, config="stream", progress=False, batch_size=8)
    assert stats["rows"] == 30 and stats["data_files"] == "data/stream/train-*.parquet"
    back = pq.read_table(tmp_path / stats["shards"][0]["path"])
    assert back.column("image").combine_chunks().field("bytes").to_pylist() == table["image"].to_pylist()


def test_webdataset_tars(tmp_path):
    table = make_rows(25)
    stats = write_shards(table, tmp_path, format="webdataset", max_shard_rows=10, progress=False)
    assert [p for p in _files(tmp_path) if p.endswith(".tar")] == [
        f"data/default/train-0000{i}-of-00003.tar" for i in range(3)
    ]
    assert stats["rows"] == 25 and stats["rows_written"] == 20
    # failures are counted by class, not silently dropped
    assert stats["skipped"] == stats["errors"] and sum(stats["skipped"].values()) == 5
    with tarfile.open(tmp_path / stats["shards"][0]["path"]) as tf:
        names = tf.getnames()
    assert {"000000000.jpg", "000000000.txt", "000000000.json", "000000000.npy", "000000000.text_embedding.npy"} <= set(
        names
    )
    assert not any(n.startswith("000000004.") for n in names)  # row 4 failed: no sample

    ds = datasets.load_dataset(
        "webdataset", data_files=str(tmp_path / "data/default/*.tar"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.num_rows == 20
    src = {r["key"]: r for r in table.to_pylist()}
    for row in ds.select(range(5)):
        s = src[row["__key__"]]
        assert row["txt"] == s["caption"] and row["json"]["url"] == s["url"]
        np.testing.assert_array_equal(np.asarray(row["jpg"].convert("RGB")), pixels(s["image"]))
        np.testing.assert_allclose(np.float32(row["npy"]), np.float32(s["image_embedding"]))


def test_overwrite_mixing_and_bad_input_errors(tmp_path):
    write_shards(make_rows(10), tmp_path, progress=False)
    with pytest.raises(ShardError, match="already has shards.*overwrite"):
        write_shards(make_rows(10), tmp_path, progress=False)
    stats = write_shards(make_rows(12), tmp_path, progress=False, overwrite=True)
    assert stats["rows"] == 12 and len(list((tmp_path / "data/default").iterdir())) == 1
    write_shards(make_rows(5), tmp_path, config="second", progress=False)
    assert set(read_stats(tmp_path)["configs"]) == {"default", "second"}
    with pytest.raises(ShardError, match="cannot mix parquet and webdataset"):
        write_shards(make_rows(5), tmp_path, config="third", format="webdataset", progress=False)

    with pytest.raises(ShardError, match="no rows"):
        write_shards(iter([]), tmp_path / "empty", progress=False)
    with pytest.raises(ShardError, match="item 1 of the input stream is a dict"):
        write_shards(iter([make_rows(3), {"key": "x"}]), tmp_path / "bad", progress=False)
    ragged = pa.table({"key": ["a", "b"], "image_embedding": pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32()))})
    with pytest.raises(ShardError, match="'image_embedding' has vectors of different lengths"):
        write_shards(ragged, tmp_path / "ragged", progress=False)
    with pytest.raises(ShardError, match="column 'image' has type int64"):
        write_shards(pa.table({"image": [1, 2]}), tmp_path / "img", progress=False)
    with pytest.raises(ShardError, match="unknown shard format"):
        write_shards(make_rows(2), tmp_path / "fmt", format="csv", progress=False)
    assert not list((tmp_path / "bad").rglob(".tmp-*")), "temporary shards are removed after an error"


def test_missing_or_broken_stats_is_a_clear_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ShardError, match="has no stats.json"):
        read_stats(tmp_path)
    (tmp_path / "stats.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        read_stats(tmp_path)


def test_provenance_keeps_no_local_path(tmp_path):
    prov = dict(PROVENANCE, sources=[str(tmp_path / "secret" / "part-0.parquet"), "hf://datasets/laion/x/a.parquet"])
    write_shards(make_rows(5), tmp_path / "out", provenance=prov, progress=False)
    text = (tmp_path / "out" / "stats.json").read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["configs"]["default"]["provenance"]["sources"] == [
        "part-0.parquet",
        "hf://datasets/laion/x/a.parquet",
    ]


def test_cli_shards_verb(tmp_path):
    from laion_hf.cli import main

    src = tmp_path / "in.parquet"
    pq.write_table(make_rows(30), src)
    assert (
        main(
            [
                "shards",
                str(src),
                str(tmp_path / "out"),
                "--max-shard-rows",
                "12",
                "--quiet",
                "--card",
                "--repo-id",
                "org/name",
            ]
        )
        == 0
    )
    stats = read_stats(tmp_path / "out")["configs"]["default"]
    assert stats["num_shards"] == 3 and stats["rows"] == 30
    assert 'load_dataset("org/name"' in (tmp_path / "out" / "README.md").read_text()


def test_memory_is_flat_in_the_row_count(tmp_path):
    """150 MB of rows through the writer in a fresh process: Arrow's peak stays near one row group."""
    script = textwrap.dedent(f"""
        import os, pyarrow as pa
        from laion_hf.shards import write_shards
        def batches():
            for i in range(150):
                blob = os.urandom(2000 * 500)
                yield pa.table({{"key": [f"{{i}}-{{j}}" for j in range(500)],
                                 "blob": [blob[j * 2000:(j + 1) * 2000] for j in range(500)]}})
        stats = write_shards(batches(), {str(tmp_path)!r}, max_shard_bytes="40MB", row_group_rows=2000, progress=False)
        print(stats["rows"], stats["num_shards"], pa.default_memory_pool().max_memory())
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows, shards, peak = map(int, out.stdout.split()[-3:])
    assert rows == 75_000 and shards >= 3
    assert peak < 60_000_000, f"peak Arrow memory {peak:,} bytes for 150 MB written"


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_from_an_img2dataset_download_folder(tmp_path, output_format):
    """`laion-hf download` output (tars + per-row parquet, or parquet with images) -> Hub shards."""
    from laion_hf.images.download import download
    from laion_hf.testing.image_server import ImageServer

    with ImageServer(catch_all="image", fault_rate=0.25, pool_size=4, pool_sides=(40, 60)) as srv:
        urls = [srv.url(f"/photos/{i}.jpg") for i in range(30)]
        meta = pa.table({"url": urls, "caption": [f"caption {i}" for i in range(30)]})
        run = download(
            meta,
            tmp_path / "dl",
            output_format=output_format,
            shard_size=12,
            progress=False,
            allow_private_networks=True,
            timeout=5,
            retries=0,
            image_size=32,
            resize_mode="center_crop",
        )
    stats = write_shards(str(tmp_path / "dl"), tmp_path / "out", progress=False)
    assert stats["rows"] == run["count"] == 30
    assert stats["status"].get("success", 0) == run["successes"] and 0 < run["successes"] < 30
    table = pa.concat_tables(pq.read_table(tmp_path / "out" / s["path"]) for s in stats["shards"])
    ok = pa.compute.equal(table["status"], "success")
    assert (
        table.filter(ok)["image"].null_count == 0
        and table.filter(pa.compute.invert(ok))["image"].null_count == 30 - run["successes"]
    )
    assert pixels(table.filter(ok)["image"][0]["bytes"].as_py()).shape == (32, 32, 3)


def test_null_image_structs_are_not_written_as_empty_samples(tmp_path):
    """with_images emits Image() structs whose parent is null on failure; the child bytes of a
    null struct must not make a 0-byte .jpg sample."""
    table = make_rows(10)
    raw = table.column("image").combine_chunks()
    failed = raw.is_null()
    filled = pa.array([b if b is not None else b"" for b in raw.to_pylist()], pa.binary())
    struct = pa.StructArray.from_arrays([filled, pa.nulls(10, pa.string())], names=["bytes", "path"], mask=failed)
    table = table.set_column(table.column_names.index("image"), "image", struct)
    stats = write_shards(table, tmp_path, format="webdataset", progress=False)
    assert stats["rows_written"] == 8 and sum(stats["skipped"].values()) == 2
    with tarfile.open(tmp_path / stats["shards"][0]["path"]) as tf:
        jpgs = [m for m in tf.getmembers() if m.name.endswith(".jpg")]
    assert len(jpgs) == 8 and all(m.size > 0 for m in jpgs)


def test_row_groups_have_the_requested_size(tmp_path):
    """Row groups are the loaders' unit of sharding: 1,000-row input batches still give
    10-row groups."""
    stats = write_shards(make_rows(95), tmp_path, row_group_rows=10, max_shard_rows=60, progress=False, batch_size=1000)
    sizes = []
    for shard in stats["shards"]:
        md = pq.ParquetFile(tmp_path / shard["path"]).metadata
        sizes.append([md.row_group(i).num_rows for i in range(md.num_row_groups)])
    assert sizes == [[10] * 6, [10, 10, 10, 5]]

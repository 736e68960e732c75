"""laion-hf download: img2dataset-compatible shards, stats, parquet format, resume,
--retry-failed, several processes, the CLI, and runs that end."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from laion_hf.cli import main as cli_main
from laion_hf.errors import FetchError
from laion_hf.images.download import collect_stats, download

from .conftest import FAST, TIMEOUT

OPTS = dict(FAST, progress=False, image_size=64, resize_mode="center_crop")


def _table(srv, n_ok=8, faults=("404", "corrupt-jpeg")):
    urls = [srv.image_url(100 + i, 90, "png" if i % 2 else "jpg") for i in range(n_ok)]
    urls += [srv.fault_url(f) for f in faults] + ["ftp://example.com/x.jpg"]
    return pa.table(
        {
            "url": urls,
            "caption": [f"caption {i}" for i in range(len(urls))],
            "similarity": [0.3 + i / 100 for i in range(len(urls))],
        }
    )


def test_webdataset_shards(server, tmp_path):
    t = _table(server)
    stats = download(t, tmp_path / "out", shard_size=5, **OPTS)
    assert stats["count"] == 11 and stats["successes"] == 8
    assert stats["failed_to_download"] == 2 and stats["failed_to_resize"] == 1
    assert stats["status_dict"] == {"success": 8, "decode_error": 1, "http_404": 1, "unsupported_scheme": 1}
    assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "out" / "0*"))) == [
        f"0000{i}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")
    ]
    meta = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(str(tmp_path / "out" / "0*.parquet")))])
    assert meta.num_rows == 11
    assert meta.column_names == [
        "url",
        "caption",
        "similarity",
        "key",
        "status",
        "error_message",
        "width",
        "height",
        "original_width",
        "original_height",
        "sha256",
    ]
    assert meta.column("key").to_pylist()[:3] == ["000000", "000001", "000002"]
    assert meta.column("url").to_pylist() == t.column("url").to_pylist()  # input order kept
    rows = {r["key"]: r for r in meta.to_pylist()}
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        names = tar.getnames()
        assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
        for key in ("000000", "000004"):
            img = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read()))
            assert img.size == (64, 64)
            assert tar.extractfile(f"{key}.txt").read().decode() == rows[key]["caption"]
            j = json.loads(tar.extractfile(f"{key}.json").read())
            assert j["key"] == key and j["status"] == "success" and j["sha256"] == rows[key]["sha256"]
            assert j["url"] == rows[key]["url"] and j["similarity"] == rows[key]["similarity"]
    s2 = json.load(open(tmp_path / "out" / "00002_stats.json"))
    assert s2["count"] == 1 and s2["failed_to_download"] == 1 and s2["status_dict"] == {"unsupported_scheme": 1}
    for f in ("duration", "start_time", "end_time", "successes", "failed_to_resize"):
        assert f in s2
    bad = meta.to_pylist()[9]
    assert bad["key"] == "000014"  # shard 1, index 4
    assert bad["status"] == "decode_error" and bad["error_message"] and bad["width"] is None


def test_parquet_format_reads_as_image(server, tmp_path):
    import datasets

    download(_table(server), tmp_path / "pq", shard_size=6, output_format="parquet", **OPTS)
    assert not glob.glob(str(tmp_path / "pq" / "*.tar"))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "pq" / "0*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.num_rows == 11
    by_status = {}
    for r in ds:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["success"]) == 8 and all(r["image"].size == (64, 64) for r in by_status["success"])
    assert by_status["http_404"][0]["image"] is None


def test_resume_redoes_only_unfinished_shards(fresh_server, tmp_path):
    t = _table(fresh_server, n_ok=9, faults=())
    out = tmp_path / "out"
    download(t, out, shard_size=4, **OPTS)
    n = fresh_server.request_count
    assert n == 9
    # simulate a run killed while writing shard 1: no stats file, a torn tar, a temp file
    os.unlink(out / "00001_stats.json")
    (out / "00001.tar").write_bytes(b"torn")
    (out / "00001.tar.tmp-999").write_bytes(b"half")
    stats = download(t, out, shard_size=4, **OPTS)
    assert fresh_server.request_count - n == 4  # the 4 rows of shard 1, nothing else
    assert stats["shards_done_now"] == 1 and stats["count"] == 10 and stats["successes"] == 9
    assert not glob.glob(str(out / "*.tmp-*"))
    with tarfile.open(out / "00001.tar") as tar:
        assert len(tar.getnames()) == 12
    stats = download(t, out, shard_size=4, **OPTS)  # all done: nothing to do
    assert stats["shards_done_now"] == 0 and fresh_server.request_count - n == 4
    with pytest.raises(FetchError, match="shard_size=4"):
        download(t, out, shard_size=3, **OPTS)


def test_retry_failed_downloads_only_failed_rows_keeping_keys(fresh_server, tmp_path):
    urls = [fresh_server.image_url(80, 60)] * 3 + [
        fresh_server.fault_url("flaky", code=503, times=1, key=str(i)) for i in range(3)
    ]
    t = pa.table({"url": urls, "caption": ["c"] * 6})
    first = download(t, tmp_path / "a", shard_size=4, **{**OPTS, "retries": 0})
    assert first["successes"] == 3 and first["status_dict"]["http_503"] == 3
    n = fresh_server.request_count
    again = download(None, tmp_path / "b", retry_failed=tmp_path / "a", shard_size=4, **{**OPTS, "retries": 0})
    assert fresh_server.request_count - n == 3
    assert again["count"] == 3 and again["successes"] == 3
    meta = pq.read_table(tmp_path / "b" / "00000.parquet")
    old = (
        pq.read_table(tmp_path / "a" / "00000.parquet").to_pylist()
        + pq.read_table(tmp_path / "a" / "00001.parquet").to_pylist()
    )
    assert sorted(meta.column("key").to_pylist()) == sorted(r["key"] for r in old if r["status"] != "success")
    assert meta.column_names.count("status") == 1 and "caption" in meta.column_names


def test_several_processes(server, tmp_path):
    t = _table(server, n_ok=20)
    stats = download(t, tmp_path / "mp", shard_size=6, processes=2, **OPTS)
    assert stats["count"] == 23 and stats["successes"] == 20 and stats["shards"] == 4
    assert collect_stats(tmp_path / "mp")["count"] == 23


def test_a_hanging_host_does_not_hang_the_run(server, tmp_path):
    t = pa.table(
        {
            "url": [
                server.fault_url("hang", seconds=30),
                server.fault_url("slow-body", delay=1),
                server.image_url(50, 50),
            ]
        }
    )
    t0 = time.monotonic()
    stats = download(t, tmp_path / "h", **OPTS)
    assert time.monotonic() - t0 < TIMEOUT + 3
    assert stats["status_dict"] == {"timeout": 2, "success": 1}


def test_cli(server, tmp_path, capsys):
    src = tmp_path / "in.parquet"
    pq.write_table(_table(server).rename_columns(["URL", "TEXT", "similarity"]), src)
    rc = cli_main(
        [
            "download",
            str(src),
            "--out",
            str(tmp_path / "cli"),
            "--allow-private-networks",
            "--no-progress",
            "--image-size",
            "32",
            "--resize-mode",
            "keep_ratio",
            "--timeout",
            "2",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 11 and printed["successes"] == 8
    with tarfile.open(tmp_path / "cli" / "00000.tar") as tar:
        assert tar.extractfile("000000000.txt").read() == b"caption 0"  # TEXT picked as caption
    # without the opt-in, the loopback server is refused: rows are ssrf_blocked, not fetched
    rc = cli_main(["download", str(src), "--out", str(tmp_path / "strict"), "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status_dict"]["ssrf_blocked"] == 10
    assert cli_main(["download", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "x")]) == 1
    assert "missing.parquet" in capsys.readouterr().err


def test_cli_selects_metadata_rows_before_fetching(fresh_server, tmp_path, capsys):
    """--where/--preset/--sample on download filter the parquet metadata first (canonical
    schema): only kept rows are requested, and the selection counts add up to the input."""
    src = tmp_path / "in.parquet"
    pq.write_table(_table(fresh_server).rename_columns(["URL", "TEXT", "similarity"]), src)
    args = [
        "download",
        str(src),
        "--out",
        str(tmp_path / "sel"),
        "--allow-private-networks",
        "127.0.0.1/32",
        "--no-progress",
        "--image-size",
        "32",
        "--timeout",
        "2",
        "--where",
        "similarity >= 0.35",
    ]
    assert cli_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    meta = printed["metadata"]
    assert meta["rows_in"] == 11 and meta["rows_kept"] == 6 and meta["removed_by_filter"] == 5
    assert printed["count"] == 6 and printed["successes"] == 3
    assert printed["status_dict"] == {"success": 3, "http_404": 1, "decode_error": 1, "unsupported_scheme": 1}
    requested = {
        int(path.split("/")[2].split("x")[0]) for _, path, _ in fresh_server.requests if path.startswith("/img/")
    }
    assert requested == {105, 106, 107}  # rows with similarity < 0.35 were never fetched
    with tarfile.open(tmp_path / "sel" / "00000.tar") as tar:  # keys name the source rows
        assert sorted({n.split(".")[0] for n in tar.getnames()}) == [f"0000000000000{i}" for i in (5, 6, 7)]
        assert json.loads(tar.extractfile("00000000000005.json").read())["caption"] == "caption 5"
    assert cli_main(args) == 0  # resumed: nothing left to do, the first run's selection counts
    again = json.loads(capsys.readouterr().out)
    assert again["metadata"] == meta and again["count"] == 6
    assert (
        cli_main(
            [
                "download",
                str(src),
                "--out",
                str(tmp_path / "r"),
                "--retry-failed",
                str(tmp_path / "sel"),
                "--preset",
                "laion2b-en",
            ]
        )
        == 1
    )
    assert "--retry-failed" in capsys.readouterr().err


def test_progress_bar_shows_rate_and_success_ratio(server, tmp_path, capsys):
    download(_table(server), tmp_path / "p", **{**OPTS, "progress": True})
    err = capsys.readouterr().err
    assert "img/s" in err and "success 72.7%" in err and "11/11" in err


def test_input_files_with_different_columns_are_a_clear_error(tmp_path):
    """Nothing is fetched: the second file's columns cannot be cast to the first file's."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from laion_hf.errors import FetchError
    from laion_hf.images.download import download

    src = tmp_path / "meta"
    src.mkdir()
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), src / "a.parquet")
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/b.jpg"], "other": [1]}), src / "b.parquet")
    with pytest.raises(FetchError, match="input files disagree on their columns"):
        download(str(src), tmp_path / "out", progress=False, allow_private_networks=True, shard_size=1)

"""``download`` on Ray Data: the same shards as the local engine (against the loopback image
server), the same resume rule, and a worker killed mid-shard is retried by Ray with no
duplicate and no missing row."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray.data", reason="the Ray engine needs the ray extra: pip install 'laion-hf[ray]'")

from laion_hf.cli import main as cli_main  # noqa: E402
from laion_hf.engines.ray import download_ray  # noqa: E402
from laion_hf.images.download import download  # noqa: E402
from laion_hf.testing.image_server import ImageServer  # noqa: E402

from .conftest import FAST, assert_same_download  # noqa: E402

OPTS = dict(FAST, progress=False, image_size=64, resize_mode="center_crop")


def _table(srv, n_ok=30):
    urls = [srv.image_url(100 + i, 90 + i % 7, "png" if i % 3 == 0 else "jpg") for i in range(n_ok)]
    urls[5] = srv.fault_url("404")
    urls[11 % n_ok] = srv.fault_url("corrupt-jpeg")
    urls[17 % n_ok] = "ftp://example.com/x.jpg"
    return pa.table({"url": urls, "caption": [f"caption {i}" if i % 9 else None for i in range(n_ok)],
                     "similarity": [0.3 + i / 1000 for i in range(n_ok)]})  # fmt: skip


def _keys(out: str) -> list[str]:
    return [
        k for p in sorted(glob.glob(os.path.join(out, "[0-9]*.parquet"))) for k in pq.read_table(p)["key"].to_pylist()
    ]


def test_download_matches_local_and_resumes(ray_local, server, tmp_path):
    t = _table(server)
    a = download(t, tmp_path / "local", shard_size=8, **OPTS)
    b = download_ray(t, tmp_path / "ray", shard_size=8, workers=2, **OPTS)
    assert_same_download(str(tmp_path / "local"), str(tmp_path / "ray"))
    for k in ("count", "successes", "failed_to_download", "failed_to_resize", "status_dict", "shards"):
        assert a[k] == b[k], k
    assert b["count"] == 30 and b["successes"] == 27 and b["engine"] == "ray" and b["shards_done_now"] == 4
    assert len(set(_keys(str(tmp_path / "ray")))) == 30
    # the local engine's resume rule: a shard without its stats file is redone, the others kept
    os.unlink(tmp_path / "ray" / "00002_stats.json")
    kept = os.stat(tmp_path / "ray" / "00001.tar").st_mtime_ns
    c = download_ray(t, tmp_path / "ray", shard_size=8, workers=2, **OPTS)
    assert c["shards_done_now"] == 1 and c["count"] == 30
    assert os.stat(tmp_path / "ray" / "00001.tar").st_mtime_ns == kept
    assert_same_download(str(tmp_path / "local"), str(tmp_path / "ray"))
    # --retry-failed: only the failed rows again, keys kept, same as the local engine
    ra = download(None, tmp_path / "local-retry", retry_failed=tmp_path / "local", shard_size=8, **OPTS)
    rb = download_ray(None, tmp_path / "ray-retry", retry_failed=tmp_path / "ray", shard_size=8, workers=2, **OPTS)
    assert ra["count"] == rb["count"] == 3 and ra["status_dict"] == rb["status_dict"]
    assert sorted(_keys(str(tmp_path / "ray-retry"))) == ["000005", "000013", "000021"]  # rows 5, 11, 17
    assert_same_download(str(tmp_path / "local-retry"), str(tmp_path / "ray-retry"))


def test_parquet_format_and_cli(ray_local, server, tmp_path, capsys):
    t = _table(server, n_ok=12)
    src = tmp_path / "in.parquet"
    pq.write_table(t, src)
    download(str(src), tmp_path / "local", output_format="parquet", shard_size=5, **OPTS)
    rc = cli_main(["download", str(src), "--out", str(tmp_path / "cli"), "--format", "parquet", "--shard-size", "5",
                   "--image-size", "64", "--resize-mode", "center_crop", "--timeout", "1.5", "--retries", "2",
                   "--allow-private-networks", "--no-progress", "--engine", "ray", "--ray-workers", "2"])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 12 and printed["successes"] == 10
    assert_same_download(str(tmp_path / "local"), str(tmp_path / "cli"))
    img = pq.read_table(tmp_path / "cli" / "00001.parquet")["image"]  # rows 5-9; row 5 failed
    assert img.null_count == 1 and not img[0].is_valid and img[1]["bytes"].as_py()[:2] == b"\xff\xd8"


def test_parquet_folder_is_split_by_ray_tasks(ray_local, server, tmp_path):
    """A folder of metadata files is cut into input shards by one Ray task per file: shards
    that straddle files (and an empty file, and a column stored with another type) come out
    as the local engine's split makes them."""
    t = _table(server, n_ok=20)
    src = tmp_path / "meta"
    src.mkdir()
    pq.write_table(t.slice(0, 7), src / "a.parquet")
    pq.write_table(t.slice(0, 0), src / "b.parquet")
    last = t.slice(7)
    pq.write_table(last.set_column(2, "similarity", last["similarity"].cast(pa.float32())), src / "c.parquet")
    a = download(str(src), tmp_path / "local", shard_size=5, **OPTS)
    b = download_ray(str(src), tmp_path / "ray", shard_size=5, workers=2, **OPTS)
    assert a["count"] == b["count"] == 20 and a["status_dict"] == b["status_dict"]
    for name in ("00000", "00001", "00002", "00003"):  # 00001 = 2 rows of a + 3 rows of c
        x = pa.ipc.open_file(tmp_path / "local" / "_laion_hf_inputs" / f"{name}.arrow").read_all()
        y = pa.ipc.open_file(tmp_path / "ray" / "_laion_hf_inputs" / f"{name}.arrow").read_all()
        assert x.schema == y.schema and x.equals(y), name
    assert json.load(open(tmp_path / "ray" / "_laion_hf_download.json")) == json.load(
        open(tmp_path / "local" / "_laion_hf_download.json")
    )
    assert not glob.glob(str(tmp_path / "ray" / "_laion_hf_inputs" / ".piece-*"))
    assert_same_download(str(tmp_path / "local"), str(tmp_path / "ray"))


def test_killed_worker_is_retried(ray_local, tmp_path):
    """SIGKILL the Ray worker that is writing a shard (its PID is in the shard's temporary
    file name): Ray restarts the actor and redoes the shard; nothing is lost or duplicated."""
    with ImageServer(latency=0.12) as slow:  # a shard takes ~1 s: the kill lands mid-shard
        t = _table(slow, n_ok=36)
        download(t, tmp_path / "local", shard_size=12, **dict(OPTS, concurrency=12))
        out = tmp_path / "ray"
        killed: list[tuple[int, str]] = []
        stop = threading.Event()

        def assassin() -> None:
            while not stop.is_set() and not killed:
                for tmp in glob.glob(str(out / "*.tar.tmp-*")):
                    shard = os.path.basename(tmp)[:5]
                    if os.path.exists(out / f"{shard}_stats.json"):
                        continue
                    pid = int(re.search(r"\.tmp-(\d+)$", tmp).group(1))
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, shard))
                    return
                time.sleep(0.02)

        th = threading.Thread(target=assassin, daemon=True)
        th.start()
        try:
            stats = download_ray(t, out, shard_size=12, workers=2, **dict(OPTS, concurrency=2))
        finally:
            stop.set()
            th.join(5)
    assert killed, "no worker was caught mid-shard"
    pid, shard = killed[0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert stats["count"] == 36 and stats["shards_done_now"] == 3
    keys = _keys(str(out))
    assert len(keys) == len(set(keys)) == 36  # no duplicate, no missing row
    assert_same_download(str(tmp_path / "local"), str(out))

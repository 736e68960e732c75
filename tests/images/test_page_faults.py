"""Bounding decode memory (issue 11 item 8) must not cost CPU on every image. Fixing glibc's
mmap threshold also froze its trim threshold at 128 KiB: each freed decode's heap pages went
back to the system and were faulted in (zeroed) again by the next image, ~450 minor page faults
per downloaded image instead of ~120 (start-up included) and ~20 % more CPU per image: the drop
of issue 17's download benchmark. Page faults are counted, not timed: load does not move them."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from laion_hf.testing.image_server import ImageServer

N = 300


def test_a_download_does_not_fault_its_heap_pages_in_again_for_every_image(tmp_path):
    with ImageServer(catch_all="image", pool_size=50, pool_sides=(300, 1500)) as srv:
        urls = [f"{srv.base_url}/img/{i}.jpg" for i in range(N)]
        pq.write_table(pa.table({"url": urls, "caption": ["c"] * N}), tmp_path / "in.parquet")
        cmd = [sys.executable, "-m", "laion_hf.cli", "download", str(tmp_path / "in.parquet"),
               "--out", str(tmp_path / "out"), "--processes", "1", "--image-size", "256",
               "--allow-private-networks", "127.0.0.1/32", "--no-progress", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
        done = subprocess.run(cmd, capture_output=True, text=True)
        faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "out" / "_laion_hf_stats.json").read_text())
    assert stats["successes"] == N, stats
    assert faults / N < 250, f"{faults / N:.0f} minor page faults per image"

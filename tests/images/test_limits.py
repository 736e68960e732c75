"""Global concurrency and the per-host connection limit, measured on a server with latency."""

from __future__ import annotations

import time

import pyarrow as pa

from laion_hf.images.stream import fetch_table
from laion_hf.testing.image_server import ImageServer

from .conftest import FAST


def _elapsed(srv, **over):
    t = pa.table({"url": [srv.image_url(40, 30, seed=i) for i in range(6)]})
    t0 = time.monotonic()
    out = fetch_table(t, **{**FAST, **over})
    assert out.column("status").to_pylist() == ["success"] * 6
    return time.monotonic() - t0


def test_per_host_limit_and_concurrency():
    with ImageServer(latency=0.3) as srv:
        _elapsed(srv)  # warm the image generator
        wide = _elapsed(srv, concurrency=6, per_host=6)
        per_host = _elapsed(srv, concurrency=6, per_host=2)
        narrow = _elapsed(srv, concurrency=2, per_host=0)
    assert wide < 0.75  # all six in parallel: about one latency
    assert per_host >= 0.85  # three waves of two
    assert narrow >= 0.85


def test_fault_rate_and_rewrite_column():
    with ImageServer(catch_all="image", pool_size=4, pool_sides=(60, 80), fault_rate=0.25) as srv:
        t = srv.rewrite_column(pa.table({"url": [f"http://cdn{i}.example.org/p/{i}.jpg?s=1" for i in range(40)]}))
        assert all(u.startswith(srv.base_url + "/p/") for u in t.column("url").to_pylist())
        out = fetch_table(t, **FAST)
        statuses = out.column("status").to_pylist()
        assert 0 < statuses.count("http_404") < 20 and statuses.count("success") + statuses.count("http_404") == 40
        again = fetch_table(t, **FAST)
        assert again.column("status").to_pylist() == statuses  # deterministic by path

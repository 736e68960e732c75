"""Every fault of the loopback server ends with the right status, within the timeout bound,
without crashing, and the stats sum to the input count."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from laion_hf.images import status as st
from laion_hf.images.fetch import FetchConfig, ImageFetcher
from laion_hf.images.resize import ResizeConfig
from laion_hf.images.stream import fetch_table

from .conftest import FAST, TIMEOUT

CASES = [
    ("404", {}, "http_404"),
    ("410", {}, "http_410"),
    ("500", {}, "http_500"),
    ("503", {}, "http_503"),
    ("429", {"retry_after": 100}, "http_429"),
    ("slow-body", {"delay": 0.6, "chunks": 10}, st.TIMEOUT),
    ("hang", {"seconds": 30}, st.TIMEOUT),
    ("reset", {}, st.CONNECTION_ERROR),
    ("truncated", {}, st.TRUNCATED),
    ("corrupt-jpeg", {}, st.DECODE_ERROR),
    ("html-as-image", {}, st.NOT_AN_IMAGE),
    ("empty", {}, st.NOT_AN_IMAGE),
    ("wrong-type", {}, st.SUCCESS),
    ("redirect", {"n": 3}, st.SUCCESS),
    ("redirect", {"n": 9}, st.TOO_MANY_REDIRECTS),
    ("redirect-loop", {}, st.REDIRECT_LOOP),
    ("huge-no-length", {"mb": 64}, st.TOO_LARGE),
    ("bomb-png", {}, st.DECOMPRESSION_BOMB),
    ("robots", {"tag": "noai"}, st.ROBOTS_OPTOUT),
    ("robots", {"tag": "noimageindex, nofollow"}, st.ROBOTS_OPTOUT),
    ("robots", {"tag": "laion-hf: noimageai"}, st.ROBOTS_OPTOUT),
    ("robots", {"tag": "otherbot: noai"}, st.SUCCESS),
    ("robots", {"tag": "nofollow"}, st.SUCCESS),
    ("gzip", {}, st.SUCCESS),
]


def _ids(c):
    return f"{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items())}".rstrip("-").replace(" ", "").replace(",", "+")


@pytest.fixture(scope="module")
def fault_table(server):
    urls = [server.fault_url(name, **q) for name, q, _ in CASES]
    t0 = time.monotonic()
    out = fetch_table(pa.table({"url": urls}), **FAST)
    return out, time.monotonic() - t0


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_fault_status(fault_table, server, case):
    out, _ = fault_table
    i = CASES.index(case)
    row = out.slice(i, 1).to_pylist()[0]
    assert row["status"] == case[2], row
    assert st.is_known(row["status"])
    if case[2] == st.SUCCESS:
        assert row["error"] is None and row["image"]["bytes"] and row["sha256"]
    else:
        assert row["image"] is None and row["error"], row


def test_faults_end_within_the_timeout_bound_and_stats_sum(fault_table):
    out, elapsed = fault_table
    # all rows run concurrently: the slowest (hang, slow body) ends at the timeout
    assert elapsed < TIMEOUT * 2 + 2, elapsed
    s = st.summarize(out.column("status"))
    assert s["count"] == out.num_rows == len(CASES)
    assert s["successes"] + s["failed_to_download"] + s["failed_to_resize"] == s["count"]
    assert sum(s["status_dict"].values()) == s["count"]
    assert s["failed_to_resize"] == 4  # decode_error, not_an_image x2, decompression_bomb


def test_500_is_retried_then_reported(fresh_server):
    out = fetch_table(pa.table({"url": [fresh_server.fault_url("500")]}), **FAST)
    assert out.column("status").to_pylist() == ["http_500"]
    assert fresh_server.request_count == FAST["retries"] + 1


def test_flaky_503_succeeds_after_retries(fresh_server):
    url = fresh_server.fault_url("flaky", code=503, times=2, key="a")
    out = fetch_table(pa.table({"url": [url]}), **FAST)
    assert out.column("status").to_pylist() == ["success"]
    assert fresh_server.request_count == 3


def test_429_honours_retry_after(fresh_server):
    url = fresh_server.fault_url("429", retry_after=1, times=1, key="r")
    t0 = time.monotonic()
    out = fetch_table(pa.table({"url": [url]}), **{**FAST, "timeout": 3})
    assert out.column("status").to_pylist() == ["success"]
    assert time.monotonic() - t0 >= 1.0  # waited the Retry-After, not the 0.02 s backoff
    assert fresh_server.request_count == 2


def test_429_with_too_long_retry_after_gives_up_at_once(fresh_server):
    t0 = time.monotonic()
    out = fetch_table(pa.table({"url": [fresh_server.fault_url("429", retry_after=3600)]}), **FAST)
    assert out.column("status").to_pylist() == ["http_429"]
    assert "max_retry_after" in out.column("error")[0].as_py()
    assert time.monotonic() - t0 < 1.0 and fresh_server.request_count == 1


def test_gzip_body_is_decoded(server):
    import io

    from PIL import Image

    from laion_hf.testing.image_server import make_image

    out = fetch_table(pa.table({"url": [server.fault_url("gzip")]}), resize_mode="no", **FAST)
    img = Image.open(io.BytesIO(out.column("image")[0].as_py()["bytes"]))
    assert img.size == Image.open(io.BytesIO(make_image(200, 150, "jpg", 6))).size


def test_max_body_is_enforced_while_streaming(server):
    """A 64 MB body without Content-Length is cut off after max_body_bytes, long before 64 MB."""
    import asyncio

    async def run():
        cfg = FetchConfig(**{**FAST, "max_body_bytes": 2**20})
        async with ImageFetcher(cfg, ResizeConfig()) as f:
            t0 = time.monotonic()
            r = await f.process(server.fault_url("huge-no-length", mb=64))
            return r, time.monotonic() - t0

    r, dt = asyncio.run(run())
    assert r.status == st.TOO_LARGE and "1048576" in r.error
    assert dt < TIMEOUT


def test_decompression_bomb_limit_is_configurable(server):
    out = fetch_table(pa.table({"url": [server.image_url(400, 300, "png")]}), max_pixels=100_000, **FAST)
    assert out.column("status").to_pylist() == [st.DECOMPRESSION_BOMB]
    assert "120000" in out.column("error")[0].as_py()


def test_robots_can_be_disabled(server):
    out = fetch_table(
        pa.table({"url": [server.fault_url("robots", tag="noai")]}), disallowed_header_directives=(), **FAST
    )
    assert out.column("status").to_pylist() == ["success"]


def test_robots_user_token(server):
    url = server.fault_url("robots", tag="mybot: noai")
    a = fetch_table(pa.table({"url": [url]}), **FAST)
    b = fetch_table(pa.table({"url": [url]}), user_agent_token="mybot", **FAST)
    assert a.column("status").to_pylist() == ["success"]
    assert b.column("status").to_pylist() == [st.ROBOTS_OPTOUT]

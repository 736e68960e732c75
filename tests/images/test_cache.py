"""The on-disk cache: no request for cached rows on a second run, negative caching with a
time to live, settings in the key, atomic multi-process writes, size cap and eviction."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pyarrow as pa

from laion_hf.images import status as st
from laion_hf.images.cache import ImageCache
from laion_hf.images.resize import ImageResult
from laion_hf.images.stream import fetch_table

from .conftest import FAST


def _urls(srv):
    return [srv.image_url(120 + i, 90) for i in range(6)] + [
        srv.fault_url("404"),
        srv.fault_url("410"),
        srv.fault_url("robots", tag="noai"),
        srv.fault_url("500"),
    ]


def test_second_run_makes_no_request_for_cached_rows(fresh_server, tmp_path):
    t = pa.table({"url": _urls(fresh_server)})
    a = fetch_table(t, cache_dir=tmp_path / "c", **{**FAST, "retries": 0})
    first = fresh_server.request_count
    assert first == 10
    b = fetch_table(t, cache_dir=tmp_path / "c", **{**FAST, "retries": 0})
    # only the transient failure (500) is asked again; successes, 404, 410, robots come from disk
    assert fresh_server.request_count - first == 1
    assert b.column("status").to_pylist() == a.column("status").to_pylist()
    assert b.column("sha256").to_pylist() == a.column("sha256").to_pylist()
    assert b.column("image").to_pylist() == a.column("image").to_pylist()
    assert "(cached)" in b.column("error")[6].as_py()


def test_negative_entries_expire(fresh_server, tmp_path):
    t = pa.table({"url": [fresh_server.fault_url("404")]})
    fetch_table(t, cache_dir=tmp_path / "c", negative_ttl=0.3, **FAST)
    fetch_table(t, cache_dir=tmp_path / "c", negative_ttl=0.3, **FAST)
    assert fresh_server.request_count == 1
    time.sleep(0.4)
    fetch_table(t, cache_dir=tmp_path / "c", negative_ttl=0.3, **FAST)
    assert fresh_server.request_count == 2


def test_resize_settings_are_part_of_the_key(fresh_server, tmp_path):
    t = pa.table({"url": [fresh_server.image_url(300, 200)]})
    a = fetch_table(t, cache_dir=tmp_path / "c", image_size=64, **FAST)
    b = fetch_table(t, cache_dir=tmp_path / "c", image_size=32, **FAST)
    assert fresh_server.request_count == 2
    assert (a.column("width")[0].as_py(), b.column("width")[0].as_py()) == (64, 32)


def _writer(root: str, seed: int) -> None:
    c = ImageCache(root, max_bytes=10**9)
    for i in range(200):
        data = bytes([seed]) * (1000 + i)
        c.put(f"{i % 20:064x}", ImageResult(st.SUCCESS, None, data, 1, 1, 1, 1, str(seed)))


def test_concurrent_processes_never_leave_a_torn_entry(tmp_path):
    root = str(tmp_path / "c")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, s)) for s in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = ImageCache(root)
    for i in range(20):
        r = c.get(f"{i:064x}")
        assert r is not None and r.status == st.SUCCESS
        assert r.data == bytes([int(r.sha256)]) * len(r.data)  # one writer's whole entry
    subdirs = [os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    assert not [f for d in subdirs for f in os.listdir(d) if f.startswith(".tmp-")]


def test_torn_or_foreign_file_is_a_miss(tmp_path):
    c = ImageCache(tmp_path / "c")
    key = "ab" + "0" * 62
    c.put(key, ImageResult(st.SUCCESS, None, b"x" * 100, 1, 1, 1, 1, "h"))
    path = tmp_path / "c" / "ab" / key
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    assert c.get(key) is None and not path.exists()


def test_size_cap_evicts_least_recently_used(tmp_path):
    c = ImageCache(tmp_path / "c", max_bytes=50_000)
    keys = [f"{i:064x}" for i in range(30)]
    for i, k in enumerate(keys):
        c.put(k, ImageResult(st.SUCCESS, None, b"z" * 4000, 1, 1, 1, 1, "h"))
        os.utime(c._path(k), (1000 + i, 1000 + i))
        if i == 0:
            assert c.get(k) is not None  # refreshes entry 0: it is young again
    c.evict()
    assert c.size() <= 50_000
    assert c.get(keys[0]) is not None  # recently used, kept
    assert c.get(keys[1]) is None  # oldest, evicted
    assert c.get(keys[-1]) is not None


def test_eviction_never_touches_files_the_cache_did_not_write(tmp_path):
    """Issue 11 item 3: a cache folder shared with a user's files (``--cache-dir ~/.cache``)."""
    root = tmp_path / "home_cache"
    foreign = {
        root / "photos" / "holiday-2019.jpg": b"\xff\xd8 a user's photo" * 2000,
        root / "ab" / "notes.txt": b"not an entry" * 2000,  # in a 2-hex folder, but not a key
        root / "cd" / ("cd" + "1" * 62): b"key-shaped, but not written by the cache",
        root / "old.bin": b"x" * 40_000,
    }
    for path, data in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1, 1))  # older than any entry: first in line for LRU eviction
    c = ImageCache(root, max_bytes=30_000)
    keys = [f"{i:064x}" for i in range(20)]
    for k in keys:
        c.put(k, ImageResult(st.SUCCESS, None, b"z" * 4000, 1, 1, 1, 1, "h"))
    c.evict()
    assert all(path.read_bytes() == data for path, data in foreign.items())
    counted = {p for _, _, p in c.entries()}
    assert not counted & {root / "photos" / "holiday-2019.jpg", root / "ab" / "notes.txt", root / "old.bin"}
    assert c.size() <= 30_000 and sum(c.get(k) is not None for k in keys) < len(keys)
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")

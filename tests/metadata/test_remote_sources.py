"""Remote metadata sources through fsspec, over a real loopback HTTP server."""

import asyncio
import os
import threading

import pytest
from aiohttp import web

from laion_hf import load_laion
from laion_hf.errors import SourceError


@pytest.fixture(scope="module")
def http_root(synth_dir):
    """Serve synth_dir over HTTP on 127.0.0.1 (aiohttp static files, with Range support)."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_static("/meta/", synth_dir)
    runner = web.AppRunner(app)
    started = threading.Event()
    port = {}

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port["p"] = site._server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    started.wait(10)
    yield f"http://127.0.0.1:{port['p']}/meta"
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


@pytest.mark.parametrize("prebuffer", [True, False])
def test_http_parquet_streams_filtered(http_root, synth_dir, monkeypatch, prebuffer):
    """Small remote row groups are fetched in one coalesced range read each; big ones (here:
    every row group, by lowering the threshold) through buffered range reads. Same rows."""
    import laion_hf.sources

    if not prebuffer:
        monkeypatch.setattr(laion_hf.sources, "PREBUFFER_MAX", 0)
    local = [
        r["url"]
        for r in load_laion(os.path.join(synth_dir, "part-00002.parquet"), preset="laion2b-en", columns=["url"])
    ]
    remote = [r["url"] for r in load_laion(f"{http_root}/part-00002.parquet", preset="laion2b-en", columns=["url"])]
    assert remote == local and len(remote) > 100


def test_http_missing_file_names_the_url(http_root):
    with pytest.raises(SourceError, match="nope.parquet"):
        list(load_laion(f"{http_root}/nope.parquet"))

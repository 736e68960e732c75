"""Fixtures of the page tests: a real subset (tiny-CLIP embeddings, JPEG shards), the search
service with the page on a loopback port, and Debian's chromium driven by selenium.

Without chromium, chromedriver or selenium the browser tests skip and say what to install;
the route tests (no browser) always run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, os.path.dirname(__file__))
import subset as subset_mod

pytest.importorskip("torch")
pytest.importorskip("open_clip")

CHROMIUM = os.environ.get("LAION_HF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LAION_HF_CHROMEDRIVER", "/usr/bin/chromedriver")
INDEX = "subset"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return (
            "selenium is not installed (pip install -c constraints.txt trio trio-websocket "
            "websocket-client 'urllib3[socks]' && pip install --no-deps -c constraints.txt "
            "selenium, as .ci/run does)"
        )
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install -y chromium chromium-driver (missing {pkg})"
    return None


@pytest.fixture(scope="session")
def embedder():
    from laion_hf.clip import ClipEmbedder

    return ClipEmbedder("laion-hf-tiny", device="cpu", precision="fp32", batch_size=32)


@pytest.fixture(scope="session")
def subset_dir(tmp_path_factory, embedder) -> Path:
    return subset_mod.write_subset(tmp_path_factory.mktemp("page_subset"), embedder)


class Recorder:
    """The JSON bodies the service received, per path (what the page really sent)."""

    def __init__(self):
        self.bodies: dict[str, list] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.method == "POST":
            raw = await request.read()
            try:
                self.bodies.setdefault(request.path, []).append(json.loads(raw))
            except ValueError:
                self.bodies.setdefault(request.path, []).append(raw)
        return await handler(request)

    def last(self, path: str):
        return self.bodies.get(path, [None])[-1]


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, subset_dir) -> Path:
    """A real faiss index (laion-hf index) over the subset's shards."""
    from laion_hf.index import build_index

    out = tmp_path_factory.mktemp("page_index")
    build_index(str(subset_dir), str(out), clip_model="laion-hf-tiny")
    return out


def build_app(index_dir: Path, recorder: Recorder) -> web.Application:
    """``laion-hf serve``'s app (clip back's API) with the page added, as the CLI builds it; the
    service may fetch image_url from loopback (the tests paste this server's own image URLs)."""
    from laion_hf.serve import ServeConfig, make_app
    from laion_hf.serve.page import add_page

    app = make_app({INDEX: str(index_dir)}, ServeConfig(allow_private_image_urls=("127.0.0.0/8",)))
    app.middlewares.insert(0, recorder.middleware)
    add_page(app)
    return app


class LoopbackServer:
    """Runs an aiohttp app on 127.0.0.1 in a background thread."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port = 0
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="page-test-server")
        self.thread.start()
        if not started.wait(60):
            raise RuntimeError("the page test server did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def server(index_dir, recorder):
    srv = LoopbackServer(build_app(index_dir, recorder))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    """Where screenshots go: $LAION_HF_SCREENSHOTS or a temp dir (printed)."""
    root = os.environ.get("LAION_HF_SCREENSHOTS") or tempfile.mkdtemp(prefix="laion-hf-page-shots-")
    Path(root).mkdir(parents=True, exist_ok=True)
    print(f"\npage screenshots: {root}")
    return Path(root)


@pytest.fixture(scope="session")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def driver(downloads):
    reason = browser_missing()
    if reason:
        pytest.skip(f"no browser for the page tests: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.set_script_timeout(30)
    yield drv
    drv.quit()


@pytest.fixture
def page(driver, server):
    """The page freshly loaded (default settings), light colour scheme, desktop width."""
    driver.set_window_size(1280, 900)
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "light"}]},
    )
    driver.get(server.url + "/")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return driver


@pytest.fixture(scope="session")
def h():
    """Helpers for the test modules (conftest cannot be imported in importlib mode)."""
    import types

    return types.SimpleNamespace(subset=subset_mod, INDEX=INDEX, shutil=shutil)

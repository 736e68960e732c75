"""Fixtures of the serve tests: a real index over the tiny CLIP model's embeddings, `laion-hf
serve` running on loopback (as a subprocess, and in-process with private image URLs allowed),
and clip-retrieval's own ClipClient loaded from its wheel (.ci/fetch_test_wheels.sh gets it)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("open_clip")

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from laion_hf.cli import main; sys.exit(main())"]
WHEELS = os.environ.get("LAION_HF_TEST_WHEELS", str(ROOT / ".ci" / "wheels"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``(shards, embed folder, index folder)`` built with the tiny model."""
    from laion_hf.testing.knn import tiny_index

    return tiny_index(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def embedder():
    from laion_hf.clip import ClipEmbedder

    return ClipEmbedder("laion-hf-tiny", device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def clip_client(tmp_path_factory):
    """``clip_retrieval/clip_client.py`` from clip-retrieval 2.45.0's wheel, imported on its own
    (the package's ``__init__`` needs flask; this file needs only requests)."""
    wheels = glob.glob(os.path.join(WHEELS, "clip_retrieval-2.45.0-*.whl"))
    if not wheels:
        pytest.fail(f"clip-retrieval's wheel is not in {WHEELS}: run .ci/fetch_test_wheels.sh first")
    path = tmp_path_factory.mktemp("clip_retrieval") / "clip_client.py"
    path.write_bytes(zipfile.ZipFile(wheels[0]).read("clip_retrieval/clip_client.py"))
    spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_cli_server(args: list[str], timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """``laion-hf serve ARGS --port 0`` in a subprocess; returns it and its base URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(CLI + ["serve", *args, "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = re.search(r"laion-hf serve: (http://\S+)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("laion-hf serve did not start:\n" + "".join(seen[-30:]))


@pytest.fixture(scope="session")
def served(tiny):
    """``laion-hf serve INDEX`` with default settings; its base URL."""
    proc, url = start_cli_server([str(tiny[2])])
    yield url
    proc.terminate()
    proc.wait(30)


@contextlib.contextmanager
def inprocess_server(dirs: list, config=None):
    """``make_app(dirs, config)`` served from a thread of this process; yields its base URL."""
    from laion_hf.serve import make_app, start_server

    loop = asyncio.new_event_loop()
    app = make_app([str(d) for d in dirs], config)
    runner, url = loop.run_until_complete(start_server(app, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="session")
def serve_inprocess():
    """:func:`inprocess_server`, for tests (they cannot import this file)."""
    return inprocess_server


@pytest.fixture(scope="session")
def served_private(tiny):
    """The app in-process, image_url allowed to reach 127.0.0.0/8; its base URL."""
    from laion_hf.serve import ServeConfig

    with inprocess_server([tiny[2]], ServeConfig(allow_private_image_urls=("127.0.0.0/8",))) as url:
        yield url


@pytest.fixture(scope="session")
def shards_index(tiny, tmp_path_factory):
    """Parquet shards holding images and both embedding columns (the tiny model's), indexed:
    ``(shards folder, index folder)``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from laion_hf.index import build_index

    shards, embed, _ = tiny
    root = tmp_path_factory.mktemp("shards_index")
    (root / "shards").mkdir()
    for n, shard in enumerate(sorted(shards.glob("*.parquet"))):
        t = pq.read_table(shard)
        for col, sub in (("image_embedding", "img_emb"), ("text_embedding", "text_emb")):
            x = np.load(embed / sub / f"{sub}_{n}.npy")
            t = t.append_column(col, pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]))
        pq.write_table(t, root / "shards" / f"train-{n:05d}.parquet", row_group_size=5)
    build_index(root / "shards", root / "index", clip_model="laion-hf-tiny")
    return root / "shards", root / "index"


@pytest.fixture(scope="session")
def image_server():
    from laion_hf.testing.image_server import ImageServer

    with ImageServer() as srv:
        yield srv

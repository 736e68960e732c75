"""Fixtures of the Hub tests: one local Hub-compatible server for the session.

huggingface_hub and datasets read ``HF_ENDPOINT``/``HF_HUB_DISABLE_XET``/``HF_HOME`` at import
time, so they are set here, when pytest imports this conftest (before any test runs). When the
libraries were already imported by another test folder, :func:`configure_client` (autouse, every
test) points their module constants at this server; every HfApi/push call also passes
``endpoint=`` explicitly, and non-streaming loads pass ``cache_dir=``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "shards"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TMP = tempfile.mkdtemp(prefix="laion-hf-hub-tests-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
PORT = _free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
os.environ["HF_ENDPOINT"] = ENDPOINT
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(_TMP, "hf_home"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_TMP, "datasets_cache"))
os.environ.pop("HF_TOKEN", None)

#: the write token of user "laion-hf" (also a member of org "laion-hf-org")
TOKEN = "hf_LaionHfTestTokenAbcdefghijklmnop1234"
#: another user's valid token: can read public repos only
OTHER_TOKEN = "hf_SomeoneElseTokenQrstuvwxyz98765432"


@pytest.fixture(scope="session")
def token() -> str:
    return TOKEN


@pytest.fixture(scope="session")
def other_token() -> str:
    return OTHER_TOKEN


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    from laion_hf.testing.hub_server import HubServer

    server = HubServer(
        tmp_path_factory.mktemp("hub"),
        port=PORT,
        tokens={TOKEN: "laion-hf", OTHER_TOKEN: "someone-else"},
        orgs={"laion-hf": ["laion-hf-org"]},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _point_clients_at_hub(hub, monkeypatch):
    from laion_hf.testing.hub_server import configure_client

    configure_client(hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.clear_failures()
    yield


@pytest.fixture
def shard_dir(tmp_path):
    """A finished parquet shard folder: 40 rows (8 failed fetches), 3 shards, provenance recorded."""
    from shard_rows import PROVENANCE, make_rows

    from laion_hf.shards import write_shards

    table = make_rows(40)
    write_shards(table, tmp_path / "out", max_shard_rows=15, provenance=PROVENANCE, progress=False)
    return tmp_path / "out", table

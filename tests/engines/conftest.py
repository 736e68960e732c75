"""Fixtures of the Ray engine tests: one real local Ray instance (2 CPUs, temp dir under a
temporary folder, shut down at the end) and a real loopback image server.

Every test module skips as a whole when Ray Data is not installed (``pip install 'laion-hf[ray]'``);
the skip is in the modules, not here: a skip raised while pytest loads a conftest aborts the run."""

from __future__ import annotations

import glob
import os
import re
import shutil
import tarfile
import tempfile

import pyarrow.parquet as pq
import pytest

from laion_hf.testing.image_server import ImageServer

RAY_MISSING = "the Ray engine needs the ray extra: pip install 'laion-hf[ray]'"

# Short bounds so every fault resolves in about a second (as the image tests do).
FAST = dict(allow_private_networks=True, timeout=1.5, connect_timeout=1.0, read_timeout=1.0,
            retries=2, backoff_base=0.02, backoff_max=0.1)  # fmt: skip


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the whole session (reused by the engine)."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    pytest.importorskip("ray.data", reason=RAY_MISSING)
    if ray.is_initialized():  # pragma: no cover - someone else started one
        yield ray
        return
    # a short path: Ray's unix sockets live under it (108-byte limit)
    temp = tempfile.mkdtemp(prefix="lhf-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=256 * 2**20,
    )  # small: other tests share the machine
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def server():
    with ImageServer() as srv:
        yield srv


_ADDR = re.compile(r" at 0x[0-9a-f]+")


def normalized_rows(path: str) -> list[dict]:
    """A shard parquet's rows by key, with object addresses in error messages blanked (PIL's
    messages name ``<_io.BytesIO object at 0x...>``, which differs from run to run on any
    engine). ``--format parquet`` writes rows as fetches complete, in any order on either engine."""
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["key"])
    for r in rows:
        if isinstance(r.get("error_message"), str):
            r["error_message"] = _ADDR.sub(" at 0x?", r["error_message"])
    return rows


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert len(names) == len(set(names)), f"duplicate members in {path}"
        return {n: tar.extractfile(n).read() for n in names}


def assert_same_download(a: str, b: str) -> None:
    """Two download outputs hold the same shards with the same content (timing fields aside)."""
    names = lambda d: sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "[0-9]*")))  # noqa: E731
    assert names(a) == names(b)
    assert not glob.glob(os.path.join(b, "*.tmp-*")), "temporary files left behind"
    for p in sorted(glob.glob(os.path.join(a, "[0-9]*.parquet"))):
        assert normalized_rows(p) == normalized_rows(p.replace(a, b, 1)), p
    for p in sorted(glob.glob(os.path.join(a, "[0-9]*.tar"))):
        # members are written as fetches complete (any order, on either engine): compare by name
        assert _members(p) == _members(p.replace(a, b, 1)), p
    import json

    for p in sorted(glob.glob(os.path.join(a, "[0-9]*_stats.json"))):
        sa, sb = json.load(open(p)), json.load(open(p.replace(a, b, 1)))
        for k in ("duration", "start_time", "end_time"):
            sa.pop(k), sb.pop(k)
        assert sa == sb, p

"""Fixtures of the io tests: a real ``laion-hf download`` output (webdataset tars fetched from
the loopback image server), and copies of it with the tar cut short or corrupted."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

ROWS = 40


@pytest.fixture(scope="session")
def download_dir(tmp_path_factory) -> Path:
    """One download shard of 40 rows (~1/4 fail): 00000.tar, 00000.parquet, 00000_stats.json."""
    from laion_hf.images.download import download
    from laion_hf.testing.image_server import ImageServer

    root = tmp_path_factory.mktemp("dl")
    with ImageServer(catch_all="image", fault_rate=0.25, pool_size=4, pool_sides=(40, 60)) as srv:
        urls = [srv.url(f"/photos/{i}.jpg") for i in range(ROWS)]
        meta = pa.table({"url": urls, "caption": [f"caption {i}" for i in range(ROWS)]})
        run = download(meta, root / "dl", output_format="webdataset", shard_size=ROWS, progress=False,
                       allow_private_networks=True, timeout=5, retries=0, image_size=32,
                       resize_mode="center_crop")  # fmt: skip
    assert run["count"] == ROWS and 5 < run["successes"] < ROWS
    return root / "dl"


def members(tar: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(tar) as tf:
        return tf.getmembers()


def damaged_copy(src: Path, dst: Path, how: str) -> Path:
    """A copy of the download folder whose 00000.tar is cut inside the header of a member in
    the middle (``header``), inside that member's data (``data``), just before that header
    (``boundary``: no end-of-archive block), or has that header's checksum broken (``corrupt``)."""
    shutil.copytree(src, dst)
    tar = dst / "00000.tar"
    ms = members(tar)
    m = next(m for m in ms[len(ms) // 2 :] if m.name.endswith(".jpg"))
    data = tar.read_bytes()
    if how == "header":
        data = data[: m.offset + 100]
    elif how == "data":
        data = data[: m.offset_data + m.size // 2]
    elif how == "boundary":
        data = data[: m.offset]
    elif how == "corrupt":
        data = data[: m.offset + 10] + bytes([data[m.offset + 10] ^ 0xFF]) + data[m.offset + 11 :]
    else:  # pragma: no cover
        raise ValueError(how)
    tar.write_bytes(data)
    return dst


@pytest.fixture(scope="session")
def damaged(download_dir, tmp_path_factory):
    """``how -> folder``: one damaged copy of the download per kind of damage."""
    return {how: damaged_copy(download_dir, tmp_path_factory.mktemp(how) / "dl", how)
            for how in ("header", "data", "boundary", "corrupt")}  # fmt: skip

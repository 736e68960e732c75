"""laion-hf download straight from parquet metadata on the Hub (hf://), read by range
requests in the canonical schema, with and without a selection."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

from laion_hf.cli import main as cli_main
from laion_hf.images.download import download
from laion_hf.testing.image_server import ImageServer


@pytest.fixture
def images():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def hub_metadata(hub, token, tmp_path, images, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)
    urls = [images.image_url(40 + i, 30) for i in range(6)] + [images.fault_url("404")]
    table = pa.table(
        {"URL": urls, "TEXT": [f"caption {i}" for i in range(7)], "similarity": [0.2, 0.3, 0.25, 0.35, 0.4, 0.1, 0.5]}
    )
    pq.write_table(table, tmp_path / "meta.parquet")
    repo = f"laion-hf/download-meta-{tmp_path.name[-20:].strip('_')}"  # one per test: fsspec caches file sizes
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo(repo, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=str(tmp_path / "meta.parquet"),
        path_in_repo="data/part-0.parquet",
        repo_id=repo,
        repo_type="dataset",
    )
    return f"hf://datasets/{repo}/data/*.parquet"


def test_download_reads_hub_metadata(hub_metadata, tmp_path):
    stats = download(
        hub_metadata, tmp_path / "all", progress=False, allow_private_networks=True, image_size=16, timeout=3
    )
    assert stats["count"] == 7 and stats["successes"] == 6
    assert stats["status_dict"] == {"success": 6, "http_404": 1}
    with tarfile.open(tmp_path / "all" / "00000.tar") as tar:
        caption = tar.extractfile(sorted(n for n in tar.getnames() if n.endswith(".txt"))[0]).read()
    assert caption == b"caption 0"  # TEXT read as the canonical caption


def test_download_cli_selects_hub_metadata(hub_metadata, tmp_path, capsys):
    args = [
        "download",
        hub_metadata,
        "--out",
        str(tmp_path / "sel"),
        "--preset",
        "laion2b-en",
        "--allow-private-networks",
        "--no-progress",
        "--image-size",
        "16",
        "--timeout",
        "3",
    ]
    assert cli_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metadata"]["rows_in"] == 7 and printed["metadata"]["rows_kept"] == 4  # similarity >= 0.28
    assert printed["count"] == 4 and printed["status_dict"] == {"success": 3, "http_404": 1}

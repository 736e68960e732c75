"""Fixtures: small shard sets with real JPEGs, in our parquet layout, as webdataset tars and
published to a local Hub-compatible server."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import dl_shards  # noqa: E402

N = 240


@pytest.fixture(scope="session")
def samples():
    return dl_shards.make_samples(N, size=40)


@pytest.fixture(scope="session")
def all_keys(samples):
    return set(samples[0])


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory, samples):
    """240 rows in 3 files x 4 row groups of 20 = 12 units."""
    root = tmp_path_factory.mktemp("parquet")
    dl_shards.write_parquet_shards(root, N, 3, row_group_size=20, samples=samples)
    return root


@pytest.fixture(scope="session")
def one_unit_dir(tmp_path_factory, samples):
    """240 rows in one file with one row group: fewer units than 2 ranks x 2 workers."""
    root = tmp_path_factory.mktemp("one_unit")
    dl_shards.write_parquet_shards(root, N, 1, row_group_size=1000, samples=samples)
    return root


@pytest.fixture(scope="session")
def wds_dir(tmp_path_factory, samples):
    """The same samples as 3 img2dataset-style tars (fewer tars than readers)."""
    root = tmp_path_factory.mktemp("wds")
    dl_shards.write_wds_shards(root, N, 3, samples=samples)
    return root


@pytest.fixture(scope="session")
def corrupt_dir(tmp_path_factory):
    """60 rows; rows 3 and 17 hold bytes that are not an image, row 5 has no image."""
    root = tmp_path_factory.mktemp("corrupt")
    dl_shards.write_parquet_shards(root, 60, 2, row_group_size=10, size=40, corrupt=(3, 17), missing=(5,))
    return root


@pytest.fixture(scope="session")
def hub(tmp_path_factory, samples):
    """A local Hub-compatible server holding ``laion-hf/dl-test`` with the parquet shards."""
    from laion_hf.testing.hub_server import DEFAULT_TEST_TOKEN, HubServer, configure_client

    folder = tmp_path_factory.mktemp("publish")
    dl_shards.write_parquet_shards(folder, N, 3, row_group_size=20, samples=samples)
    (folder / "README.md").write_text(dl_shards.README)
    with HubServer() as server:
        configure_client(server.url)
        from huggingface_hub import HfApi

        api = HfApi(endpoint=server.url, token=DEFAULT_TEST_TOKEN)
        api.create_repo("laion-hf/dl-test", repo_type="dataset")
        api.upload_folder(folder_path=str(folder), repo_id="laion-hf/dl-test", repo_type="dataset")
        yield server

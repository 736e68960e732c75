"""load_laion over hf:// (HfFileSystem) against the local Hub-compatible server."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi

from laion_hf import load_laion
from laion_hf.errors import SourceError
from laion_hf.synth import synthesize


@pytest.fixture
def metadata_repo(hub, token, tmp_path):
    src = tmp_path / "meta"
    synthesize(3000, src, files=2, seed=5, row_group_size=500, layout="relaion")
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo("laion-hf/relaion-sample", repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=str(src), repo_id="laion-hf/relaion-sample", repo_type="dataset", path_in_repo="data")
    return str(src)


def test_hf_glob_streams_the_same_rows_as_local(metadata_repo, token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)
    local = [r["url"] for r in load_laion(metadata_repo, preset="laion2b-en", columns=["url"])]
    remote_ds = load_laion("hf://datasets/laion-hf/relaion-sample/data/*.parquet", preset="laion2b-en", columns=["url"])
    assert remote_ds.num_shards == 6  # 2 files x 3 row groups, read by range requests
    remote = [r["url"] for r in remote_ds]
    assert remote == local and len(remote) > 1000
    folder = [
        r["url"] for r in load_laion("hf://datasets/laion-hf/relaion-sample/data", preset="laion2b-en", columns=["url"])
    ]
    assert folder == local


def test_hf_missing_path_is_a_source_error(metadata_repo, token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(SourceError, match="nothing-here"):
        load_laion("hf://datasets/laion-hf/relaion-sample/nothing-here/*.parquet")

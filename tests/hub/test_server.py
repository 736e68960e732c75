"""The local Hub-compatible server through the real huggingface_hub client: create, LFS upload,
commit history with old revisions still downloadable, tree/paths-info, ranged reads, Hub-style
errors and private repos."""

from __future__ import annotations

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def test_commit_history_lfs_and_old_revisions(hub, tmp_path, token):
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo("laion-hf/history", repo_type="dataset")
    blob1, blob2 = bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 50
    c1 = api.create_commit(
        "laion-hf/history",
        repo_type="dataset",
        commit_message="v1",
        operations=[CommitOperationAdd("data/a.parquet", blob1), CommitOperationAdd("notes.txt", b"first\n")],
    )
    puts = hub.count("lfs_upload")
    c2 = api.create_commit(
        "laion-hf/history",
        repo_type="dataset",
        commit_message="v2",
        operations=[CommitOperationAdd("data/a.parquet", blob2), CommitOperationDelete("notes.txt")],
    )
    assert hub.count("lfs_upload") == puts + 1  # the binary file went through the LFS batch + PUT path

    titles = [c.title for c in api.list_repo_commits("laion-hf/history", repo_type="dataset")]
    assert titles == ["v2", "v1", "initial commit"]
    assert api.list_repo_files("laion-hf/history", repo_type="dataset") == [".gitattributes", "data/a.parquet"]
    old = hf_hub_download(
        "laion-hf/history",
        "data/a.parquet",
        repo_type="dataset",
        revision=c1.oid,
        endpoint=hub.url,
        cache_dir=tmp_path / "c",
    )
    new = hf_hub_download(
        "laion-hf/history",
        "data/a.parquet",
        repo_type="dataset",
        revision=c2.oid,
        endpoint=hub.url,
        cache_dir=tmp_path / "c",
    )
    assert open(old, "rb").read() == blob1 and open(new, "rb").read() == blob2
    notes = hf_hub_download(
        "laion-hf/history",
        "notes.txt",
        repo_type="dataset",
        revision=c1.oid,
        endpoint=hub.url,
        cache_dir=tmp_path / "c",
    )
    assert open(notes, "rb").read() == b"first\n"  # deleted on main, still there at the old revision

    (info,) = api.get_paths_info("laion-hf/history", ["data/a.parquet"], repo_type="dataset")
    assert info.lfs is not None and info.lfs.size == len(blob2)
    tree = {e.path for e in api.list_repo_tree("laion-hf/history", repo_type="dataset", recursive=True)}
    assert tree == {".gitattributes", "data", "data/a.parquet"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("laion-hf/history", path_in_repo="nope", repo_type="dataset"))
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("laion-hf/history", repo_type="dataset", revision="no-such-branch")


def test_ranged_reads_and_404_error_codes(hub, tmp_path, token):
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo("laion-hf/ranges", repo_type="dataset")
    data = bytes(i % 251 for i in range(100_000))
    api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="laion-hf/ranges", repo_type="dataset")

    fs = HfFileSystem(endpoint=hub.url, token=token)
    with fs.open("datasets/laion-hf/ranges/blob.bin", "rb", block_size=4096) as f:
        f.seek(60_000)
        assert f.read(1000) == data[60_000:61_000]
    ranged = [r for r in hub.requests if r["route"] == "resolve" and r["status"] == 206]
    assert ranged, "HfFileSystem read by Range and got 206 Partial Content"

    from huggingface_hub.utils import get_session

    r = get_session().get(f"{hub.url}/datasets/laion-hf/ranges/resolve/main/blob.bin", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/100000" and r.headers["X-Repo-Commit"]
    r = get_session().head(f"{hub.url}/datasets/laion-hf/ranges/resolve/main/missing.bin")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            "laion-hf/ranges", "missing.bin", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "c"
        )
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("laion-hf/does-not-exist", repo_type="dataset")
    for sneaky in ("/api/datasets/%2E%2E/%2E%2E", "/datasets/..%2F../x/resolve/main/meta.json"):
        r = get_session().get(hub.url + sneaky)
        assert r.status_code in (401, 404) and r.headers.get("X-Error-Code") == "RepoNotFound", sneaky


def test_private_repos_and_permissions(hub, token, other_token):
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo("laion-hf/secret", repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b"x" * 10, path_in_repo="a.txt", repo_id="laion-hf/secret", repo_type="dataset")
    assert api.repo_info("laion-hf/secret", repo_type="dataset").private is True

    with pytest.raises(RepositoryNotFoundError) as anon:
        HfApi(endpoint=hub.url, token=False).repo_info("laion-hf/secret", repo_type="dataset")
    assert anon.value.response.status_code == 401
    assert anon.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError) as other:
        HfApi(endpoint=hub.url, token=other_token).repo_info("laion-hf/secret", repo_type="dataset")
    assert other.value.response.status_code == 404

    with pytest.raises(HfHubHTTPError) as forbidden:
        HfApi(endpoint=hub.url, token=other_token).create_repo("laion-hf/not-yours", repo_type="dataset")
    assert forbidden.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as bad_token:
        HfApi(endpoint=hub.url, token="hf_NotARealTokenAtAllxxxxxxxxxxxx").repo_info(
            "laion-hf/secret", repo_type="dataset"
        )
    assert bad_token.value.response.status_code == 401
    # organisations the user belongs to are writable
    api.create_repo("laion-hf-org/shared", repo_type="dataset")
    assert HfApi(endpoint=hub.url, token=other_token).repo_info("laion-hf-org/shared", repo_type="dataset").id


def test_validate_yaml_and_injected_faults(hub, token):
    from huggingface_hub import DatasetCard

    card = DatasetCard("---\nlicense: cc-by-4.0\nconfigs: [1, 2]\n---\n# x\n")
    with pytest.raises(ValueError, match="config_name"):
        card.validate()
    DatasetCard("---\nlicense: cc-by-4.0\n---\n# ok\n").validate()

    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo("laion-hf/faults", repo_type="dataset")
    hub.inject_failure("commit", nth=1, status=500)
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"abc", path_in_repo="a.txt", repo_id="laion-hf/faults", repo_type="dataset")
    assert err.value.response.status_code == 500
    api.upload_file(path_or_fileobj=b"abc", path_in_repo="a.txt", repo_id="laion-hf/faults", repo_type="dataset")
    assert "a.txt" in api.list_repo_files("laion-hf/faults", repo_type="dataset")

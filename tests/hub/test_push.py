"""push: round trip through plain ``datasets.load_dataset`` (streaming and not), resume after an
injected server failure, tokens never leaked, private repos, branches/PRs, dry runs, bad input."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub import HfApi
from shard_rows import PROVENANCE, make_rows, pixels

from laion_hf.errors import HubError, ShardError
from laion_hf.hub import push, reload
from laion_hf.shards import write_shards


def _check_rows(rows: list[dict], table) -> None:
    src = table.to_pylist()
    assert [r["key"] for r in rows] == [s["key"] for s in src]
    assert [r["caption"] for r in rows] == [s["caption"] for s in src]
    assert [r["status"] for r in rows] == [s["status"] for s in src]
    for r, s in zip(rows, src):
        if s["image"] is None:
            assert r["image"] is None and r["image_embedding"] is None
            continue
        np.testing.assert_array_equal(np.asarray(r["image"].convert("RGB")), pixels(s["image"]))
        assert np.array_equal(np.float32(r["image_embedding"]), np.float32(s["image_embedding"]))
        assert np.array_equal(np.float32(r["text_embedding"]), np.float32(s["text_embedding"]))


def test_round_trip_parquet_streaming_and_not(hub, shard_dir, token, tmp_path):
    folder, table = shard_dir
    res = push(folder, "laion-hf/round-trip", token=token, endpoint=hub.url)
    assert res.commits and set(res.to_upload) == {
        "README.md",
        "stats.json",
        "assets/score_histograms.png",
        *(f"data/default/train-0000{i}-of-00003.parquet" for i in range(3)),
    }

    ds = datasets.load_dataset("laion-hf/round-trip", split="train", streaming=True)
    assert isinstance(ds, datasets.IterableDataset) and ds.num_shards == 3
    assert isinstance(ds.features["image"], datasets.Image)
    _check_rows(list(ds), table)

    full = datasets.load_dataset("laion-hf/round-trip", split="train", cache_dir=str(tmp_path / "cache"))
    assert full.num_rows == 40 and full.features["image_embedding"].length == 8
    _check_rows(list(full), table)
    # the card on the Hub has the repo id in its snippets
    readme = HfApi(endpoint=hub.url).hf_hub_download(
        "laion-hf/round-trip", "README.md", repo_type="dataset", cache_dir=tmp_path / "c"
    )
    assert 'load_dataset("laion-hf/round-trip"' in Path(readme).read_text()


def test_round_trip_in_a_fresh_process_with_only_hf_endpoint(hub, shard_dir, token, tmp_path):
    """A user's process: HF_ENDPOINT in the environment, plain load_dataset, no laion_hf import."""
    folder, table = shard_dir
    push(folder, "laion-hf/fresh", token=token, endpoint=hub.url)
    script = textwrap.dedent("""
        import sys, datasets
        assert "laion_hf" not in sys.modules
        ds = datasets.load_dataset("laion-hf/fresh", split="train", streaming=True)
        rows = list(ds)
        print(len(rows), sum(r["image"] is not None for r in rows), rows[0]["caption"], rows[0]["image"].size)
    """)
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path)
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[0] == "40 32 a photo of thing number 0 (24, 16)"


def test_round_trip_webdataset(hub, token, tmp_path):
    table = make_rows(24)
    write_shards(table, tmp_path / "wds", format="webdataset", max_shard_rows=10, provenance=PROVENANCE, progress=False)
    push(tmp_path / "wds", "laion-hf/round-trip-wds", token=token, endpoint=hub.url)
    rows = list(reload("laion-hf/round-trip-wds"))
    src = {r["key"]: r for r in table.to_pylist() if r["image"] is not None}
    assert sorted(r["__key__"] for r in rows) == sorted(src)
    for r in rows:
        s = src[r["__key__"]]
        assert r["txt"] == s["caption"] and r["json"]["status"] == "success"
        np.testing.assert_array_equal(np.asarray(r["jpg"].convert("RGB")), pixels(s["image"]))
        np.testing.assert_allclose(np.float32(r["npy"]), np.float32(s["image_embedding"]))


def test_resume_after_injected_failure_uploads_only_whats_missing(hub, token, tmp_path):
    table = make_rows(60)
    folder = tmp_path / "out"
    write_shards(table, folder, max_shard_rows=10, progress=False)  # 6 shards
    hub.inject_failure("commit", nth=3, status=500)  # the third commit dies
    with pytest.raises(HubError, match=r"HTTP 500.*re-run the same push to resume"):
        push(folder, "laion-hf/resume", token=token, endpoint=hub.url, max_files_per_commit=2)
    api = HfApi(endpoint=hub.url, token=token)
    committed = {f for f in api.list_repo_files("laion-hf/resume", repo_type="dataset") if f.startswith("data/")}
    assert len(committed) == 4 and "README.md" not in api.list_repo_files("laion-hf/resume", repo_type="dataset")
    puts_before = hub.count("lfs_upload", 200)

    dry = push(folder, "laion-hf/resume", token=token, endpoint=hub.url, dry_run=True)
    assert len(dry.to_upload) == 5 and set(dry.unchanged) == committed  # 2 shards + png + stats + README

    res = push(folder, "laion-hf/resume", token=token, endpoint=hub.url, max_files_per_commit=2)
    assert not set(res.to_upload) & committed and len(res.to_upload) == 5
    # the 5th/6th shards were uploaded to LFS before the failed commit: only the png is new LFS content
    assert hub.count("lfs_upload", 200) - puts_before == 1
    files = api.list_repo_files("laion-hf/resume", repo_type="dataset")
    assert len(files) == len(set(files)) == 1 + 6 + 3  # .gitattributes, shards, README/stats/png
    again = push(folder, "laion-hf/resume", token=token, endpoint=hub.url)
    assert again.to_upload == [] and again.commits == []
    _check_rows(list(reload("laion-hf/resume")), table)


def test_resume_after_lfs_upload_failures(hub, token, tmp_path):
    folder = tmp_path / "out"
    write_shards(make_rows(30), folder, max_shard_rows=10, progress=False)
    hub.inject_failure("lfs_upload", nth=2, status=400)  # 4xx: not retried by huggingface_hub
    with pytest.raises(HubError, match="HTTP 400"):
        push(folder, "laion-hf/resume-lfs", token=token, endpoint=hub.url)
    hub.clear_failures()
    res = push(folder, "laion-hf/resume-lfs", token=token, endpoint=hub.url)
    assert len(res.to_upload) == 6
    files = HfApi(endpoint=hub.url).list_repo_files("laion-hf/resume-lfs", repo_type="dataset")
    assert sum(f.endswith(".parquet") for f in files) == 3


def test_token_never_leaks(hub, shard_dir, token, monkeypatch, caplog, capsys, tmp_path):
    folder, _ = shard_dir
    monkeypatch.setenv("HF_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    messages = []
    push(folder, "laion-hf/token-check", endpoint=hub.url)  # token from HF_TOKEN
    hub.inject_failure("commit", nth=1, status=500)
    write_shards(make_rows(5, start=100), folder, config="more", progress=False)
    with pytest.raises(HubError) as e1:
        push(folder, "laion-hf/token-check", endpoint=hub.url)
    messages.append(str(e1.value))
    with pytest.raises(HubError) as e2:  # 403: the token cannot write to another namespace
        push(folder, "someone-else/token-check", endpoint=hub.url)
    messages.append(str(e2.value))
    assert "HTTP 403" in messages[-1] and "not allowed to write" in messages[-1]

    from laion_hf.cli import main

    assert main(["push", str(folder), "laion-hf/token-check", "--endpoint", hub.url]) == 0
    assert main(["push", str(folder), "nobody/x", "--endpoint", hub.url]) == 1
    out = capsys.readouterr()
    readme = HfApi(endpoint=hub.url).hf_hub_download(
        "laion-hf/token-check", "README.md", repo_type="dataset", cache_dir=tmp_path / "c"
    )
    stats = HfApi(endpoint=hub.url).hf_hub_download(
        "laion-hf/token-check", "stats.json", repo_type="dataset", cache_dir=tmp_path / "c"
    )
    haystacks = {
        "card": Path(readme).read_text(),
        "stats": Path(stats).read_text(),
        "logs": caplog.text,
        "errors": "\n".join(messages),
        "stdout": out.out,
        "stderr": out.err,
        "server log": repr(hub.requests),
    }
    assert "pushed" in out.out and "HTTP 403" in out.err and caplog.text
    for name, text in haystacks.items():
        assert token not in text, f"token leaked into {name}"
        assert token[3:15] not in text, f"part of the token leaked into {name}"


def test_invalid_repo_id_missing_token_and_missing_stats(hub, shard_dir, tmp_path, token):
    folder, _ = shard_dir
    for bad in ("no-namespace", "a/b/c", "bad name/x", "org/--x", "org/x..y"):
        with pytest.raises(HubError, match="invalid repo id"):
            push(folder, bad, token=token, endpoint=hub.url)
    with pytest.raises(HubError, match="no Hugging Face token.*HF_TOKEN"):
        push(folder, "laion-hf/no-token", endpoint=hub.url)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="has no stats.json"):
        push(tmp_path / "empty", "laion-hf/x", token=token, endpoint=hub.url)
    shard = next((folder / "data/default").iterdir())
    shard.write_bytes(shard.read_bytes() + b"tampered")
    with pytest.raises(ShardError, match="changed since stats.json"):
        push(folder, "laion-hf/x", token=token, endpoint=hub.url)
    with pytest.raises(HubError, match="invalid credentials|Invalid credentials"):
        write_shards(make_rows(3), tmp_path / "ok", progress=False)
        push(tmp_path / "ok", "laion-hf/bad-token", token="hf_WrongTokenWrongTokenWrong123", endpoint=hub.url)


def test_private_repo_needs_the_token_to_load(hub, shard_dir, token, other_token):
    folder, table = shard_dir
    push(folder, "laion-hf/private-subset", private=True, token=token, endpoint=hub.url)
    assert HfApi(endpoint=hub.url, token=token).repo_info("laion-hf/private-subset", repo_type="dataset").private
    with pytest.raises(datasets.exceptions.DatasetNotFoundError):
        datasets.load_dataset("laion-hf/private-subset", split="train", streaming=True, token=False)
    with pytest.raises(datasets.exceptions.DatasetNotFoundError):
        datasets.load_dataset("laion-hf/private-subset", split="train", streaming=True, token=other_token)
    rows = list(datasets.load_dataset("laion-hf/private-subset", split="train", streaming=True, token=token))
    _check_rows(rows, table)
    readme_heads = [
        r["status"] for r in hub.requests if r["path"] == "/datasets/laion-hf/private-subset/resolve/main/README.md"
    ]
    assert readme_heads[:2] == [401, 404]  # anonymous: 401; another user's token: 404 (existence not leaked)


def test_branch_pull_request_and_dry_run(hub, shard_dir, token, capsys):
    folder, _ = shard_dir
    dry = push(folder, "laion-hf/branches", token=token, endpoint=hub.url, dry_run=True)
    assert len(dry.to_upload) == 6 and not dry.commits
    api = HfApi(endpoint=hub.url, token=token)
    assert not api.repo_exists("laion-hf/branches", repo_type="dataset")  # a dry run creates nothing

    push(folder, "laion-hf/branches", token=token, endpoint=hub.url, revision="v2")
    assert api.list_repo_files("laion-hf/branches", repo_type="dataset") == [".gitattributes"]
    assert "stats.json" in api.list_repo_files("laion-hf/branches", repo_type="dataset", revision="v2")
    res = push(folder, "laion-hf/branches", token=token, endpoint=hub.url, create_pr=True)
    assert res.pr_url and res.pr_url.endswith("/discussions/1") and len(res.commits) == 1
    assert "README.md" in api.list_repo_files("laion-hf/branches", repo_type="dataset", revision="refs/pr/1")
    with pytest.raises(HubError, match="do not combine it with --revision"):
        push(folder, "laion-hf/branches", token=token, endpoint=hub.url, create_pr=True, revision="v2")

    from laion_hf.cli import main

    assert main(["push", str(folder), "laion-hf/branches", "--dry-run", "--endpoint", hub.url]) == 0
    out = capsys.readouterr().out
    assert "dry run: would upload 6 file(s)" in out and "  + data/default/train-00000-of-00003.parquet" in out


def test_publish_local_demo_helper(tmp_path, capsys):
    from laion_hf.testing.local_hub import publish_local

    summary = publish_local(
        make_rows(25), tmp_path / "demo", "laion-hf/demo-helper", provenance=PROVENANCE, max_shard_rows=10, show=2
    )
    assert summary["rows"] == summary["reloaded_rows"] == 25 and summary["num_shards"] == 3
    assert [s["key"] for s in summary["sample"]] == ["000000000", "000000001"]
    out = capsys.readouterr().out
    assert "datasets.load_dataset('laion-hf/demo-helper', streaming=True)" in out and "reloaded 25 rows" in out


def test_parquet_and_webdataset_never_mix_in_one_repo(hub, shard_dir, token, tmp_path):
    folder, _ = shard_dir
    push(folder, "laion-hf/no-mix", token=token, endpoint=hub.url)
    write_shards(make_rows(10), tmp_path / "wds", format="webdataset", progress=False)
    with pytest.raises(HubError, match="already holds parquet shards.*cannot mix"):
        push(tmp_path / "wds", "laion-hf/no-mix", token=token, endpoint=hub.url)
    files = HfApi(endpoint=hub.url).list_repo_files("laion-hf/no-mix", repo_type="dataset")
    assert not any(f.endswith(".tar") for f in files)


def test_two_configs_in_one_repo_load_by_name(hub, token, tmp_path):
    folder = tmp_path / "multi"
    write_shards(make_rows(12), folder, config="small", progress=False)
    write_shards(make_rows(30, start=500), folder, config="large", max_shard_rows=10, progress=False)
    push(folder, "laion-hf/multi-config", token=token, endpoint=hub.url)
    names = datasets.get_dataset_config_names("laion-hf/multi-config")
    assert names == ["small", "large"]
    small = list(reload("laion-hf/multi-config", "small"))
    large = list(reload("laion-hf/multi-config", "large"))
    assert len(small) == 12 and len(large) == 30 and large[0]["key"] == "000000500"
    default = datasets.load_dataset("laion-hf/multi-config", split="train", streaming=True)
    assert next(iter(default))["key"] == "000000000"  # the first config is the default

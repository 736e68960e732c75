"""A download whose tar is cut short or corrupt never becomes shards or embeddings with rows
missing: `shards` and `embed` (library and CLI) stop with one error naming the tar, and write
nothing that looks finished."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_hf.errors import ShardError

DAMAGE = ("header", "data", "boundary", "corrupt")
ROOT = str(Path(__file__).resolve().parents[2])
_MAIN = "import sys; from laion_hf.cli import main; sys.exit(main())"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", _MAIN, *args], check=False, capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)  # fmt: skip


def _one_error_line(proc: subprocess.CompletedProcess, verb: str, tar: Path) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"laion-hf {verb}: error: {tar}: "), lines
    return lines[0]


def test_intact_download_makes_shards_with_every_image(download_dir, tmp_path):
    from laion_hf.shards import write_shards

    stats = write_shards(str(download_dir), tmp_path / "out", progress=False)
    table = pq.read_table(download_dir / "00000.parquet")
    assert stats["rows"] == table.num_rows
    assert stats["status"]["success"] == table["status"].to_pylist().count("success")


@pytest.mark.parametrize("how", DAMAGE)
def test_shards_from_damaged_tar_is_an_error_naming_it(damaged, how, tmp_path):
    from laion_hf.shards import write_shards

    tar = damaged[how] / "00000.tar"
    with pytest.raises(ShardError, match=f"{tar}: cannot read the tar shard"):
        write_shards(str(damaged[how]), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "stats.json").exists()


@pytest.mark.parametrize("how", ["header", "data"])
def test_shards_cli_damaged_tar_one_line_exit_1(damaged, how, tmp_path):
    tar = damaged[how] / "00000.tar"
    line = _one_error_line(_cli("shards", str(damaged[how]), str(tmp_path / "out"), "--quiet"), "shards", tar)
    assert "cut short" in line


def test_success_rows_missing_from_an_intact_tar_are_an_error(download_dir, tmp_path):
    """A tar that reads cleanly but lacks an image its parquet marks as fetched (a member
    removed): the shard's success rows would be published without images."""
    import shutil
    import tarfile

    dl = tmp_path / "dl"
    shutil.copytree(download_dir, dl)
    with (
        tarfile.open(download_dir / "00000.tar") as src,
        tarfile.open(dl / "00000.tar", "w") as dst,
    ):
        members = src.getmembers()
        dropped = next(m for m in members if m.name.endswith(".jpg"))
        for m in members:
            if m is not dropped:
                dst.addfile(m, src.extractfile(m))
    from laion_hf.shards import write_shards

    with pytest.raises(ShardError, match=r"00000.tar: 1 row\(s\) of 00000.parquet are marked success"):
        write_shards(str(dl), tmp_path / "out", progress=False)


@pytest.mark.parametrize("how", ["header", "data"])
def test_embed_damaged_tar_is_an_error_naming_it(damaged, how, tmp_path):
    from laion_hf.clip import embed_shards

    tar = damaged[how] / "00000.tar"
    with pytest.raises(ShardError, match=f"{tar}: cannot read the tar shard"):
        embed_shards([str(tar)], tmp_path / "emb", progress=False, batch_size=8)
    assert not list((tmp_path / "emb").glob("stats/stats_*.json"))
    assert not list((tmp_path / "emb").glob("img_emb/*.npy"))


def test_embed_cli_damaged_tar_one_line_exit_1(damaged, tmp_path):
    tar = damaged["header"] / "00000.tar"
    proc = _cli("embed", str(tar), "--out", str(tmp_path / "emb"), "--no-progress")
    assert "cut short" in _one_error_line(proc, "embed", tar)

"""``filter`` on Ray Data writes the same parts and stats as the local engine."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray.data", reason="the Ray engine needs the ray extra: pip install 'laion-hf[ray]'")

from laion_hf.cli import main as cli_main  # noqa: E402
from laion_hf.engines.ray import filter_to_parquet_ray  # noqa: E402
from laion_hf.export import filter_to_parquet  # noqa: E402
from laion_hf.synth import synthesize  # noqa: E402

TIMING = ("duration_s", "engine")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """3 files x 4 row groups (12 Ray tasks), 600 rows, plus a file that is not parquet."""
    out = tmp_path_factory.mktemp("ray-filter-src")
    synthesize(600, out, files=3, seed=3, row_group_size=50)
    (out / "part-00003.parquet").write_bytes(b"not a parquet file")
    return str(out)


def _same(local_dir, ray_dir, a, b):
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert b["engine"] == "ray"
    assert sorted(os.listdir(ray_dir)) == sorted(os.listdir(local_dir))  # no staging left behind
    for name in a["output_files"]:
        x, y = pq.read_table(os.path.join(local_dir, name)), pq.read_table(os.path.join(ray_dir, name))
        assert x.schema == y.schema and x.equals(y), name
    on_disk = json.load(open(os.path.join(ray_dir, "stats.json")))
    assert on_disk["rows_kept"] == b["rows_kept"]


def test_filter_matches_local(ray_local, src, tmp_path):
    kw = dict(where="similarity >= 0.3", preset="safe", rows_per_file=70, progress=False, on_error="skip")
    a = filter_to_parquet(src, str(tmp_path / "local"), **kw)
    b = filter_to_parquet_ray(src, str(tmp_path / "ray"), **kw)
    _same(str(tmp_path / "local"), str(tmp_path / "ray"), a, b)
    # every input row is accounted for, keys are unique, and the bad file is reported once
    assert b["rows_in"] == 600 and b["rows_kept"] + b["removed_by_filter"] == 600
    assert 0 < b["rows_kept"] < 600 and len(b["output_files"]) == -(-b["rows_kept"] // 70)
    keys = [
        k for f in b["output_files"] for k in pq.read_table(tmp_path / "ray" / f, columns=["key"])["key"].to_pylist()
    ]
    assert len(keys) == len(set(keys)) == b["rows_kept"]
    assert [s["file"].endswith("part-00003.parquet") for s in b["files_skipped"]] == [True]


def test_filter_nothing_kept_and_sample(ray_local, src, tmp_path):
    kw = dict(where="similarity > 5", progress=False, on_error="skip")
    a = filter_to_parquet(src, str(tmp_path / "l0"), **kw)
    b = filter_to_parquet_ray(src, str(tmp_path / "r0"), **kw)
    _same(str(tmp_path / "l0"), str(tmp_path / "r0"), a, b)
    assert b["rows_kept"] == 0 and b["output_files"] == ["part-00000.parquet"]
    kw = dict(sample=0.3, progress=False, on_error="skip", rows_per_file=1000)
    a = filter_to_parquet(src, str(tmp_path / "l1"), **kw)
    b = filter_to_parquet_ray(src, str(tmp_path / "r1"), **kw, workers=1)
    _same(str(tmp_path / "l1"), str(tmp_path / "r1"), a, b)
    assert 0 < b["removed_by_sample"] < 600


def test_filter_cli_engine_ray(ray_local, src, tmp_path, capsys):
    rc = cli_main(["filter", src, "--out", str(tmp_path / "cli"), "--where", "aesthetic >= 5", "--on-error", "skip",
                   "--no-progress", "--engine", "ray", "--ray-workers", "2"])  # fmt: skip
    assert rc == 0
    stats = json.load(open(tmp_path / "cli" / "stats.json"))
    assert stats["engine"] == "ray" and stats["rows_in"] == 600
    a = filter_to_parquet(src, str(tmp_path / "local"), where="aesthetic >= 5", on_error="skip", progress=False)
    assert a["rows_kept"] == stats["rows_kept"]
    assert pq.read_table(tmp_path / "cli" / "part-00000.parquet").equals(
        pq.read_table(tmp_path / "local" / "part-00000.parquet")
    )
    assert f"kept {stats['rows_kept']:,} of 600 rows" in capsys.readouterr().out


def test_filter_bad_expression_is_a_clear_error(ray_local, src, tmp_path):
    from laion_hf.errors import FilterError

    with pytest.raises(FilterError, match="nope"):
        filter_to_parquet_ray(src, str(tmp_path / "bad"), where="nope > 1", progress=False, on_error="skip")


def test_unreadable_file_raises_its_error_naming_it(ray_local, src, tmp_path):
    """on_error='raise' (the default): the task's SourceError reaches the caller as is."""
    from laion_hf.errors import SourceError

    with pytest.raises(SourceError, match="part-00003.parquet") as local:
        filter_to_parquet(src, str(tmp_path / "l"), progress=False)
    with pytest.raises(SourceError, match="part-00003.parquet") as on_ray:
        filter_to_parquet_ray(src, str(tmp_path / "r"), progress=False)
    assert str(on_ray.value) == str(local.value)
    assert not os.path.exists(tmp_path / "r" / "stats.json")


def test_ray_filter_refuses_an_output_folder_that_overlaps_its_input(tmp_path):
    """Issue 11 item 1 on the Ray engine: nothing in the input folder is removed."""
    from laion_hf.errors import OutputError

    src = tmp_path / "meta"
    synthesize(100, src, files=2, seed=4)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    with pytest.raises(OutputError, match="overlaps the input"):
        filter_to_parquet_ray(str(src), str(src), progress=False)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before

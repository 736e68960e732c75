"""`filter` never deletes its inputs or a user's files, and never leaves output that looks
complete after a failed or killed run (issue 11, items 1 and 6)."""

import hashlib
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from laion_hf.cli import main
from laion_hf.errors import OutputError, SourceError
from laion_hf.export import filter_to_parquet
from laion_hf.synth import synthesize


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def laion_dl(tmp_path):
    """A folder of LAION-named parquet parts, as users download them."""
    folder = tmp_path / "laion_dl"
    synthesize(600, folder, files=3, seed=5)
    for i, p in enumerate(sorted(folder.glob("part-*.parquet"))):
        p.rename(folder / f"part-{i:05d}-3c1a5b2e-1f7c-4b8e-9c1d-8f5e2a7b6c4d-c000.snappy.parquet")
    return folder


def test_filter_into_the_folder_of_its_input_file_is_refused_and_deletes_nothing(laion_dl, capsys):
    before = _digests(laion_dl)
    first = sorted(laion_dl.glob("*.parquet"))[0]
    code = main(["filter", str(first), "--out", str(laion_dl), "--where", "similarity >= 0.3", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "overlaps the input" in err and str(laion_dl) in err and "Traceback" not in err
    assert _digests(laion_dl) == before


@pytest.mark.parametrize("out", ["same", "inside"])
def test_filter_folder_onto_itself_or_inside_is_refused(laion_dl, out):
    before = _digests(laion_dl)
    target = laion_dl if out == "same" else laion_dl / "filtered"
    with pytest.raises(OutputError, match="overlaps the input"):
        filter_to_parquet(str(laion_dl), str(target), progress=False)
    assert _digests(laion_dl) == before and not (laion_dl / "filtered").exists()


def test_rerun_replaces_only_files_laion_hf_wrote(laion_dl, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "part-00007-user.snappy.parquet").write_bytes(b"a user's file")
    first = filter_to_parquet(str(laion_dl), str(out), rows_per_file=100, progress=False)
    assert len(first["output_files"]) >= 3
    second = filter_to_parquet(str(laion_dl), str(out), where="similarity > 0.33", rows_per_file=100, progress=False)
    assert len(second["output_files"]) < len(first["output_files"])
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "part-00007-user.snappy.parquet").read_bytes() == b"a user's file"
    ours = sorted(p.name for p in out.glob("part-0000?.parquet"))
    assert ours == second["output_files"]  # the first run's extra parts are gone
    manifest = json.loads((out / ".laion-hf-manifest.json").read_text())
    assert manifest["complete"] is True and set(manifest["files"]) == {*second["output_files"], "stats.json"}


def test_a_users_file_with_an_output_name_is_never_replaced(laion_dl, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"precious")
    with pytest.raises(OutputError, match="not written by laion-hf"):
        filter_to_parquet(str(laion_dl), str(out), progress=False)
    assert (out / "part-00000.parquet").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]  # no staging left


def test_a_failed_rerun_keeps_the_previous_output_whole(laion_dl, tmp_path):
    out = tmp_path / "out"
    filter_to_parquet(str(laion_dl), str(out), rows_per_file=150, progress=False)
    before = _digests(out)
    broken = tmp_path / "broken"
    broken.mkdir()
    synthesize(300, broken, files=1, seed=1)
    (broken / "part-00001.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SourceError, match="part-00001.parquet"):
        filter_to_parquet(str(broken), str(out), rows_per_file=50, progress=False)
    assert _digests(out) == before  # old parts and stats.json untouched, nothing mixed in
    assert not [p for p in out.iterdir() if p.name.startswith(".laion-hf-staging")]


def test_a_killed_run_leaves_no_complete_looking_output_and_is_cleaned_next_time(laion_dl, tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, sys\n"
        "from laion_hf._util.outdir import OutputDir\n"
        f"d = OutputDir({str(out)!r}, kind='filter').__enter__()\n"
        "open(d.path('part-00000.parquet'), 'wb').write(b'half')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    assert not list(out.glob("part-*.parquet")) and not (out / "stats.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".laion-hf-staging")]
    result = filter_to_parquet(str(laion_dl), str(out), progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*result["output_files"], "stats.json", ".laion-hf-manifest.json"]
    )
    assert pq.read_table(out / "part-00000.parquet").num_rows == result["rows_kept"]


def test_output_path_that_is_a_file_is_one_clear_line(laion_dl, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(["filter", str(laion_dl), "--out", str(target / "sub"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert target.read_text() == "x"


def test_synth_into_an_earlier_runs_folder_never_mixes_runs(tmp_path, capsys):
    out = tmp_path / "meta"
    assert main(["synth", "--rows", "300", "--files", "3", "--out", str(out)]) == 0
    assert main(["synth", "--rows", "100", "--files", "1", "--out", str(out)]) == 0
    assert "wrote 100 rows" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet"]
    from laion_hf import load_laion

    assert sum(t.num_rows for t in load_laion(str(out)).with_format("arrow").iter(batch_size=1000)) == 100


def test_interrupted_synth_leaves_no_temporary_file_and_keeps_the_old_output(tmp_path):
    import signal
    import time

    out = tmp_path / "meta"
    synthesize(50, out, seed=1)
    before = _digests(out)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "laion_hf.cli",
            "synth",
            "--rows",
            "5000000",
            "--row-group-size",
            "20000",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".laion-hf-staging-*/part-*.parquet")):
        time.sleep(0.05)
    assert list(out.glob(".laion-hf-staging-*/part-*.parquet")), "synth never started writing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert _digests(out) == before  # the old output, whole; no staging folder, no .tmp file
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".laion-hf-staging")]

"""Issue 11, items 10, 11 and 13: a user's mistake is one clear line, never a traceback, an
endless loop or a silently replaced value."""

import os
import subprocess
import sys

import pytest

from laion_hf.cli import main

BAD_OPTIONS = [
    (["filter", "SRC", "--out", "OUT", "--rows-per-file", "0"], "--rows-per-file: must be at least 1"),
    (["filter", "SRC", "--out", "OUT", "--rows-per-file", "-5"], "--rows-per-file: must be at least 1"),
    (["filter", "SRC", "--out", "OUT", "--sample", "1.5"], "--sample: must be in (0, 1]"),
    (["synth", "--out", "OUT", "--row-group-size", "0"], "--row-group-size: must be at least 1"),
    (["synth", "--out", "OUT", "--files", "0"], "--files: must be at least 1"),
    (["download", "SRC", "--out", "OUT", "--max-body-mb", "nan"], "--max-body-mb: 'nan' is not a number"),
    (
        ["download", "SRC", "--out", "OUT", "--max-aspect-ratio", "0"],
        "--max-aspect-ratio: an aspect ratio is at least 1",
    ),
    (
        ["download", "SRC", "--out", "OUT", "--max-aspect-ratio", "-1"],
        "--max-aspect-ratio: an aspect ratio is at least 1",
    ),
    (["download", "SRC", "--out", "OUT", "--max-image-area", "0"], "--max-image-area: must be greater than 0"),
    (["download", "SRC", "--out", "OUT", "--processes", "0"], "--processes: must be at least 1"),
    (["download", "SRC", "--out", "OUT", "--timeout", "abc"], "--timeout: 'abc' is not a number"),
    (["embed", "SRC", "--out", "OUT", "--num-workers", "-1"], "--num-workers: must be at least 1"),
    (["embed", "SRC", "--out", "OUT", "--num-workers", "0"], "--num-workers: must be at least 1"),
    (["embed", "SRC", "--out", "OUT", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["demo", "--rows", "0"], "--rows: must be at least 1"),
    (["shards", "SRC", "OUT", "--provenance", "{bad"], "--provenance: not valid JSON"),
    (["shards", "SRC", "OUT", "--provenance", "[1, 2]"], "--provenance: must be a JSON object"),
    (["shards", "SRC", "OUT", "--max-shard-rows", "0"], "--max-shard-rows: must be at least 1"),
]


@pytest.mark.parametrize("argv,message", BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_bad_numeric_and_json_options_are_refused_at_parse_time(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("SRC", "OUT") else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "OUT").exists()  # nothing was started


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    from laion_hf.synth import synthesize

    folder = tmp_path_factory.mktemp("meta")
    synthesize(50, folder, seed=2)
    return str(folder)


VERBS = [
    ["synth", "--rows", "10", "--out", "{out}"],
    ["filter", "{meta}", "--out", "{out}", "--no-progress"],
    ["download", "{meta}", "--out", "{out}", "--no-progress"],
    ["shards", "{meta}", "{out}"],
    ["embed", "{meta}", "--out", "{out}"],
    ["demo", "--rows", "20", "--out", "{out}"],
]


@pytest.mark.parametrize("argv", VERBS, ids=[v[0] for v in VERBS])
def test_an_output_below_a_file_is_one_line_before_any_work(argv, meta, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = [a.format(meta=meta, out=blocker / "out") for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and "Traceback" not in err
    assert blocker.read_text() == "x"


def test_stats_plot_path_is_checked_before_the_scan(meta, tmp_path, capsys):
    (tmp_path / "plots").mkdir()
    assert main(["stats", meta, "--plot", str(tmp_path / "plots")]) == 1
    err = capsys.readouterr().err
    assert "is a folder" in err and "Traceback" not in err
    (tmp_path / "f").write_text("x")
    assert main(["stats", meta, "--plot", str(tmp_path / "f" / "h.png")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_closed_pipe_is_not_a_traceback():
    """`laion-hf presets | head -0`: stdout's reader is gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "laion_hf.cli", "presets"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert r.returncode == 141 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr

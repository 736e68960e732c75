import json
import os
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from laion_hf.cli import main


def read_parts(folder):
    import glob

    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(os.path.join(folder, "*.parquet")))])


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_help_everywhere(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    verbs = ["synth", "stats", "filter", "presets", "demo"]
    out = capsys.readouterr().out
    for verb in verbs:
        assert verb in out
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        assert "usage: laion-hf " + verb in capsys.readouterr().out


def test_synth_stats_filter_roundtrip(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["synth", "--rows", "3000", "--files", "2", "--out", str(src), "--layout", "relaion"]) == 0
    assert main(["stats", str(src), "--json", "--plot", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert stats["rows"] == 3000 and stats["columns"]["similarity"]["count"] == 3000
    q = stats["columns"]["similarity"]["quantiles"]
    assert q["0.1"] < q["0.5"] < q["0.9"]
    assert sum(stats["columns"]["width"]["histogram"]["counts"]) == 3000
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out_dir = tmp_path / "f"
    assert (
        main(
            [
                "filter",
                str(src),
                "--where",
                "similarity >= 0.3 and min(width, height) >= 300",
                "--out",
                str(out_dir),
                "--rows-per-file",
                "500",
                "--no-progress",
            ]
        )
        == 0
    )
    st = json.loads((out_dir / "stats.json").read_text())
    assert st["rows_in"] == 3000 == st["rows_kept"] + st["removed_by_filter"]
    kept = read_parts(out_dir)
    assert kept.num_rows == st["rows_kept"] and len(st["output_files"]) == -(-st["rows_kept"] // 500)
    assert pc.min(kept["similarity"]).as_py() >= 0.3


def test_cli_errors_are_one_line_and_name_the_culprit(tmp_path, capsys):
    main(["synth", "--rows", "10", "--out", str(tmp_path / "m")])
    assert main(["filter", str(tmp_path / "m"), "--where", "simlarity > 1", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "unknown column(s) 'simlarity'" in err and "known columns:" in err and "Traceback" not in err
    assert main(["filter", str(tmp_path / "m"), "--preset", "nope", "--out", str(tmp_path / "o")]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_presets_verb_lists_sources(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "research-safe" in out and "punsafe <= 0.45" in out and "laion.ai" in out


@pytest.mark.parametrize(
    "script,args,expect",
    [
        ("stream_laion2b_en.py", ["--source", "sample", "--batches", "0"], "with similarity >= 0.28"),
        ("build_high_resolution.py", ["--source", "sample", "--research-safe"], "preset high-resolution"),
        ("build_aesthetics_subset.py", ["--source", "sample", "--threshold", "6.5"], "aesthetic >= 6.5"),
    ],
)
def test_loading_scripts_run_on_the_embedded_sample(tmp_path, script, args, expect):
    if "--source" in args and script != "stream_laion2b_en.py":
        args = args + ["--out", str(tmp_path / "out")]
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "loading_scripts", script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout
    if script == "stream_laion2b_en.py":
        n = int(r.stdout.strip().splitlines()[-1].split()[1])
        assert n > 0
    else:
        st = json.loads(r.stdout)
        kept = read_parts(tmp_path / "out")
        assert kept.num_rows == st["rows_kept"] > 0
        if "high_resolution" in script:
            assert pc.min(pc.min_element_wise(kept["width"], kept["height"])).as_py() >= 1024
            assert pc.max(kept["punsafe"]).as_py() <= 0.45
        else:
            assert pc.min(kept["aesthetic"]).as_py() >= 6.5


def test_demo_runs_end_to_end(tmp_path):
    """The README's main job: every stage, loopback only, counts consistent end to end."""
    from laion_hf.demo import run_demo

    summary = run_demo(str(tmp_path / "demo"), rows=500)
    s = summary["scan"]
    assert s["rows_in"] == 500 == s["rows_kept"] + s["removed_by_filter"] + s["removed_by_blocklist"]
    assert s["removed_by_blocklist"] >= 1
    dl = summary["download"]
    assert dl["count"] == s["rows_kept"] == sum(dl["status_dict"].values())
    assert set(dl["status_dict"]) >= {"success", "http_404"} and dl["status_dict"]["success"] < dl["count"]
    pub = summary["publish"]
    assert pub["rows_written"] == pub["reloaded_rows"] == s["rows_kept"]
    assert summary["dataloader"]["resume_exact"] is True
    assert (tmp_path / "demo" / "published" / "README.md").read_text().startswith("---")
    explore = summary["explore"]  # the last step: an index and the command opening the explorer page
    assert explore["rows"] == pub["rows_written"] and (tmp_path / "demo" / "index" / "infos.json").is_file()
    assert explore["command"] == f"laion-hf serve {tmp_path / 'demo' / 'index'}"


def test_filter_rerun_into_the_same_folder_leaves_no_stale_parts(tmp_path):
    from laion_hf.export import filter_to_parquet
    from laion_hf.synth import synthesize

    synthesize(2000, tmp_path / "src", seed=2)
    first = filter_to_parquet(str(tmp_path / "src"), str(tmp_path / "out"), rows_per_file=300, progress=False)
    assert len(first["output_files"]) > 2
    second = filter_to_parquet(
        str(tmp_path / "src"), str(tmp_path / "out"), where="similarity > 0.35", rows_per_file=300, progress=False
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet")) == second["output_files"]
    assert read_parts(tmp_path / "out").num_rows == second["rows_kept"]

"""The research loop's parts: the power-law fits recover known curves, the world's held-out
benchmark is written in CLIP_benchmark's layout with the ground truth as labels, and the
results table marks a variant as better only beyond the seed spread."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from laion_hf.errors import EvalError


def test_power_law_fit_recovers_parameters():
    from laion_hf.reproduce import fit_power_law

    n = np.array([256, 512, 1024, 2048, 4096, 8192], float)
    fit = fit_power_law(n, 2.5 * n**-0.45 + 0.12)
    assert fit["a"] == pytest.approx(2.5, rel=0.02)
    assert fit["b"] == pytest.approx(0.45, abs=0.005)
    assert fit["c"] == pytest.approx(0.12, abs=0.003)
    assert fit["r2"] > 0.9999 and max(map(abs, fit["residuals"])) < 1e-3
    noisy = 2.5 * n**-0.45 + 0.12 + np.array([0.02, -0.02, 0.015, -0.01, 0.01, -0.015])
    rough = fit_power_law(n, noisy)
    assert 0.5 < rough["r2"] < 0.999
    assert np.allclose(np.array(rough["residuals"]), noisy - (rough["a"] * n ** -rough["b"] + rough["c"]))


def test_loglog_fit_and_too_few_scales():
    from laion_hf.reproduce import fit_loglog, fit_power_law

    n = np.array([100, 200, 400, 800], float)
    fit = fit_loglog(n, 3.0 * n**-0.3)
    assert fit["a"] == pytest.approx(3.0) and fit["b"] == pytest.approx(0.3) and fit["r2_log"] == pytest.approx(1.0)
    with pytest.raises(EvalError, match="at least 3 distinct scales"):
        fit_power_law([100, 100, 200], [0.5, 0.5, 0.4])


def test_table_needs_a_gap_beyond_the_spread():
    from laion_hf.reproduce import _table

    rows = [
        {"variant": v, "seed": s, "samples_seen": n, "err": e}
        for v, s, n, e in [
            ("unfiltered", 0, 100, 0.60),
            ("unfiltered", 1, 100, 0.64),
            ("filtered", 0, 100, 0.50),
            ("filtered", 1, 100, 0.52),
            ("unfiltered", 0, 200, 0.50),
            ("unfiltered", 1, 200, 0.56),
            ("filtered", 0, 200, 0.49),
            ("filtered", 1, 200, 0.53),
        ]
    ]
    table = _table(rows, None)
    assert table[0]["gap"] == pytest.approx(0.11) and table[0]["filtered_wins"]
    assert table[1]["gap"] == pytest.approx(0.02) and not table[1]["filtered_wins"]  # spread 0.06


def test_world_benchmark_layout(tmp_path):
    from laion_hf.eval import evaluate, load_eval_dataset, load_model
    from laion_hf.eval.worldbench import write_world_benchmark
    from laion_hf.world.attributes import ZERO_SHOT_LABELS, attributes

    sets = write_world_benchmark(tmp_path / "bench", 24, max_side=64, attributes=("colour", "position"))
    assert set(sets) == {"colour", "position", "retrieval"}
    colour = load_eval_dataset(str(sets["colour"]))
    assert colour.classnames == list(ZERO_SHOT_LABELS["colour"].values())
    assert colour.templates == ["a photo of a {c}"]
    samples = list(colour.samples())
    assert len(samples) == 24
    assert all(colour.classnames[s.label] == ZERO_SHOT_LABELS["colour"][attributes(s.key).colour] for s in samples)
    assert sorted(Counter(s.label for s in samples).values()) == [3] * 8  # balanced: 24 / 8 colours
    position = list(load_eval_dataset(str(sets["position"])).samples())
    assert len(position) == 24 and all(attributes(s.key).count == 1 for s in position)
    assert sorted(Counter(s.label for s in position).values()) == [4, 5, 5, 5, 5]
    retrieval = list(load_eval_dataset(str(sets["retrieval"])).samples())
    assert all(len(s.captions) == 4 for s in retrieval)
    got = evaluate(
        load_model("laion-hf-tiny", device="cpu"),
        str(sets["retrieval"]),
        recall_k=(1, 5),
        num_workers=1,
    )
    assert 0 <= got["metrics"]["text_retrieval_recall@1"] <= got["metrics"]["text_retrieval_recall@5"] <= 1


def test_balanced_sets_take_the_first_keys_of_each_class_and_unbalanced_the_first_keys(tmp_path, monkeypatch):
    from laion_hf.eval import load_eval_dataset
    from laion_hf.eval.worldbench import HELD_OUT_SEED, balanced_keys, write_world_benchmark
    from laion_hf.world.attributes import attributes, world_key

    keys = balanced_keys("count", 30)
    assert Counter(attributes(k).count for k in keys) == {1: 10, 2: 10, 3: 10}
    stream = [world_key(HELD_OUT_SEED, i) for i in range(400)]
    for c in (1, 2, 3):  # in key order: the first 10 of each class, no key skipped that was needed
        assert [k for k in keys if attributes(k).count == c] == [k for k in stream if attributes(k).count == c][:10]
    assert sorted(stream.index(k) for k in keys) == [stream.index(k) for k in keys]
    skewed = Counter(attributes(k).count for k in stream[:30])
    assert max(skewed.values()) > 10  # the world itself is skewed (60/25/15 %): balancing did something
    sets = write_world_benchmark(
        tmp_path / "b", 30, max_side=32, attributes=("count",), retrieval=False, balanced=False
    )
    assert [s.key for s in load_eval_dataset(str(sets["count"])).samples()] == stream[:30]
    from laion_hf.eval import worldbench

    monkeypatch.setattr(worldbench, "_classes", lambda a: ([1, 2, 3, 4], ["a", "b", "c", "d"]))  # 4 never drawn
    with pytest.raises(EvalError, match="'count' has classes too rare for 8 balanced images"):
        balanced_keys("count", 8)


def test_reproduce_defaults_are_one_set_and_the_student_is_a_shipped_config():
    import open_clip

    from laion_hf.cli import build_parser
    from laion_hf.clip.model import register_tiny_config, shipped_weights
    from laion_hf.reproduce import ReproduceConfig

    cfg = ReproduceConfig(work="w")
    args = build_parser().parse_args(["reproduce"])
    for name in ("pool", "noise", "batch_size", "lr", "warmup", "student", "teacher", "image_side", "eval_images"):
        assert getattr(args, name) == getattr(cfg, name), name
    assert tuple(args.scales) == tuple(cfg.scales) and tuple(args.seeds) == tuple(cfg.seeds)
    assert len(cfg.scales) >= 5 and len(cfg.seeds) >= 2 and list(cfg.scales) == sorted(cfg.scales)
    register_tiny_config()
    assert cfg.student in open_clip.list_models() and shipped_weights(cfg.student) is None  # trained from scratch
    assert open_clip.get_model_config(cfg.student)["vision_cfg"]["image_size"] == 32


def _fake_run(cfg, variant, seed, samples, bench):
    """A stand-in for a training run (module level: pickled into the worker processes)."""
    import os

    return {"variant": variant, "seed": seed, "samples_seen": samples, "err": 1.0 / samples, "pid": os.getpid()}


@pytest.mark.parametrize("parallel", [1, 2])
def test_all_runs_once_each_in_order_in_parallel_processes(tmp_path, parallel):
    import os

    from laion_hf.reproduce import ReproduceConfig, _run_all

    cfg = ReproduceConfig(work=str(tmp_path), scales=(64, 128, 256), seeds=(0, 1), parallel=parallel)
    lines = []
    rows = _run_all(cfg, [], lines.append, 0.0, run=_fake_run)
    want = [(n, s, v) for n in (64, 128, 256) for s in (0, 1) for v in ("unfiltered", "filtered")]
    assert [(r["samples_seen"], r["seed"], r["variant"]) for r in rows] == want
    assert len(lines) == 12 and all("err" in m for m in lines)
    pids = {r["pid"] for r in rows}
    assert (pids == {os.getpid()}) if parallel == 1 else (os.getpid() not in pids)


@pytest.mark.slow
def test_reproduce_end_to_end_writes_the_table_fits_and_plot_and_resumes(tmp_path, capsys, monkeypatch):
    """The real loop at toy size: the teacher filters the pool, a student trains per (scale, seed,
    variant), the table's means and gaps come from runs.csv, and a rerun trains nothing."""
    import csv
    import json

    from laion_hf.cli import main

    work = tmp_path / "w"
    argv = ["reproduce", "--work", str(work), "--pool", "256", "--scales", "64", "96", "128", "--seeds", "0", "1",
            "--eval-images", "24", "--parallel", "1", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "filtered beats unfiltered by more than the seed spread at every scale:" in out
    summary = json.loads((work / "fits.json").read_text())
    subsets = summary["subsets"]
    assert subsets["unfiltered"]["rows"] == 256 and 0 < subsets["filtered"]["rows"] < 256
    assert subsets["filtered"]["matched_fraction"] > subsets["unfiltered"]["matched_fraction"] + 0.2  # the teacher
    runs = list(csv.DictReader((work / "runs.csv").open()))
    assert len(runs) == 3 * 2 * 2 and {r["variant"] for r in runs} == {"unfiltered", "filtered"}
    table = list(csv.DictReader((work / "results.csv").open()))
    assert [int(r["samples_seen"]) for r in table] == [64, 96, 128]
    for line in table:
        for v in ("unfiltered", "filtered"):
            errs = [float(r["err"]) for r in runs if r["variant"] == v and r["samples_seen"] == line["samples_seen"]]
            assert float(line[f"{v}_err"]) == pytest.approx(np.mean(errs))
            assert float(line[f"{v}_spread"]) == pytest.approx(max(errs) - min(errs))
        gap = float(line["unfiltered_err"]) - float(line["filtered_err"])
        wins = gap > max(float(line["unfiltered_spread"]), float(line["filtered_spread"]))
        assert line["filtered_wins"] == str(wins)
    for v in ("unfiltered", "filtered"):
        fit = summary["fits"][v]
        assert len(fit["power_law"]["residuals"]) == 3 and "r2_log" in fit["loglog"]
    assert (work / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import laion_hf.train

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(laion_hf.train, "train", no_training)
    assert main(argv) == 0
    assert json.loads((work / "fits.json").read_text())["table"] == summary["table"]
    capsys.readouterr()
    assert main([*argv, "--noise", "0.4", "--lr", "0.01"]) == 1  # other settings: refused, nothing mixed
    err = capsys.readouterr().err
    assert "noise 0.5 there, 0.4 now" in err and "lr 0.002 there, 0.01 now" in err and "another --work" in err
    assert json.loads((work / "fits.json").read_text())["table"] == summary["table"]


def test_a_work_folder_from_before_the_settings_record_is_refused(tmp_path, capsys):
    from laion_hf.cli import main

    (tmp_path / "old" / "runs" / "filtered_n64_s0").mkdir(parents=True)
    assert main(["reproduce", "--work", str(tmp_path / "old")]) == 1
    assert "without a settings record" in capsys.readouterr().err
    assert not (tmp_path / "old" / "settings.json").exists() and not (tmp_path / "old" / "data").exists()

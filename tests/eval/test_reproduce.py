"""The research loop's parts: the power-law fits recover known curves, the world's held-out
benchmark is written in CLIP_benchmark's layout with the ground truth as labels, and the
results table marks a variant as better only beyond the seed spread."""

from __future__ import annotations

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
    position = list(load_eval_dataset(str(sets["position"])).samples())
    assert 0 < len(position) < 24 and all(attributes(s.key).count == 1 for s in position)
    retrieval = list(load_eval_dataset(str(sets["retrieval"])).samples())
    assert all(len(s.captions) == 4 for s in retrieval)
    got = evaluate(
        load_model("laion-hf-tiny", device="cpu"),
        str(sets["retrieval"]),
        recall_k=(1, 5),
        num_workers=1,
    )
    assert 0 <= got["metrics"]["text_retrieval_recall@1"] <= got["metrics"]["text_retrieval_recall@5"] <= 1


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

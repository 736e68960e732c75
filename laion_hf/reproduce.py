"""LAION's research loop in miniature, on the embedded world: filter → train → evaluate → scaling law.

1. From the world's noisy metadata (``world_rows(pool, noise=...)``, images rendered small),
   the teacher CLIP scores every pair; the *unfiltered* subset is the whole pool, the
   *filtered* subset keeps ``clip_similarity >= threshold`` (the teacher's threshold).
2. A student open_clip model is trained from scratch on each subset, as shards read by
   laion-hf's loader, at several budgets of samples seen (equal for both variants), with
   several seeds.
3. Each run is evaluated zero-shot on the world's held-out benchmark (CLIP_benchmark layout);
   the error is ``1 - mean acc1`` over the attribute sets.
4. Per variant, ``err(N) = a · N^(-b) + c`` is fitted (numpy: a grid over ``b``, least squares
   for ``a`` and ``c``), with R² and residuals, beside the two-parameter fit ``log err = log a - b
   log N``; a CSV table, a JSON summary and a log-log plot are written.

Every step is resumable: rerunning skips finished subsets, runs and evaluations. The work
folder records the settings the numbers depend on and refuses others (more scales or seeds
may be added).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laion_hf._util.atomic import atomic_write_json
from laion_hf._util.settings import settings_changes
from laion_hf.errors import EvalError

__all__ = ["SETTINGS", "VARIANTS", "ReproduceConfig", "check_settings", "fit_loglog", "fit_power_law", "reproduce"]

VARIANTS = ("unfiltered", "filtered")


@dataclass
class ReproduceConfig:
    """Sizes of the miniature study. The defaults (measured on 2 CPU cores, see the README):

    - a pool of 4096 world pairs, half of them noisy: LAION's own CLIP filter kept well under half
      of Common Crawl's pairs, and at 30 % noise the filtered lead stayed inside the seed spread;
    - the student ``laion-hf-world-32``, the teacher's architecture at 32 px: the image tower's
      random stem decides how early a seed learns object colour, and at 32 px a sample costs half
      of one at 64 px (``benchmarks/train.py``: 612 vs 306 samples/s), so the study can start at
      3072 samples (other seeds can still be slower: see the README);
    - 5 scales from 3072 to 24576 samples seen (ratio ~1.68), 2 seeds, batch 32, lr 2e-3 with a
      60-step warm-up and a cosine decay per run (lr 1e-3 learnt colour later on every seed; 3e-3
      froze some seeds at chance);
    - 600 class-balanced held-out images per attribute set (balanced: the error of a run that
      learnt nothing of an attribute does not swing with the class it happens to prefer).

    ``parallel``: training runs at a time (separate processes; 1 runs them in this process)."""

    work: str
    pool: int = 4096
    noise: float = 0.5
    world_seed: int = 0
    scales: Sequence[int] = (3072, 5152, 8704, 14624, 24576)
    seeds: Sequence[int] = (0, 1)
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 60
    student: str = "laion-hf-world-32"
    teacher: str = "laion-hf-world"
    teacher_pretrained: str | None = None
    threshold: float | None = None
    image_side: int = 80
    eval_images: int = 600
    eval_attributes: Sequence[str] = ("colour", "shape", "count", "size", "background")
    workers: int = 1
    threads: int | None = 1
    parallel: int = 2
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


Emit = Callable[[str], None]

#: what a study's numbers depend on; scales and seeds may grow, and where or how fast it runs
#: (workers, threads, parallel, device) may change, in a work folder that already holds runs
SETTINGS = ("pool", "noise", "world_seed", "batch_size", "lr", "warmup", "student", "teacher",
            "teacher_pretrained", "threshold", "image_side", "eval_images", "eval_attributes", "extra")  # fmt: skip


def check_settings(cfg: ReproduceConfig) -> None:
    """Record ``cfg``'s :data:`SETTINGS` in ``work/settings.json``, or refuse a work folder whose
    subsets, benchmark or runs were made with other settings (resuming would mix them)."""
    work = Path(cfg.work)
    path = work / "settings.json"
    mine = json.loads(json.dumps({k: getattr(cfg, k) for k in SETTINGS}))  # tuples as lists, as stored
    if path.exists():
        said = settings_changes(json.loads(path.read_text()), mine, SETTINGS)
        if said:
            raise EvalError(f"{work} holds a study made with other settings ({said}); "
                            "use another --work folder or the same settings to resume")  # fmt: skip
        return
    if any((work / p).exists() for p in ("data/subsets.json", "bench/done.json", "runs")):
        raise EvalError(f"{work} holds a study without a settings record (from an older laion-hf); "
                        "use another --work folder")  # fmt: skip
    atomic_write_json(path, mine, indent=1)


# ---------------------------------------------------------------- 1. subsets
def _teacher_threshold(cfg: ReproduceConfig) -> float:
    if cfg.threshold is not None:
        return float(cfg.threshold)
    try:
        from laion_hf.world.teacher import teacher_threshold
    except ImportError as e:
        raise EvalError("no teacher threshold: the world teacher is not installed; pass threshold=") from e
    return teacher_threshold()


def _pool_table(cfg: ReproduceConfig) -> Any:
    """The world's noisy pool with rendered images and the teacher's ``clip_similarity``."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from laion_hf.clip.stream import embed_table
    from laion_hf.eval.zeroshot import load_model
    from laion_hf.schema import IMAGE_STRUCT
    from laion_hf.world import render, world_rows

    rows = world_rows(cfg.pool, seed=cfg.world_seed, noise=cfg.noise)
    keys = rows["key"].to_pylist()
    with ThreadPoolExecutor(2) as pool:
        images = list(pool.map(lambda k: render(k, cfg.image_side), keys))
    table = rows.append_column("image", pa.array([{"bytes": b, "path": None} for b in images], IMAGE_STRUCT))
    table = table.append_column("status", pa.array(["success"] * len(keys)))
    teacher = load_model(cfg.teacher, cfg.teacher_pretrained, device=cfg.device, precision="fp32", batch_size=256)
    if teacher.weights_source == "random init":
        raise EvalError(f"teacher {cfg.teacher!r} has no weights on this machine (random init would filter "
                        "at random); use the world teacher laion-hf-world or pass trained weights")  # fmt: skip
    return embed_table(table, teacher, draft=False)


def build_subsets(cfg: ReproduceConfig, emit: Emit) -> dict[str, Any]:
    """Write ``work/data/{unfiltered,filtered}`` shards (skipped when done); returns their stats."""
    import pyarrow.compute as pc

    from laion_hf.shards import write_shards

    data = Path(cfg.work) / "data"
    done = data / "subsets.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    table = _pool_table(cfg)
    threshold = _teacher_threshold(cfg)
    keep = pc.fill_null(pc.greater_equal(table["clip_similarity"], threshold), False)
    subsets = {"unfiltered": table, "filtered": table.filter(keep)}
    cols = ["key", "caption", "image", "status"]
    stats: dict[str, Any] = {"threshold": threshold, "pool": table.num_rows, "noise": cfg.noise}
    for name, t in subsets.items():
        write_shards(t.select(cols), data / name, max_shard_rows=1024, progress=False, overwrite=True)
        matched = t["matched"].to_numpy(zero_copy_only=False)
        stats[name] = {"rows": t.num_rows, "matched_fraction": float(matched.mean()) if len(matched) else 0.0,
                       "path": str(data / name)}  # fmt: skip
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(done, stats, indent=1)  # the step's completion marker: whole or absent
    emit(f"subsets: pool {table.num_rows} pairs ({cfg.noise:.0%} noisy), teacher threshold {threshold:.3f}: "
         f"filtered keeps {stats['filtered']['rows']} ({stats['filtered']['matched_fraction']:.1%} matched) "
         f"vs unfiltered {stats['unfiltered']['matched_fraction']:.1%} matched [{stats['seconds']} s]")  # fmt: skip
    return stats


# ---------------------------------------------------------------- 2-3. runs
def _bench(cfg: ReproduceConfig, emit: Emit) -> list[str]:
    from laion_hf.eval.worldbench import write_world_benchmark

    root = Path(cfg.work) / "bench"
    marker = root / "done.json"
    if not marker.exists():
        sets = write_world_benchmark(root, cfg.eval_images, max_side=cfg.image_side,
                                     attributes=cfg.eval_attributes)  # fmt: skip
        marker.write_text(json.dumps({k: str(v) for k, v in sets.items()}))
        emit(f"benchmark: {cfg.eval_images} held-out images -> {root} ({', '.join(sets)})")
    return [str(root / a) for a in cfg.eval_attributes]


def _run_one(cfg: ReproduceConfig, variant: str, seed: int, samples: int, bench: list[str]) -> dict[str, Any]:
    from laion_hf.train import TrainConfig, read_log, train

    out = Path(cfg.work) / "runs" / f"{variant}_n{samples}_s{seed}"
    steps = max(1, samples // cfg.batch_size)
    done = [r for r in read_log(out / "log.jsonl") if "eval" in r and r["step"] == steps]
    if not done:
        tc = TrainConfig(data=str(Path(cfg.work) / "data" / variant), out=str(out), model=cfg.student,
                         batch_size=cfg.batch_size, workers=cfg.workers, steps=steps, epochs=1, lr=cfg.lr,
                         warmup=min(cfg.warmup, steps // 2), seed=seed, save_every=max(steps, 1),
                         log_every=max(1, steps // 4), eval_sets=bench, device=cfg.device, threads=cfg.threads,
                         buffer_size=1000)  # fmt: skip
        train(tc)
        done = [r for r in read_log(out / "log.jsonl") if "eval" in r and r["step"] == steps]
    metrics = done[-1]["eval"]
    acc = {name: m["acc1"] for name, m in metrics.items()}
    return {
        "variant": variant,
        "seed": seed,
        "samples_seen": steps * cfg.batch_size,
        "steps": steps,
        "err": 1.0 - float(np.mean(list(acc.values()))),
        **{f"acc1_{k}": v for k, v in acc.items()},
    }


def _run_all(
    cfg: ReproduceConfig, bench: list[str], emit: Emit, t0: float, run: Callable[..., dict[str, Any]] = _run_one
) -> list[dict[str, Any]]:
    """Every (scale, seed, variant) run of ``run`` (a module-level function: it is pickled into
    the worker processes), ``cfg.parallel`` at a time (largest first, so the processes finish
    together); rows in (scale, seed, variant) order."""
    jobs = [(variant, seed, samples) for samples in cfg.scales for seed in cfg.seeds for variant in VARIANTS]

    def report(r: dict[str, Any]) -> None:
        emit(f"{r['variant']:>10} N={r['samples_seen']:>6} seed {r['seed']}: err {r['err']:.4f} "
             f"[{time.perf_counter() - t0:.0f} s]")  # fmt: skip

    done: dict[tuple[str, int, int], dict[str, Any]] = {}
    if cfg.parallel <= 1:
        for job in jobs:
            done[job] = run(cfg, *job, bench)
            report(done[job])
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(cfg.parallel, mp_context=ctx) as pool:
            futures = {pool.submit(run, cfg, *job, bench): job for job in sorted(jobs, key=lambda j: -j[2])}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                report(done[futures[fut]])
    return [done[job] for job in jobs]


# ---------------------------------------------------------------- 4. fits
def _fit_at(x: np.ndarray, y: np.ndarray, b: float) -> tuple[float, float, float]:
    """Least squares of ``y = a · x^(-b) + c`` for a fixed ``b`` with ``a >= 0``, ``0 <= c <= min(y)``."""
    z = x**-b
    (a, c), *_ = np.linalg.lstsq(np.stack([z, np.ones_like(z)], axis=1), y, rcond=None)
    if c < 0 or c > y.min():
        c = float(np.clip(c, 0.0, y.min()))
        a = float(np.dot(z, y - c) / np.dot(z, z))
    a = max(0.0, float(a))
    return float(np.sum((a * z + c - y) ** 2)), a, float(c)


def fit_power_law(n: Sequence[float], err: Sequence[float]) -> dict[str, Any]:
    """Least-squares ``err = a · n^(-b) + c`` (``a, b, c >= 0``, ``c <= min(err)``): a coarse
    then a fine grid over ``b``, linear least squares in ``(a, c)`` for each. Returns the
    parameters, R² and the residuals (measured - fitted)."""
    x, y = np.asarray(n, np.float64), np.asarray(err, np.float64)
    if len(np.unique(x)) < 3:
        raise EvalError("a three-parameter power law needs at least 3 distinct scales")
    grid = np.linspace(0.0, 3.0, 301)[1:]
    best_b = min(grid, key=lambda b: _fit_at(x, y, b)[0])
    fine = np.linspace(max(1e-4, best_b - 0.01), best_b + 0.01, 201)
    b = float(min(fine, key=lambda bb: _fit_at(x, y, bb)[0]))
    sse, a, c = _fit_at(x, y, b)
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"a": a, "b": b, "c": c, "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
            "residuals": (y - (a * x**-b + c)).tolist()}  # fmt: skip


def fit_loglog(n: Sequence[float], err: Sequence[float]) -> dict[str, Any]:
    """Two-parameter fit ``log err = log a - b log n`` (a line in log-log space)."""
    lx, ly = np.log(np.asarray(n, np.float64)), np.log(np.asarray(err, np.float64))
    slope, icpt = np.polyfit(lx, ly, 1)
    pred = icpt + slope * lx
    sst = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum((ly - pred) ** 2)) / sst if sst > 0 else float("nan")
    return {
        "a": float(np.exp(icpt)),
        "b": float(-slope),
        "r2_log": r2,
        "residuals_log": (ly - pred).tolist(),
    }


def _fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for v in VARIANTS:
        pts = [(r["samples_seen"], r["err"]) for r in rows if r["variant"] == v]
        scales = sorted({nn for nn, _ in pts})
        means = [float(np.mean([ee for nn, ee in pts if nn == s])) for s in scales]
        out[v] = {"power_law": fit_power_law(scales, means), "loglog": fit_loglog(scales, means),
                  "scales": scales, "mean_err": means}  # fmt: skip
    return out


# ---------------------------------------------------------------- report
def _table(rows: list[dict[str, Any]], cfg: ReproduceConfig) -> list[dict[str, Any]]:
    """Per scale: mean and spread (max - min over seeds) of the error of each variant."""
    out = []
    for s in sorted({r["samples_seen"] for r in rows}):
        line: dict[str, Any] = {"samples_seen": s}
        for v in VARIANTS:
            errs = [r["err"] for r in rows if r["variant"] == v and r["samples_seen"] == s]
            line[f"{v}_err"] = float(np.mean(errs))
            line[f"{v}_spread"] = float(np.max(errs) - np.min(errs))
        gap = line["unfiltered_err"] - line["filtered_err"]
        line["gap"] = gap
        line["filtered_wins"] = bool(gap > max(line["unfiltered_spread"], line["filtered_spread"]))
        out.append(line)
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, rows: list[dict[str, Any]], fits: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for v, colour in zip(VARIANTS, ("tab:red", "tab:blue")):
        pts = [(r["samples_seen"], r["err"]) for r in rows if r["variant"] == v]
        ax.scatter(*zip(*pts), color=colour, alpha=0.5, s=14)
        f = fits[v]["power_law"]
        xs = np.geomspace(min(fits[v]["scales"]), max(fits[v]["scales"]), 100)
        ax.plot(xs, f["a"] * xs ** -f["b"] + f["c"], color=colour,
                label=f"{v}: {f['a']:.2f}·N^-{f['b']:.2f} + {f['c']:.2f} (R² {f['r2']:.3f})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    scales = fits[VARIANTS[0]]["scales"]
    ax.set_xticks(scales, [str(s) for s in scales])
    ax.xaxis.set_minor_formatter(NullFormatter())
    errs = [r["err"] for r in rows]
    ax.set_yticks(ticks := np.round(np.geomspace(min(errs), max(errs), 5), 3), [f"{t:.3f}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("samples seen N")
    ax.set_ylabel("zero-shot error (1 - mean acc1)")
    ax.set_title("world: teacher-filtered vs unfiltered training data")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reproduce(cfg: ReproduceConfig, emit: Emit | None = None) -> dict[str, Any]:
    """Run the whole loop (see module docs); writes ``work/results.csv``, ``work/runs.csv``,
    ``work/fits.json`` and ``work/scaling.png`` and returns the summary."""
    emit = emit or (lambda _msg: None)
    t0 = time.perf_counter()
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    subsets = build_subsets(cfg, emit)
    bench = _bench(cfg, emit)
    rows = _run_all(cfg, bench, emit, t0)
    fits = _fits(rows)
    table = _table(rows, cfg)
    _write_csv(work / "runs.csv", rows)
    _write_csv(work / "results.csv", table)
    _plot(work / "scaling.png", rows, fits)
    summary = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
               "subsets": subsets, "table": table, "fits": fits,
               "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (work / "fits.json").write_text(json.dumps(summary, indent=1))
    return summary

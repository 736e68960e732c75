"""``laion-hf reproduce``: LAION's research loop in miniature on the embedded world."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``reproduce`` verb to ``laion-hf`` (its defaults are :class:`ReproduceConfig`'s)."""
    from dataclasses import fields

    from laion_hf.reproduce import ReproduceConfig

    d = {f.name: f.default for f in fields(ReproduceConfig)}
    p = sub.add_parser(
        "reproduce",
        help="filter -> train -> zero-shot eval -> scaling law, in miniature on the embedded world",
        description="From the world's noisy metadata, build an unfiltered and a teacher-filtered subset, "
        "train a student open_clip model on each at several budgets of samples seen (equal for both) and "
        "seeds, evaluate zero-shot on held-out world sets (CLIP_benchmark layout), fit err(N) = a*N^-b + c "
        "per variant, and write WORK/results.csv, runs.csv, fits.json and scaling.png. Rerunning resumes "
        "(with the same settings; more --scales or --seeds may be added).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--work", default="laion-hf-reproduce", help="work folder (data, bench, runs, results)")
    p.add_argument("--pool", type=int, default=d["pool"], help="world pairs scored by the teacher")
    p.add_argument("--noise", type=float, default=d["noise"], help="fraction of noisy pairs in the world")
    p.add_argument("--scales", type=int, nargs="+", default=list(d["scales"]), help="samples seen")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=list(d["seeds"]), help="training seeds (model init and data order)"
    )
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="samples per step")
    p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="linear warm-up steps (at most half a run)")
    p.add_argument("--student", default=d["student"], help="open_clip config trained from scratch")
    p.add_argument("--teacher", default=d["teacher"],
                   help="the filtering CLIP: a model with weights, or a laion-hf train checkpoint")  # fmt: skip
    p.add_argument("--teacher-pretrained", default=None, help="the teacher's weights file (default: shipped)")
    p.add_argument("--threshold", type=float, default=None, help="similarity cut (default: the teacher's)")
    p.add_argument("--image-side", type=int, default=d["image_side"], help="long side of the rendered images")
    p.add_argument("--eval-images", type=int, default=d["eval_images"], help="held-out images per benchmark set")
    p.add_argument("--workers", type=int, default=d["workers"], help="DataLoader workers per run")
    p.add_argument(
        "--parallel", type=int, default=d["parallel"], help="training runs at a time (processes, 1 thread each)"
    )
    p.add_argument("--device", default=d["device"], help="auto: the first GPU, else the CPU")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from laion_hf.reproduce import ReproduceConfig, reproduce

    cfg = ReproduceConfig(
        work=args.work, pool=args.pool, noise=args.noise, scales=tuple(args.scales), seeds=tuple(args.seeds),
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, student=args.student, teacher=args.teacher,
        teacher_pretrained=args.teacher_pretrained,
        threshold=args.threshold, image_side=args.image_side, eval_images=args.eval_images,
        workers=args.workers, parallel=args.parallel, device=args.device,
    )  # fmt: skip
    s = reproduce(cfg, emit=lambda m: print(m, flush=True))
    print("\nsamples_seen  unfiltered_err (spread)  filtered_err (spread)  gap  filtered beats spread")
    for r in s["table"]:
        print(f"{r['samples_seen']:>12}  {r['unfiltered_err']:.4f} ({r['unfiltered_spread']:.4f})"
              f"        {r['filtered_err']:.4f} ({r['filtered_spread']:.4f})      "
              f"{r['gap']:+.4f}  {'yes' if r['filtered_wins'] else 'NO'}")  # fmt: skip
    for v, f in s["fits"].items():
        pl, ll = f["power_law"], f["loglog"]
        res = ", ".join(f"{x:+.4f}" for x in pl["residuals"])
        print(f"{v}: err = {pl['a']:.4f}·N^-{pl['b']:.3f} + {pl['c']:.4f}  R² {pl['r2']:.3f}  residuals [{res}]; "
              f"log-log: {ll['a']:.3f}·N^-{ll['b']:.3f} R²(log) {ll['r2_log']:.3f}")  # fmt: skip
    wins = all(r["filtered_wins"] for r in s["table"])
    print(
        f"filtered beats unfiltered by more than the seed spread at every scale: {'yes' if wins else 'no'}; "
        f"total {s['seconds']:.0f} s -> {args.work}/results.csv, scaling.png"
    )
    return 0

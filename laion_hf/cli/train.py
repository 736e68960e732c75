"""``laion-hf train``: contrastive open_clip training on published shards, zero-shot eval every N steps."""

from __future__ import annotations

import argparse
import math
from typing import Any

_EPILOG = """examples:
  laion-hf train --data ./laion-demo-shards --out run --steps 200 --eval ./bench/colour --eval-every 50
  laion-hf train --data laion/my-subset --model ViT-B-32 --batch-size 256 --workers 8 --out run \\
      --samples-per-epoch 2000000 --epochs 10 --eval wds/cifar10 --eval-every 1000
  # after a crash or kill -9: the same command continues from run/checkpoints/latest.pt
  laion-hf eval --model run/checkpoints/latest.pt --dataset ./bench/colour
"""


def register(sub: Any) -> None:
    """Add the ``train`` verb to ``laion-hf``."""
    p = sub.add_parser(
        "train",
        help="train an open_clip model on shards, with zero-shot evaluation and resumable checkpoints",
        description="Contrastive training of an open_clip model from parquet or webdataset shards "
        "(a local folder/glob or a Hub dataset repo) with laion-hf's loader. Writes OUT/log.jsonl "
        "(loss, lr, samples seen, zero-shot metrics) and OUT/checkpoints/latest.pt (model, optimizer, "
        "scheduler, loader position); rerunning the same command resumes where it stopped.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="shard folder / file / glob, or a Hub dataset repo id")
    p.add_argument("--data-config", default=None, help="config of a repo or folder holding several")
    p.add_argument("--out", required=True, help="run folder (log.jsonl, checkpoints/)")
    p.add_argument("--model", default="laion-hf-tiny", help="open_clip model name")
    p.add_argument("--pretrained", default=None, help="initial weights: a tag or a file (offline)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="stop after this many steps in total (0: run the epochs)",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--samples-per-epoch", type=int, default=None, help="resample: samples per epoch")
    p.add_argument("--buffer-size", type=int, default=2000, help="shuffle buffer rows per worker")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (then cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--eval", nargs="+", default=[], metavar="DATASET", help="zero-shot sets (as laion-hf eval)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end only)")
    p.add_argument("--eval-precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.set_defaults(func=_run)


def _line(record: dict[str, Any]) -> str:
    if "eval" in record:
        parts = [f"{name}: " + " ".join(f"{k} {v:.4f}" for k, v in m.items() if not math.isnan(v))
                 for name, m in record["eval"].items()]  # fmt: skip
        return f"step {record['step']} eval " + "; ".join(parts)
    if record.get("event") == "resumed":
        return f"resumed at step {record['step']}, epoch {record['epoch']}"
    return (f"step {record['step']} epoch {record['epoch']} loss {record['loss']:.4f} lr {record['lr']:.2e} "
            f"samples {record['samples_seen']}")  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from laion_hf.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, model=args.model, pretrained=args.pretrained, data_config=args.data_config,
        batch_size=args.batch_size, workers=args.workers, steps=args.steps, epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch, buffer_size=args.buffer_size, lr=args.lr, wd=args.wd,
        warmup=args.warmup, seed=args.seed, save_every=args.save_every, log_every=args.log_every,
        eval_sets=list(args.eval), eval_every=args.eval_every, eval_precision=args.eval_precision,
        device=args.device, threads=args.threads,
    )  # fmt: skip
    summary = train(cfg, on_record=lambda r: print(_line(r), flush=True))
    print(f"done: step {summary['step']}, {summary['samples_seen']} samples -> {summary['checkpoint']}")
    return 0

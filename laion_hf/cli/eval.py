"""``laion-hf eval``: zero-shot evaluation (CLIP_benchmark-compatible), and ``laion-hf eval build``."""

from __future__ import annotations

import argparse
import math
from typing import Any

_EPILOG = """examples:
  laion-hf eval --model ViT-B-32 --pretrained laion2b_s34b_b79k --dataset wds/cifar10 --out results
  laion-hf eval --model ckpt.pt --dataset ./world-bench/colour ./world-bench/retrieval --out results
  laion-hf eval --model laion-hf-tiny --dataset org/my-images --label-column label --templates t.txt
  laion-hf eval build results/*.json --out table.csv
"""


def register(sub: Any) -> None:
    """Add the ``eval`` verb (and ``eval build``) to ``laion-hf``."""
    p = sub.add_parser(
        "eval",
        help="zero-shot classification / retrieval of open_clip models (CLIP_benchmark-compatible)",
        description="Evaluate open_clip models zero-shot on datasets in CLIP_benchmark's layout "
        "(a folder, hf://datasets/org/name, or wds/NAME for clip-benchmark/wds_NAME) or any Hugging "
        "Face dataset with an image column and a label or caption column. Writes one JSON per "
        "(model, dataset, task) in CLIP_benchmark's shape.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", nargs="+", default=None,
                   help="open_clip model name(s), hf-hub:org/name, local-dir:/folder, or a laion-hf train checkpoint")  # fmt: skip
    p.add_argument("--pretrained", default=None, help="a pretrained tag or a weights file (one model)")
    p.add_argument(
        "--dataset",
        nargs="+",
        default=None,
        help="dataset folder(s), hf:// paths, wds/NAME, repo ids",
    )
    p.add_argument("--task", default="auto", choices=["auto", "zeroshot_classification", "zeroshot_retrieval"])
    p.add_argument("--split", default="test")
    p.add_argument("--image-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--caption-column", default=None)
    p.add_argument("--classnames", default=None, help="class names file (one per line)")
    p.add_argument("--templates", default=None, help="templates file ({c} = class name) or a built-in set: simple, clip-short")  # fmt: skip
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="fp16/bf16: autocast (changes the numbers; CLIP_benchmark's --amp)")  # fmt: skip
    p.add_argument("--ties", default="index", choices=["index", "topk"],
                   help="equal scores: lower index first (same on every device), or torch.topk as CLIP_benchmark")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None, help="image decoding threads")
    p.add_argument("--allow-download", action="store_true", help="let open_clip download missing weights")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder to find weights in")
    p.add_argument("--out", default=".", help="folder for the result JSON files")
    p.add_argument("--output", default="{dataset}_{pretrained}_{model}_{language}_{task}.json",
                   help="file name template (CLIP_benchmark's)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    sub2 = p.add_subparsers(dest="eval_command", metavar="build")
    b = sub2.add_parser("build", help="one CSV table from result JSON files")
    b.add_argument("files", nargs="+", help="result JSON files or folders")
    b.add_argument("--out", required=True, help="CSV file to write")
    b.set_defaults(func=_run_build)
    p.set_defaults(func=_run_eval)


def _run_build(args: argparse.Namespace) -> int:
    from laion_hf.eval import build_table, write_table

    rows = build_table(args.files)
    write_table(rows, args.out)
    print(f"{len(rows)} result(s) -> {args.out}")
    return 0


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {'nan' if math.isnan(v) else f'{v:.4f}'}" for k, v in metrics.items())


def _run_eval(args: argparse.Namespace) -> int:
    from laion_hf.errors import EvalError
    from laion_hf.eval import evaluate, load_eval_dataset, load_model, write_result

    if not args.model or not args.dataset:
        raise EvalError("give --model and --dataset (or `laion-hf eval build FILES --out table.csv`)")
    if args.pretrained and len(args.model) > 1:
        raise EvalError("--pretrained goes with one --model; pass checkpoints as --model FILE")
    datasets = [load_eval_dataset(d, task=args.task, split=args.split, classnames=args.classnames,
                                  templates=args.templates, image_column=args.image_column,
                                  label_column=args.label_column, caption_column=args.caption_column)
                for d in args.dataset]  # fmt: skip
    for name in args.model:
        embedder = load_model(name, args.pretrained, device=args.device, precision=args.precision,
                              batch_size=args.batch_size, cache_dir=args.cache_dir,
                              allow_download=args.allow_download)  # fmt: skip
        for ds in datasets:
            result = evaluate(embedder, ds, recall_k=args.recall_k, num_workers=args.num_workers,
                              progress=not args.no_progress, ties=args.ties)  # fmt: skip
            path = write_result(result, args.out, args.output)
            print(f"{ds.name} {ds.task} {name}: {_format(result['metrics'])} -> {path}")
    return 0

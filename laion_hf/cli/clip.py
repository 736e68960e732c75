"""``laion-hf embed``: CLIP embeddings of image shards in clip-retrieval's layout."""

from __future__ import annotations

import argparse
from typing import Any

from laion_hf.cli import _args as A
from laion_hf.cli._options import add_engine_arguments, engine_call
from laion_hf.clip.embed import embed_shards
from laion_hf.errors import LaionHFError


def register(sub: Any) -> None:
    """Add the ``embed`` verb to ``laion-hf``."""
    p = sub.add_parser(
        "embed",
        help="CLIP embeddings of image shards (img2dataset tars or parquet) in clip-retrieval's layout",
        description="Embed images and captions of existing shards with an open_clip model and write "
        "OUT/img_emb/img_emb_{N}.npy, OUT/text_emb/text_emb_{N}.npy and OUT/metadata/metadata_{N}.parquet "
        "(row-aligned, one part per input shard; autofaiss / embedding-reader read them). Re-running "
        "resumes: finished parts are skipped. Weights are resolved offline (HF cache, a file, local-dir:).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SHARDS_OR_SOURCE",
                   help="tar/parquet shards, folders holding them, or globs")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="laion-hf-tiny",
                   help="open_clip model name, hf-hub:org/name or local-dir:/folder (laion-hf-tiny: random-init test model)")  # fmt: skip
    p.add_argument("--pretrained", default=None,
                   help="weights: a tag (e.g. laion2b_s34b_b79k, openai) found in the HF cache, or a checkpoint file")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument(
        "--batch-size", type=A.positive_int, default=None, help="images per forward pass (256 on GPU, 32 on CPU)"
    )
    p.add_argument("--head", action="append", default=[], metavar="SPEC",
                   help="score head: aesthetic_v1[:vit_b_32|vit_b_16|vit_l_14], aesthetic_v2:PATH, nsfw:PATH (repeatable)")  # fmt: skip
    p.add_argument(
        "--dtype", default="float16", choices=["float16", "float32"], help="embedding dtype in the .npy files"
    )
    p.add_argument("--num-workers", type=A.positive_int, default=None, help="image decoding threads")
    p.add_argument("--allow-download", action="store_true", help="let open_clip download missing weights")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder to find weights in")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_engine_arguments(p)
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    try:
        run = engine_call(args, embed_shards, "embed")  # the local function, or its Ray Data twin
        totals = run(
            args.sources, args.out, model=args.model, pretrained=args.pretrained, device=args.device,
            precision=args.precision, batch_size=args.batch_size, heads=args.head, dtype=args.dtype,
            num_workers=args.num_workers, allow_download=args.allow_download, cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )  # fmt: skip
    except ImportError as e:
        raise LaionHFError(f"`laion-hf embed` needs the clip extra: pip install 'laion-hf[clip]' ({e})") from e
    from laion_hf.provenance import write_embed_provenance

    write_embed_provenance(args.out, args.sources, totals)  # inputs' record + CLIP model + embed counts
    print(
        f"embedded {totals['embedded']}/{totals['count']} rows in {totals['parts'] - totals['parts_skipped']} part(s) "
        f"({totals['parts_skipped']} already done) -> {args.out}; failed {totals['failed']}; "
        f"{totals['images_per_second']:.1f} images/s; statuses {totals['status_dict']}"
    )
    return 0

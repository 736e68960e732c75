"""Options shared by several verbs: metadata selection, engine, CLIP model; and the engine
dispatch (the local stage driver or its Ray twin)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable

import numpy as np

from laion_hf.cli import _args as A
from laion_hf.errors import KnnIndexError
from laion_hf.filters import PRESETS


def add_load_arguments(p) -> None:
    """The metadata-selection options shared by every command that reads LAION metadata."""
    p.add_argument(
        "--where",
        action="append",
        metavar="EXPR",
        help='filter expression, e.g. "similarity >= 0.28 and punsafe < 0.1" (repeatable, ANDed)',
    )
    p.add_argument(
        "--preset", action="append", metavar="NAME", help=f"LAION subset preset (repeatable): {', '.join(PRESETS)}"
    )
    p.add_argument(
        "--blocklist",
        action="append",
        metavar="FILE",
        help="text file of MD5/SHA-256 hex digests to remove (repeatable)",
    )
    p.add_argument("--blocklist-column", default="url", help="column whose digest is matched (default url)")
    p.add_argument("--sample", type=A.fraction, help="keep this fraction of rows, chosen by a hash of the key")
    p.add_argument("--columns", help="comma-separated output columns (default: all)")
    p.add_argument("--release", help="release name (default: detected from the columns)")
    add_on_error_argument(p)


def add_on_error_argument(p: argparse.ArgumentParser) -> None:
    """``--on-error`` of the verbs that read metadata (read back with :func:`on_error_from_args`)."""
    p.add_argument(
        "--on-error",
        choices=["raise", "skip", "warn"],
        default="raise",
        help="what to do with an unreadable file: raise (default) or skip it, counted and logged "
        "(warn: deprecated spelling of skip)",
    )


def on_error_from_args(args: argparse.Namespace) -> str:
    """``--on-error``, with the deprecated ``warn`` mapped to ``skip`` and said once on stderr."""
    if args.on_error == "warn":
        print(
            f"laion-hf {args.command}: --on-error warn is deprecated, use --on-error skip (it also logs)",
            file=sys.stderr,
        )
        return "skip"
    return args.on_error


def load_kwargs_from_args(args) -> dict[str, Any]:
    """Turn :func:`add_load_arguments` options into :func:`laion_hf.load_laion` keyword arguments."""
    return {
        "where": args.where,
        "preset": args.preset,
        "blocklist": args.blocklist,
        "blocklist_column": args.blocklist_column,
        "sample": args.sample,
        "columns": args.columns.split(",") if args.columns else None,
        "release": args.release,
        "on_error": on_error_from_args(args),
    }


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--engine local|ray``, ``--address`` and ``--ray-workers`` for a verb."""
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="run on this machine (local, default) or on Ray Data (ray; pip install 'laion-hf[ray]')",
    )
    g.add_argument("--address", default=None,
                   help="with --engine ray: the Ray cluster (auto, ray://head:10001, host:6379); "
                   "default: the connected one, else a new local instance")  # fmt: skip
    g.add_argument(
        "--ray-workers",
        type=A.positive_int,
        default=None,
        help="with --engine ray: worker actors/tasks (default: one per CPU; embed: one per GPU)",
    )


def engine_call(args: argparse.Namespace, local: Callable[..., Any], verb: str) -> Callable[..., Any]:
    """The function a verb should call: ``local`` itself (the stage's own run on this machine),
    or :func:`laion_hf.engines.run_stage` on Ray with ``--address`` and ``--ray-workers`` bound
    (``verb`` is ``filter``, ``download`` or ``embed``)."""
    if getattr(args, "engine", "local") != "ray":
        return local
    from laion_hf.engines import run_stage

    return functools.partial(
        run_stage,
        verb,
        engine="ray",
        address=getattr(args, "address", None),
        workers=getattr(args, "ray_workers", None),
    )


def add_clip_arguments(parser: argparse.ArgumentParser, default_model: str = "laion-hf-tiny") -> None:
    """Add ``--clip-model``, ``--clip-pretrained``, ``--clip-device``, ``--clip-batch-size`` to another
    verb (the demo): the tiny random-init model by default, a real one when its weights are on disk.
    Pass the values to :func:`laion_hf.clip.clip_stage`."""
    g = parser.add_argument_group("CLIP features")
    g.add_argument("--clip-model", default=default_model,
                   help=f"open_clip model (default: {default_model}); e.g. ViT-B-32-quickgelu")  # fmt: skip
    g.add_argument("--clip-pretrained", default=None,
                   help="its weights: a tag found in the HF cache (e.g. openai) or a checkpoint file")  # fmt: skip
    g.add_argument("--clip-device", default="auto", help="auto (CUDA if available), cpu, cuda")
    g.add_argument("--clip-batch-size", type=A.positive_int, default=None, help="images per forward pass")


def add_near_arguments(parser: Any) -> None:
    """``--near TEXT`` / ``--near-image PATH`` / ``--near-embedding FILE.npy`` with ``--k`` or
    ``--min-similarity`` and ``--modality``: the ``filter`` verb's subsets by query (SOURCE is
    then an index folder made by ``laion-hf index``)."""
    g = parser.add_argument_group("subset by query (SOURCE is an index folder from `laion-hf index`)")
    g.add_argument("--near", default=None, metavar="TEXT", help="keep the rows nearest this caption")
    g.add_argument("--near-image", default=None, metavar="PATH", help="keep the rows nearest this image")
    g.add_argument("--near-embedding", default=None, metavar="NPY", help="... nearest this vector (.npy)")
    g.add_argument(
        "--k", type=A.positive_int, default=None, help="how many rows to keep (100 without --min-similarity)"
    )
    g.add_argument("--min-similarity", type=A.finite_float, default=None, help="keep rows at least this similar")
    g.add_argument("--modality", choices=["image", "text"], default="image",
                   help="search the image index (default) or the text index")  # fmt: skip


def near_kwargs_from_args(args: Any) -> dict[str, Any] | None:
    """:func:`filter_near` keyword arguments from ``add_near_arguments``'s flags, or None when
    no query flag was given."""
    if args.near is None and args.near_image is None and args.near_embedding is None:
        return None
    embedding = None
    if args.near_embedding is not None:
        try:
            embedding = np.load(args.near_embedding).astype(np.float32).ravel().tolist()
        except (OSError, ValueError) as e:
            raise KnnIndexError(f"--near-embedding {args.near_embedding}: {e}") from None
    k = args.k if args.k is not None or args.min_similarity is not None else 100
    return {"text": args.near, "image": args.near_image, "embedding": embedding, "k": k,
            "min_similarity": args.min_similarity, "modality": args.modality}  # fmt: skip

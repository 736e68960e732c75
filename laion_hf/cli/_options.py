"""Options shared by several verbs: metadata selection, engine, CLIP model; and the engine
dispatch (the local stage driver or its Ray twin)."""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable

from laion_hf.cli import _args as A
from laion_hf.filters import PRESETS


def add_load_arguments(p) -> None:
    """The metadata-selection options shared by every command that reads LAION metadata."""
    p.add_argument("--where", action="append", metavar="EXPR",
                   help="filter expression, e.g. \"similarity >= 0.28 and punsafe < 0.1\" (repeatable, ANDed)")
    p.add_argument("--preset", action="append", metavar="NAME",
                   help=f"LAION subset preset (repeatable): {', '.join(PRESETS)}")
    p.add_argument("--blocklist", action="append", metavar="FILE",
                   help="text file of MD5/SHA-256 hex digests to remove (repeatable)")
    p.add_argument("--blocklist-column", default="url", help="column whose digest is matched (default url)")
    p.add_argument("--sample", type=A.fraction, help="keep this fraction of rows, chosen by a hash of the key")
    p.add_argument("--columns", help="comma-separated output columns (default: all)")
    p.add_argument("--release", help="release name (default: detected from the columns)")
    p.add_argument("--on-error", choices=["raise", "skip", "warn"], default="raise",
                   help="what to do with an unreadable file (default raise)")


def load_kwargs_from_args(args) -> dict[str, Any]:
    """Turn :func:`add_load_arguments` options into :func:`laion_hf.load_laion` keyword arguments."""
    return {
        "where": args.where, "preset": args.preset, "blocklist": args.blocklist,
        "blocklist_column": args.blocklist_column, "sample": args.sample,
        "columns": args.columns.split(",") if args.columns else None, "release": args.release,
        "on_error": args.on_error,
    }


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--engine local|ray``, ``--address`` and ``--ray-workers`` for a verb."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="run on this machine (local, default) or on Ray Data (ray; pip install 'laion-hf[ray]')")
    g.add_argument("--address", default=None,
                   help="with --engine ray: the Ray cluster (auto, ray://head:10001, host:6379); "
                   "default: the connected one, else a new local instance")  # fmt: skip
    g.add_argument("--ray-workers", type=A.positive_int, default=None,
                   help="with --engine ray: worker actors/tasks (default: one per CPU; embed: one per GPU)")


def engine_call(args: argparse.Namespace, local: Callable[..., Any], verb: str) -> Callable[..., Any]:
    """The function a verb should call: ``local`` itself (the stage's own run on this machine),
    or :func:`laion_hf.engines.run_stage` on Ray with ``--address`` and ``--ray-workers`` bound
    (``verb`` is ``filter``, ``download`` or ``embed``)."""
    if getattr(args, "engine", "local") != "ray":
        return local
    from laion_hf.engines import run_stage

    return functools.partial(run_stage, verb, engine="ray", address=getattr(args, "address", None),
                             workers=getattr(args, "ray_workers", None))


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--clip-model``, ``--clip-pretrained``, ``--clip-device``, ``--clip-batch-size`` to another
    verb (the demo): the tiny random-init model by default, a real one when its weights are on disk.
    Pass the values to :func:`laion_hf.clip.clip_stage`."""
    g = parser.add_argument_group("CLIP features")
    g.add_argument("--clip-model", default="laion-hf-tiny",
                   help="open_clip model (default: the tiny random-init test model); e.g. ViT-B-32-quickgelu")  # fmt: skip
    g.add_argument("--clip-pretrained", default=None,
                   help="its weights: a tag found in the HF cache (e.g. openai) or a checkpoint file")  # fmt: skip
    g.add_argument("--clip-device", default="auto", help="auto (CUDA if available), cpu, cuda")
    g.add_argument("--clip-batch-size", type=A.positive_int, default=None, help="images per forward pass")

"""The ``laion-hf`` command line. Each group of verbs registers itself here.

New verbs live in this package, one module per group (``laion_hf/cli/<group>.py``
with a ``register(sub)`` function); library modules never import ``laion_hf.cli``.

A registrar is ``"module:function"``; the function receives argparse's sub-parsers
object, adds its verb(s) and sets ``func`` (called with the parsed namespace, returns an
exit code). Registrar modules import heavy libraries (torch, open_clip) lazily, so
``laion-hf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from laion_hf.errors import LaionHFError

_REGISTRARS = [
    "laion_hf.cli.metadata:register",
    "laion_hf.cli.demo:register",
    "laion_hf.cli.clip:register",
    "laion_hf.cli.hub:register",
    "laion_hf.cli.images:register",
    "laion_hf.cli.index:register",
    "laion_hf.cli.eval:register",
    "laion_hf.cli.train:register",
    "laion_hf.cli.reproduce:register",
]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``laion-hf`` argument parser with every registered verb."""
    from laion_hf import __version__

    parser = argparse.ArgumentParser(
        prog="laion-hf",
        description="LAION image-text data as streaming Hugging Face datasets: "
        "filter metadata, fetch images, compute CLIP features, publish to the Hub.",
    )
    parser.add_argument("--version", action="version", version=f"laion-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in _REGISTRARS:
        module_name, func_name = spec.split(":")
        getattr(importlib.import_module(module_name), func_name)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``laion-hf`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _check_outputs(args)
        return int(args.func(args) or 0)
    except LaionHFError as e:
        print(f"laion-hf {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `laion-hf ... | head`: the reader went away; not an error of ours
        _silence_stdout()
        return 141
    except OSError as e:  # a disk full, a folder made read-only mid-run, ...: one line, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"laion-hf {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


def _check_outputs(args: argparse.Namespace) -> None:
    """Check every output path before any work starts (one clear line instead of a traceback
    after a long scan): ``out`` is a folder, ``plot`` a file."""
    from laion_hf._util.outdir import check_output_dir, check_output_file

    if isinstance(getattr(args, "out", None), str):
        check_output_dir(args.out)
    if isinstance(getattr(args, "plot", None), str):
        check_output_file(args.plot)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

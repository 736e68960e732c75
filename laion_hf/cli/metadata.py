"""``laion-hf synth``, ``stats``, ``filter`` and ``presets``: the metadata verbs."""

from __future__ import annotations

import json
from typing import Any

from laion_hf.cli import _args as A
from laion_hf.cli._options import (
    add_engine_arguments,
    add_load_arguments,
    add_near_arguments,
    add_on_error_argument,
    engine_call,
    load_kwargs_from_args,
    near_kwargs_from_args,
    on_error_from_args,
)
from laion_hf.filters import PRESETS
from laion_hf.stats import StatsAccumulator, format_stats, plot_stats
from laion_hf.synth import LAYOUTS, synthesize


def register(sub: Any) -> None:
    """Add the metadata verbs."""
    _register_synth(sub)
    _register_stats(sub)
    _register_filter(sub)


def _register_synth(sub) -> None:
    """``laion-hf synth``: write synthetic LAION metadata."""
    p = sub.add_parser("synth", help="write realistic synthetic LAION metadata parquet", description=synthesize.__doc__)
    p.add_argument("--rows", type=A.non_negative_int, default=10_000, help="number of rows (default 10,000)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--files", type=A.positive_int, default=1, help="number of parquet files (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="laion-aesthetics",
        help="which release's column names and types to imitate",
    )
    p.add_argument("--row-group-size", type=A.positive_int, default=100_000)
    p.add_argument(
        "--world",
        action="store_true",
        help="captions and /world/<key>.jpg URLs from the embedded image world (the loopback image "
        "server renders them), ground truth in passthrough columns",
    )
    p.add_argument(
        "--noise", type=A.unit_interval, default=0.3, help="with --world: fraction of noisy captions (default 0.3)"
    )
    p.add_argument(
        "--eval-sets",
        metavar="DIR",
        help="with --world: also write the world's held-out zero-shot benchmark into DIR (CLIP_benchmark "
        "layout: one classification set per attribute and a retrieval set, images disjoint from the metadata's)",
    )
    p.add_argument(
        "--eval-images",
        type=A.positive_int,
        default=500,
        help="with --eval-sets: held-out images per set (default 500)",
    )
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    if args.eval_sets and not args.world:
        from laion_hf.errors import EvalError

        raise EvalError("--eval-sets needs --world (the held-out sets are images of the world)")
    paths = synthesize(
        args.rows,
        args.out,
        files=args.files,
        seed=args.seed,
        layout=args.layout,
        row_group_size=args.row_group_size,
        world=args.world,
        noise=args.noise,
    )
    print(f"wrote {args.rows:,} rows in {len(paths)} file(s) to {args.out}")
    if args.eval_sets:
        from laion_hf.eval.worldbench import write_world_benchmark

        sets = write_world_benchmark(args.eval_sets, args.eval_images)
        print(f"wrote {len(sets)} held-out evaluation sets ({', '.join(sets)}) of {args.eval_images:,} images to "
              f"{args.eval_sets}")  # fmt: skip
    return 0


def _register_stats(sub) -> None:
    """``laion-hf stats``."""
    p = sub.add_parser(
        "stats",
        help="row count, quantiles and histograms of LAION metadata",
        description="Scan SOURCE (file, folder, glob or URL) and print counts, quantiles of "
        "similarity, sizes, punsafe, pwatermark, aesthetic, and language counts.",
    )
    p.add_argument("source", help="parquet file, folder, glob or fsspec URL")
    p.add_argument("--where", action="append", help="filter expression (repeatable, ANDed)")
    p.add_argument("--preset", action="append", help="preset name (repeatable)")
    p.add_argument("--plot", metavar="PNG", help="draw the histograms into this PNG file")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_on_error_argument(p)
    p.set_defaults(func=_run_stats)


def _run_stats(args) -> int:
    from laion_hf.builder import make_builder

    builder = make_builder(args.source, where=args.where, preset=args.preset, on_error=on_error_from_args(args))
    acc = StatsAccumulator()
    for table in builder.iter_tables():
        acc.update(table)
    stats = acc.result()
    stats["scan"] = builder.stats.as_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats))
        _print_skipped(builder.stats.files_skipped)
    if args.plot:
        plot_stats(stats, args.plot)
        print(f"histograms: {args.plot}")
    return 0


def _register_filter(sub) -> None:
    """``laion-hf filter`` and ``laion-hf presets``."""
    p = sub.add_parser(
        "filter",
        help="filter LAION metadata into parquet shards",
        description="Read SOURCE in the canonical schema, keep rows matching --where/--preset, "
        "drop blocklisted rows, and write parquet parts + stats.json to --out.",
    )
    p.add_argument("source", help="parquet file, folder, glob or fsspec URL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rows-per-file", type=A.positive_int, default=1_000_000)
    p.add_argument("--no-progress", action="store_true")
    add_load_arguments(p)

    add_engine_arguments(p)
    add_near_arguments(p)  # --near TEXT --k N: subsets by query from an index folder
    p.set_defaults(func=_run_filter)
    q = sub.add_parser("presets", help="list the LAION subset presets and their sources")
    q.set_defaults(func=_run_presets)


def _run_filter(args) -> int:
    near = near_kwargs_from_args(args)
    if near is not None:  # SOURCE is an index folder: clip-retrieval's `clip filter`
        return _run_filter_near(args, near)
    from laion_hf.export import filter_to_parquet  # datasets: imported only by the verbs that read metadata
    from laion_hf.provenance import merge, read_provenance, selection_record, write_provenance

    run = engine_call(args, filter_to_parquet, "filter")  # the local function, or its Ray Data twin
    load_kwargs = load_kwargs_from_args(args)
    stats = run(args.source, args.out, rows_per_file=args.rows_per_file, progress=not args.no_progress, **load_kwargs)
    # the record the next stage extends and the dataset card renders: SOURCE's, then this selection
    write_provenance(args.out, merge(read_provenance(args.source), selection_record(args.source, load_kwargs, stats)))
    print(
        f"kept {stats['rows_kept']:,} of {stats['rows_in']:,} rows "
        f"(filter removed {stats['removed_by_filter']:,}, blocklist {stats['removed_by_blocklist']:,}, "
        f"sample {stats['removed_by_sample']:,}) -> {args.out} ({len(stats['output_files'])} file(s))"
    )
    _print_skipped(stats["files_skipped"])
    return 0


def _print_skipped(files_skipped: list[dict]) -> None:
    """One line per file skipped with ``--on-error skip``: rows read of rows, rows lost, why."""
    for s in files_skipped:
        rows = "rows unknown" if s.get("rows") is None else f"{s['rows_read']:,} of {s['rows']:,} rows read"
        print(f"skipped {s['file']} ({rows}, {s.get('rows_lost') or 0:,} lost): {s['error']}")


def _run_filter_near(args, near: dict) -> int:
    """``--near``: the nearest rows of an index folder, then ``--where`` / ``--preset`` on them."""
    from laion_hf.errors import KnnIndexError
    from laion_hf.index.query import filter_near

    ignored = [flag for flag, value in (("--blocklist", args.blocklist), ("--sample", args.sample),
               ("--columns", args.columns), ("--release", args.release), ("--engine ray", args.engine == "ray"))
               if value]  # fmt: skip
    if ignored:
        raise KnnIndexError(f"{', '.join(ignored)} cannot be combined with --near (--where and --preset can): "
                            "filter the --near output again with `laion-hf filter`")  # fmt: skip
    stats = filter_near(args.source, args.out, where=args.where, preset=args.preset, **near)
    nearest = stats["rows_kept"] + stats["removed_by_filter"]
    how = f" ({nearest:,} nearest, {stats['removed_by_filter']:,} removed by the filter)" if stats["filters"] else ""
    print(f"kept {stats['rows_kept']:,} of {stats['rows_in']:,} rows nearest the query{how} -> {args.out}")
    return 0


def _run_presets(args) -> int:
    for p in PRESETS.values():
        print(f"{p.name:24} {p.where}\n{'':24} {p.description} [{p.source}]")
    return 0

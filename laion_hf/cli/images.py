"""``laion-hf download``: images into img2dataset-compatible shards."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

from laion_hf._util.atomic import atomic_write_json
from laion_hf.cli import _args as A
from laion_hf.cli._options import add_engine_arguments, add_load_arguments, engine_call, load_kwargs_from_args
from laion_hf.errors import FetchError
from laion_hf.images.download import download
from laion_hf.images.fetch import FetchConfig, parse_allow_list


def register(sub: Any) -> None:
    """Add ``laion-hf download``."""
    p = sub.add_parser(
        "download",
        help="download images into img2dataset-compatible shards (tar or parquet + stats)",
        description="Fetch the images of a metadata file into img2dataset-compatible shards: "
        "{shard}.tar ({key}.jpg/.txt/.json), {shard}.parquet (one row per input row, failures "
        "included, with their status) and {shard}_stats.json. Resumes: shards with a stats file are "
        "skipped. Private/loopback addresses are refused unless listed in "
        "--allow-private-networks.",
    )
    p.add_argument(
        "source",
        nargs="?",
        help="metadata parquet/csv/tsv/txt file, folder or glob, or parquet URL/glob "
        "(hf://datasets/..., https://..., s3://...)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", dest="output_format", choices=["webdataset", "parquet"], default="webdataset")
    p.add_argument("--processes", type=A.positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--concurrency", type=A.positive_int, default=64, help="fetches in flight per process (default 64)")
    p.add_argument(
        "--per-host", type=A.non_negative_int, default=16, help="connections per host (0 = unlimited; default 16)"
    )
    p.add_argument("--shard-size", type=A.positive_int, default=10_000, help="rows per shard (default 10000)")
    p.add_argument("--url-col", default=None, help="URL column (default url or URL)")
    p.add_argument("--caption-col", default=None, help="caption column (default caption or TEXT)")
    p.add_argument("--image-size", type=A.positive_int, default=256)
    p.add_argument(
        "--resize-mode", default="border", choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]
    )
    p.add_argument("--resize-only-if-bigger", action="store_true")
    p.add_argument("--encode-format", default="jpg", choices=["jpg", "png", "webp"])
    p.add_argument("--encode-quality", type=A.non_negative_int, default=95)
    p.add_argument(
        "--downscale-interpolation", default="area", choices=["area", "bilinear", "bicubic", "lanczos", "nearest"]
    )
    p.add_argument(
        "--upscale-interpolation", default="lanczos", choices=["area", "bilinear", "bicubic", "lanczos", "nearest"]
    )
    p.add_argument("--skip-reencode", action="store_true", help="keep the original bytes when no resize is needed")
    p.add_argument("--min-image-size", type=A.non_negative_int, default=0)
    p.add_argument("--max-image-area", type=A.positive_float, default=math.inf)
    p.add_argument("--max-aspect-ratio", type=A.aspect_ratio, default=math.inf)
    p.add_argument("--timeout", type=A.positive_float, default=20.0, help="seconds per attempt (default 20)")
    p.add_argument("--retries", type=A.non_negative_int, default=2)
    p.add_argument("--max-body-mb", type=A.positive_float, default=32.0)
    p.add_argument(
        "--max-decode-mb",
        type=A.positive_float,
        default=512.0,
        help="refuse (decode_too_large) an image whose decode and RGB conversion would "
        "take more MiB than this, judged from its header before decoding (default 512)",
    )
    p.add_argument("--user-agent-token", default=None, help="your token, added to the User-Agent")
    p.add_argument(
        "--disallowed-header-directives",
        default=",".join(("noai", "noimageai", "noindex", "noimageindex")),
        help="comma-separated X-Robots-Tag directives that opt out ('' to ignore the header)",
    )
    p.add_argument("--hash-col", default=None, help="verify the downloaded bytes against this column")
    p.add_argument("--hash-type", default="sha256", choices=["sha256", "md5", "sha1", "sha512"])
    p.add_argument("--cache-dir", default=None, help="on-disk image cache (a rerun makes no request for cached rows)")
    p.add_argument(
        "--retry-failed",
        default=None,
        metavar="PREVIOUS_OUT",
        help="download again only the failed rows of a previous output folder (keys kept)",
    )
    p.add_argument(
        "--allow-private-networks",
        nargs="?",
        const=BARE_ALLOW,
        default=None,
        metavar="NETS",
        type=_allow_list_arg,
        help="comma-separated networks to allow beside public addresses, each optionally "
        "with one port: 127.0.0.1/32,::1/128 or 127.0.0.1:8080 (local mirrors and tests "
        "only; every redirect is checked again; link-local/metadata addresses such as "
        "169.254.169.254 only when named). Bare (deprecated): loopback only",
    )
    p.add_argument(
        "--ca-file",
        default=None,
        metavar="PEM",
        help="extra certificate authorities to trust for HTTPS (a local mirror's, a proxy's)",
    )
    p.add_argument("--no-progress", action="store_true")

    add_load_arguments(p)  # --where/--preset/--blocklist/--sample...: select parquet metadata rows first
    add_engine_arguments(p)
    p.set_defaults(func=_cli)


BARE_ALLOW = "127.0.0.0/8,::1/128"  # what a bare --allow-private-networks allows (deprecated)


def _allow_list_arg(text: str) -> str:
    """argparse type of ``--allow-private-networks``: a valid allow-list, kept as its text."""
    import argparse

    try:
        if not parse_allow_list(text):
            raise FetchError("no network given")
    except FetchError as e:
        raise argparse.ArgumentTypeError(
            f"{e} (give e.g. 127.0.0.1/32,::1/128 before SOURCE, or put the flag after SOURCE)"
        ) from None
    return text


_SELECTING = ("where", "preset", "blocklist", "sample", "columns", "release")


def _selected_source(args: Any) -> tuple[Any, Any]:
    """SOURCE as is, or, when metadata-selection options are given, the filtered stream of
    SOURCE in the canonical schema (``load_laion``) and the builder that counts it."""

    load_kwargs = load_kwargs_from_args(args)
    if not any(load_kwargs.get(k) is not None for k in _SELECTING):
        return args.source, None
    if args.retry_failed is not None:
        raise FetchError(
            "--where/--preset/--blocklist/--sample select rows of SOURCE; --retry-failed re-downloads "
            "the failed rows of a previous run as they are: give one or the other"
        )
    if args.source is None:
        raise FetchError("--where/--preset/--blocklist/--sample need a SOURCE of parquet metadata")
    from laion_hf.builder import make_builder

    builder = make_builder(args.source, **load_kwargs)
    return builder.as_streaming_dataset(split="train"), builder


METADATA_STATS = "metadata_stats.json"  # rows of SOURCE read, kept and removed by the selection options


def _cli(args: Any) -> int:
    if args.source is None and args.retry_failed is None:
        raise FetchError("give a SOURCE or --retry-failed PREVIOUS_OUT")
    if args.allow_private_networks is BARE_ALLOW:
        print(
            "laion-hf download: a bare --allow-private-networks is deprecated and now allows "
            f"loopback only ({BARE_ALLOW}); name the networks: "
            "--allow-private-networks 127.0.0.1/32,::1/128",
            file=sys.stderr,
        )
    run = engine_call(args, download, "download")  # the local function, or its Ray Data twin
    source, builder = _selected_source(args)
    stats = run(
        source,
        args.out,
        output_format=args.output_format,
        processes=args.processes,
        shard_size=args.shard_size,
        url_column=args.url_col,
        caption_column=args.caption_col,
        hash_column=args.hash_col,
        hash_type=args.hash_type,
        retry_failed=args.retry_failed,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        concurrency=args.concurrency,
        per_host=args.per_host,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        resize_only_if_bigger=args.resize_only_if_bigger,
        encode_format=args.encode_format,
        encode_quality=args.encode_quality,
        skip_reencode=args.skip_reencode,
        downscale_interpolation=args.downscale_interpolation,
        upscale_interpolation=args.upscale_interpolation,
        min_image_size=args.min_image_size,
        max_image_area=args.max_image_area,
        max_aspect_ratio=args.max_aspect_ratio,
        timeout=args.timeout,
        retries=args.retries,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_decode_bytes=int(args.max_decode_mb * 2**20),
        user_agent_token=args.user_agent_token,
        disallowed_header_directives=tuple(d for d in args.disallowed_header_directives.split(",") if d.strip()),
        allow_private_networks=args.allow_private_networks or False,
        ca_file=args.ca_file,
    )
    report = {
        k: stats[k]
        for k in (
            "count",
            "successes",
            "failed_to_download",
            "failed_to_resize",
            "status_dict",
            "samples_per_s",
            "out_dir",
        )
    }
    selection = Path(args.out) / METADATA_STATS
    if builder is not None and builder.stats.rows_in:  # this run read and filtered SOURCE
        atomic_write_json(selection, builder.stats.as_dict(), indent=2)
    if builder is not None and selection.exists():  # else a resumed run: the first run's counts
        report["metadata"] = json.loads(selection.read_text())
    _write_provenance(args, stats, builder, report.get("metadata"))
    print(json.dumps(report, indent=2))
    return 0


def _write_provenance(args: Any, stats: dict, builder: Any, scan: Optional[dict]) -> None:
    """The folder's provenance record (either engine): SOURCE's record, the rows this command
    selected from it, the fetch counts and the robots policy."""
    from laion_hf.provenance import selection_record, write_download_provenance

    fetch = FetchConfig(
        user_agent_token=args.user_agent_token,
        disallowed_header_directives=tuple(d for d in args.disallowed_header_directives.split(",") if d.strip()),
    )
    selection = None
    if builder is not None:
        selection = selection_record(args.source, load_kwargs_from_args(args), scan, builder, stage="download")
    write_download_provenance(args.out, stats, fetch, source=args.retry_failed or args.source, selection=selection)

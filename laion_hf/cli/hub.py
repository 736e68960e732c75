"""``laion-hf shards``, ``laion-hf card`` and ``laion-hf push`` (heavy imports happen inside the verbs)."""

from __future__ import annotations

import argparse
import sys

from laion_hf.cli import _args as A


def _cmd_shards(args: argparse.Namespace) -> int:
    from laion_hf.shards import parse_size, write_shards

    prov = args.provenance or {}
    stats = write_shards(
        args.source,
        args.out,
        format=args.format,
        config=args.config,
        split=args.split,
        max_shard_bytes=parse_size(args.max_shard_size),
        max_shard_rows=args.max_shard_rows,
        image_column=args.image_column,
        provenance=prov,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"wrote {stats['num_shards']} {stats['format']} shard(s), {stats['rows_written']:,} of {stats['rows']:,} rows, "
        f"{stats['bytes']:,} bytes -> {args.out}/data/{stats['config']} (+ stats.json)"
    )
    if args.card:
        from laion_hf.hub.card import render_card

        render_card(args.out, args.repo_id)
        print(f"rendered {args.out}/README.md")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from laion_hf.hub.card import render_card

    text = render_card(
        args.dir, args.repo_id, template=args.template, pretty_name=args.pretty_name, write=not args.stdout
    )
    if args.stdout:
        sys.stdout.write(text)
    else:
        print(f"rendered {args.dir}/README.md ({len(text):,} characters)")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from laion_hf.hub.upload import push

    res = push(
        args.dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        dry_run=args.dry_run,
        endpoint=args.endpoint,
        commit_message=args.message,
    )
    if args.dry_run:
        print(
            f"dry run: would upload {len(res.to_upload)} file(s) ({res.bytes_to_upload:,} bytes) to "
            f"{res.repo_id}@{res.revision}; {len(res.unchanged)} unchanged"
        )
        for p in res.to_upload:
            print(f"  + {p}")
        return 0
    if not res.to_upload:
        print(f"{res.repo_id}@{res.revision} is up to date ({len(res.unchanged)} file(s) unchanged)")
        return 0
    print(
        f"pushed {len(res.to_upload)} file(s) ({res.bytes_to_upload:,} bytes) in {len(res.commits)} commit(s) "
        f"to {res.url}"
        + (f" (pull request {res.pr_url})" if res.pr_url else f"@{res.revision}")
        + f"; {len(res.unchanged)} unchanged"
    )
    return 0


def register(sub) -> None:
    """Register the ``shards``, ``card`` and ``push`` verbs."""
    p = sub.add_parser(
        "shards",
        help="write parquet (default) or webdataset shards + stats.json from parquet input",
        description="Write Hub-ready shards data/{config}/train-XXXXX-of-NNNNN.{parquet,tar} and "
        "stats.json from parquet file(s) (e.g. the output of the image/CLIP stages) or "
        "from a `laion-hf download` folder.",
    )
    p.add_argument(
        "source",
        help="parquet file, glob or folder, or a `laion-hf download` (img2dataset) output "
        "folder (images joined from its tars)",
    )
    p.add_argument("out", help="output folder (one Hub repo)")
    p.add_argument("--format", choices=["parquet", "webdataset"], default="parquet")
    p.add_argument("--config", default="default", help="config name (default 'default')")
    p.add_argument("--split", default="train")
    p.add_argument("--max-shard-size", default="500MB", help="close a shard at this size (default 500MB)")
    p.add_argument("--max-shard-rows", type=A.positive_int, default=None, help="close a shard at this many rows")
    p.add_argument("--image-column", default="image")
    p.add_argument(
        "--provenance",
        type=A.json_object,
        default=None,
        help="JSON object recorded for the card (source, filters, ...)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace this config's existing shards")
    p.add_argument("--card", action="store_true", help="also render README.md")
    p.add_argument("--repo-id", default=None, help="repo id used in the card's loading snippets")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_shards)

    p = sub.add_parser(
        "card",
        help="(re)render DIR/README.md, the dataset card, from DIR/stats.json",
        description="Render the dataset card (YAML front matter + body) and the score histogram "
        "image of a shard folder from its stats.json.",
    )
    p.add_argument("dir", help="shard folder written by `laion-hf shards` / write_shards")
    p.add_argument("--repo-id", default=None, help="repo id for the loading snippets")
    p.add_argument("--template", default=None, help="Jinja2 template (default: dataset_cards/laion_subset.md.j2)")
    p.add_argument("--pretty-name", default=None)
    p.add_argument("--stdout", action="store_true", help="print the card instead of writing README.md")
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser(
        "push",
        help="upload a shard folder to a Hub dataset repo (resumable)",
        description="Create the dataset repo if needed and upload only the files that are missing "
        "or changed. Token: HF_TOKEN or your `hf auth login`.",
    )
    p.add_argument("dir", help="shard folder (with stats.json)")
    p.add_argument("repo_id", help="namespace/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.set_defaults(func=_cmd_push)

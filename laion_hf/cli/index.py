"""``laion-hf index`` (faiss indexes over CLIP embeddings) and ``laion-hf serve`` (clip back's
HTTP API over them)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the ``index`` and ``serve`` verbs."""
    _register_index(sub)
    _register_serve(sub)


def _register_index(sub: Any) -> None:
    p = sub.add_parser(
        "index", help="build faiss image/text indexes over CLIP embeddings (clip-retrieval's `clip index`)",
        description="Index `laion-hf embed` output (img_emb/ text_emb/ metadata/) or parquet shards with "
        "image_embedding/text_embedding columns, local or hf://. The index type follows the vector count and "
        "--max-index-memory (Flat, HNSW, OPQ+IVF+PQ; IVF on disk with --memory-mappable); the search parameter "
        "is tuned to --recall on held-out queries. Writes OUT/image.index, OUT/text.index and OUT/infos.json. "
        "A re-run resumes a killed build.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("source", help="embed output folder or parquet shards (file, folder, glob, hf:// URL)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--max-index-memory", default="8GB", help="memory budget of one index (e.g. 4GB)")
    p.add_argument("--memory-mappable", action="store_true", help="IVF with on-disk inverted lists")
    p.add_argument(
        "--index-key",
        default=None,
        help="force a faiss factory string (Flat, HNSW32, IVF1024,Flat)",
    )
    p.add_argument("--kind", action="append", choices=["image", "text"], default=None,
                   help="index only this kind (repeatable; default: every kind the source has)")  # fmt: skip
    p.add_argument("--recall", type=float, default=0.95, help="recall@10 target of the tuned search parameter")
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        default=10.0,
        help="per-query latency budget while tuning",
    )
    p.add_argument("--batch-rows", type=int, default=65536, help="vectors added per work order")
    p.add_argument(
        "--clip-model",
        default=None,
        help="CLIP model of the embeddings when the source does not say",
    )
    p.add_argument(
        "--clip-pretrained",
        default=None,
        help="its weights (a tag or a checkpoint file) when the source does not say",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from laion_hf.cli._options import add_engine_arguments  # --engine local|ray (no ray import)

    add_engine_arguments(p)
    p.set_defaults(func=_run_index)


def _run_index(args: argparse.Namespace) -> int:
    try:
        from laion_hf.index import build_index
    except ImportError as e:  # pragma: no cover - the index extra is missing
        return _missing_extra(e)
    run: Any = build_index
    if args.engine == "ray":
        from functools import partial

        from laion_hf.engines.ray import build_index_ray

        run = partial(build_index_ray, address=args.address, workers=args.ray_workers)
    infos = run(
        args.source, args.out, max_index_memory=args.max_index_memory, memory_mappable=args.memory_mappable,
        index_key=args.index_key, kinds=args.kind, recall_target=args.recall, batch_rows=args.batch_rows,
        latency_budget_ms=args.latency_budget_ms, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
        progress=not args.no_progress,
    )  # fmt: skip
    for kind, k in infos["kinds"].items():
        print(f"{kind}: {k['index_key']} {k['search_params'] or ''} over {k['count']:,} vectors "
              f"({k['missing']:,} missing), recall@10 {k['recall_at_10']:.3f}, p50 {k['latency_ms_p50']:.2f} ms, "
              f"{k['size_bytes'] / 2**20:.1f} MiB")  # fmt: skip
    print(f"-> {args.out}/infos.json (model {infos['clip_model']})")
    return 0


def _missing_extra(e: ImportError) -> int:
    print(
        f"laion-hf: the index extra is missing: pip install 'laion-hf[index]' ({e})",
        file=sys.stderr,
    )
    return 1


def _register_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve index folders with clip back's HTTP API (ClipClient and clip front work)",
        description="Serve POST /knn-service, POST /metadata, GET /indices-list, GET /config.json and "
        "GET /health over index folders made by `laion-hf index`. Bound to 127.0.0.1 unless --host says "
        "otherwise. Metadata is checked against the index's fingerprint at start.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    p.add_argument("dirs", nargs="+", metavar="[NAME=]DIR", help="index folders (named after the folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=1234, help="port (0: any free port)")
    p.add_argument("--metadata", default=None, help="another copy of the metadata (one index only)")
    p.add_argument("--device", default="cpu", help="device of the CLIP model embedding queries")
    p.add_argument("--aesthetic-embeddings", default=None, help="folder of rating{0..9}.npy for this model")
    p.add_argument("--allow-private-image-urls", nargs="?", const="all", default=None, metavar="CIDR",
                   help="let image_url reach private/loopback addresses (all, or comma-separated networks)")  # fmt: skip
    p.add_argument("--max-body-bytes", type=int, default=16 * 2**20)
    p.add_argument("--threads", type=int, default=4, help="worker threads for inference and searches")
    p.set_defaults(func=_run_serve)


def _serve_config(args: argparse.Namespace) -> Any:
    from laion_hf.serve.app import ServeConfig

    allow: Any = False
    if args.allow_private_image_urls == "all":
        allow = True
    elif args.allow_private_image_urls:
        allow = tuple(n.strip() for n in args.allow_private_image_urls.split(",") if n.strip())
    return ServeConfig(max_body_bytes=args.max_body_bytes, allow_private_image_urls=allow, threads=args.threads)


def _run_serve(args: argparse.Namespace) -> int:
    import logging

    from laion_hf.errors import LaionHFError
    from laion_hf.serve.app import make_app, start_server

    if args.metadata and len(args.dirs) != 1:
        raise LaionHFError("--metadata applies to one index folder; give one DIR")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = make_app(args.dirs, _serve_config(args), metadata=args.metadata, device=args.device,
                   aesthetic_embeddings=args.aesthetic_embeddings)  # fmt: skip
    from laion_hf.serve.page import add_page

    add_page(app)  # the explorer page at /

    async def main() -> None:
        runner, url = await start_server(app, args.host, args.port)
        print(f"laion-hf serve: {url} (indices: {', '.join(_names(app))}); open {url}/ to explore", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0


def _names(app: Any) -> list[str]:
    from laion_hf.serve.app import SERVICE

    return list(app[SERVICE].indices)

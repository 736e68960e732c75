"""Writing Hub-ready parquet shards (embedded JPEGs as Image(), 512-d float32 embeddings) from a
stream of Arrow batches: ``laion_hf.write_shards`` against the two ``datasets`` ways to get the
same files, run on the same rows in the same process.

- baseline A: ``Dataset.from_generator`` over the stream (rows as dicts, as datasets does) +
  ``shard(...).to_parquet`` per shard (flat memory like ours, via datasets' Arrow cache);
- baseline B: materialize everything as one ``Dataset`` (all rows in memory) +
  ``shard(...).to_parquet`` per shard.

Both produce the same rows in parquet with the same features. The last line prints
write_shards' speed-up over the faster baseline.

    python benchmarks/shards_write.py --rows 20000
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def make_pool(n: int, side: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def batches(rows: int, batch: int, pool: list[bytes], dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb_type = pa.list_(pa.float32(), dim)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        keys = [f"{i:09d}" for i in range(start, start + n)]
        ok = rng.random(n) > 0.1
        imgs = [pool[(start + i) % len(pool)] if ok[i] else None for i in range(n)]
        emb = rng.normal(size=(n, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        yield pa.table(
            {
                "key": keys,
                "url": [f"https://img.example.com/{k}.jpg" for k in keys],
                "caption": [f"caption of image {start + i}" for i in range(n)],
                "similarity": rng.uniform(0.28, 0.45, n),
                "image": pa.StructArray.from_arrays(
                    [pa.array(imgs, pa.binary()), pa.nulls(n, pa.string())], names=["bytes", "path"], mask=pa.array(~ok)
                ),
                "status": np.where(ok, "success", "http_404").tolist(),
                "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim).cast(emb_type),
            }
        )


def features(dim: int):
    import datasets

    return datasets.Features(
        {
            "key": datasets.Value("string"),
            "url": datasets.Value("string"),
            "caption": datasets.Value("string"),
            "similarity": datasets.Value("float64"),
            "image": datasets.Image(),
            "status": datasets.Value("string"),
            "image_embedding": datasets.List(datasets.Value("float32"), length=dim),
        }
    )


def run_ours(args, pool, out: Path) -> tuple[float, int]:
    from laion_hf.shards import write_shards

    t = time.perf_counter()
    stats = write_shards(
        batches(args.rows, args.batch, pool, args.dim), out, max_shard_rows=args.shard_rows, progress=False
    )
    return time.perf_counter() - t, stats["rows"]


def _shard_out(ds, out: Path, n_shards: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_shards):
        ds.shard(n_shards, i, contiguous=True).to_parquet(str(out / f"train-{i:05d}-of-{n_shards:05d}.parquet"))
    return ds.num_rows


def run_from_generator(args, pool, out: Path, cache: Path) -> tuple[float, int]:
    import datasets

    def gen():
        for t in batches(args.rows, args.batch, pool, args.dim):
            yield from t.to_pylist()

    t = time.perf_counter()
    ds = datasets.Dataset.from_generator(gen, features=features(args.dim), cache_dir=str(cache))
    n = _shard_out(ds, out, -(-args.rows // args.shard_rows))
    return time.perf_counter() - t, n


def run_in_memory(args, pool, out: Path) -> tuple[float, int]:
    import datasets

    t = time.perf_counter()
    table = pa.concat_tables(batches(args.rows, args.batch, pool, args.dim))
    ds = datasets.Dataset(table).cast(features(args.dim))
    n = _shard_out(ds, out, -(-args.rows // args.shard_rows))
    return time.perf_counter() - t, n


def _child(args) -> None:
    """Run one variant in this (fresh) process and print ``seconds rows peak_rss_bytes``."""
    import resource

    import datasets

    import laion_hf.shards  # noqa: F401  (imports outside the timing)

    datasets.disable_progress_bars()
    pool = make_pool(512, args.image_side)
    tmp = Path(tempfile.mkdtemp(prefix="laion-hf-bench-shards-"))
    try:
        if args.variant == "ours":
            sec, n = run_ours(args, pool, tmp / "out")
        elif args.variant == "generator":
            sec, n = run_from_generator(args, pool, tmp / "out", tmp / "cache")
        else:
            sec, n = run_in_memory(args, pool, tmp / "out")
        size = sum(f.stat().st_size for f in (tmp / "out").rglob("*.parquet"))
        print(sec, n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    import subprocess
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=1_000)
    p.add_argument("--shard-rows", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--image-side", type=int, default=96)
    p.add_argument("--variant", choices=["ours", "generator", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return _child(args)

    results = {}
    for variant in ("ours", "generator", "memory"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--rows",
            str(args.rows),
            "--batch",
            str(args.batch),
            "--shard-rows",
            str(args.shard_rows),
            "--dim",
            str(args.dim),
            "--image-side",
            str(args.image_side),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        sec, n, rss, size = float(out[-4]), int(out[-3]), int(out[-2]), int(out[-1])
        assert n == args.rows, (variant, n)
        results[variant] = (sec, rss, size)
    print(
        f"rows={args.rows:,} dim={args.dim} images {args.image_side}px JPEG, shards of {args.shard_rows:,} rows, "
        f"output {results['ours'][2] / 1e6:.1f} MB (ours) / {results['memory'][2] / 1e6:.1f} MB (datasets)"
    )
    names = {
        "ours": "laion_hf.write_shards (stream)",
        "generator": "datasets from_generator + shard.to_parquet",
        "memory": "datasets in-memory Dataset + shard.to_parquet",
    }
    for v, (sec, rss, _) in results.items():
        print(f"{names[v]:46s} {sec:7.2f} s {args.rows / sec:9,.0f} rows/s  peak RSS {rss / 1e6:7.0f} MB")
    best = min(("generator", "memory"), key=lambda v: results[v][0])
    ours_s, ours_rss, _ = results["ours"]
    print(
        f"write_shards vs fastest datasets baseline ({best}): {results[best][0] / ours_s:.2f}x speed, "
        f"{results[best][1] / ours_rss:.2f}x less peak memory"
    )


if __name__ == "__main__":
    main()

"""CLIP throughput: the with_clip stream against the model's own limit, in the same run.

(a) forward:   image + text encoders on pre-made tensors already on the device (normalized
               images, tokens), same batch size: the most any stream can reach.
(b) with_clip: the full stream: parquet shard of real JPEG bytes -> datasets streaming ->
               with_clip (threaded draft decode + preprocess, pinned buffers, model) -> Arrow
               batches with embeddings and clip_similarity.
(c) decode:    decode + preprocess alone in the pipeline's thread pool (what a GPU waits on).

The shard holds --n-images distinct generated photo-like JPEGs of 512-768 px (cached under
--data-dir). The last line prints both rates and b/a. Random init is fine for speed.

    python benchmarks/clip_throughput.py --model ViT-B-32 --n-images 2000            # CPU
    python benchmarks/clip_throughput.py --device cuda --precision fp16 --batch-size 256 --n-images 20000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def make_shard(path: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` distinct JPEGs (512-768 px per side) with captions into one parquet shard."""
    from laion_hf.testing.image_server import make_image

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(512, 769, size=(n, 2))

    def one(i: int) -> bytes:
        return make_image.__wrapped__(int(sizes[i, 0]), int(sizes[i, 1]), "jpg", seed * 1_000_003 + i, "RGB", 88, None, 6.0)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        images = list(pool.map(one, range(n)))
    table = pa.table(
        {
            "key": pa.array([f"{i:09d}" for i in range(n)], pa.string()),
            "caption": pa.array([f"a photo of a colourful landscape number {i}" for i in range(n)], pa.string()),
            "image": pa.array([{"bytes": b, "path": None} for b in images],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),  # fmt: skip
            "status": pa.array(["success"] * n, pa.string()),
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=512)
    os.replace(tmp, path)
    return path


def bench_forward(embedder, table: pa.Table, n_batches: int, min_seconds: float = 3.0) -> float:
    """(a): images/s of image + text encoders on pre-made device tensors."""
    import torch

    from laion_hf.clip.decode import open_image, preprocess_pil

    bs = embedder.batch_size
    rows = table.slice(0, bs)
    imgs = [open_image(d["bytes"]) for d in rows["image"].to_pylist()]
    host = torch.stack([preprocess_pil(embedder, im, draft=True) for im in imgs])
    x = embedder.to_model_input(host)  # normalized, on the device
    tokens = embedder.tokenizer(rows["caption"].to_pylist()).to(embedder.device)

    def step() -> None:
        with torch.inference_mode(), embedder.autocast():
            a = embedder.model.encode_image(x)
            b = embedder.model.encode_text(tokens)
            (a.float() * b.float()).sum().item()  # synchronizes like the stream's copy back

    step()  # warm-up (two calls: the first builds kernels/primitives for these shapes)
    step()
    t = time.perf_counter()
    done = 0
    while done < n_batches or time.perf_counter() - t < min_seconds:
        step()
        done += 1
    return done * bs / (time.perf_counter() - t)


def bench_stream(embedder, shard: Path, num_workers: int | None, limit: int) -> tuple[float, int]:
    """(b): images/s of the full with_clip stream over the parquet shard (first batch is warm-up)."""
    import datasets

    from laion_hf.clip import with_clip

    ds = datasets.load_dataset("parquet", data_files=str(shard), split="train", streaming=True)
    if limit:
        ds = ds.take(limit)
    out = with_clip(ds, embedder, num_workers=num_workers)
    n = 0
    t = None
    first = 0
    for table in out.iter(batch_size=embedder.batch_size):
        assert table["image_embedding"].null_count == 0
        if t is None:  # warm-up batch excluded
            t = time.perf_counter()
            first = table.num_rows
            continue
        n += table.num_rows
    elapsed = time.perf_counter() - t
    return n / elapsed, n + first


def bench_decode(embedder, table: pa.Table, num_workers: int | None) -> float:
    """(c): images/s of draft decode + preprocess in the pipeline's thread pool."""
    import torch

    from laion_hf.clip.decode import decode_into
    from laion_hf.clip.stream import _default_workers

    data = [d["bytes"] for d in table["image"].to_pylist()]
    h, w = embedder.image_size
    buf = torch.empty((len(data), h, w, 3), dtype=torch.uint8)
    workers = num_workers or _default_workers(embedder.device.type)
    step = max(1, len(data) // (workers * 4))

    def job(s: int) -> None:
        for i in range(s, min(s + step, len(data))):
            assert decode_into(buf, i, data[i], None, embedder) is None

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(job, range(0, len(data), step)))
    return len(data) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip model (random init unless --pretrained)")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--forward-batches", type=int, default=None, help="timed batches for (a) (default: ~n/4 images)")
    p.add_argument("--num-workers", type=int, default=None, help="decode threads")
    p.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "laion-hf-bench"))
    args = p.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"clip_throughput: skipped: --device {args.device} asked for but no CUDA GPU is visible")
        return 0
    from laion_hf.clip import ClipEmbedder

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    shard = make_shard(Path(args.data_dir) / f"clip_jpegs_{args.n_images}.parquet", args.n_images)
    print(f"data: {shard} ({args.n_images} JPEGs 512-768 px, {shard.stat().st_size / 1e6:.0f} MB) "
          f"ready in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    emb = ClipEmbedder(args.model, args.pretrained, device=args.device, precision=args.precision, batch_size=args.batch_size)
    gpu = torch.cuda.get_device_name(emb.device) if emb.device.type == "cuda" else "-"
    print(f"model: {emb!r}; torch threads {torch.get_num_threads()}; cpu cores {os.cpu_count()}; gpu {gpu}")
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    table = pq.read_table(shard)
    c = bench_decode(emb, table.slice(0, min(len(table), 1024)), args.num_workers)
    print(f"(c) decode+preprocess alone: {c:,.1f} images/s")
    n_batches = args.forward_batches or max(2, args.n_images // (4 * emb.batch_size))
    # (a) is measured before and after (b) and averaged, so load drift on a shared machine hits both
    half = max(1, n_batches // 2)
    a1 = bench_forward(emb, table, half)
    print(f"(a) model forward (image+text) on pre-made tensors, before (b): {a1:,.1f} images/s")
    b, n = bench_stream(emb, shard, args.num_workers, args.n_images)
    print(f"(b) with_clip stream from JPEG bytes: {b:,.1f} images/s ({n} rows)")
    a2 = bench_forward(emb, table, half)
    print(f"(a) model forward (image+text) on pre-made tensors, after (b): {a2:,.1f} images/s")
    a = (a1 + a2) / 2
    load1 = os.getloadavg()
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(
        f"clip_throughput {emb.model_name} {emb.device.type} {emb.precision} bs={emb.batch_size} n={n}: "
        f"forward {a:,.1f} img/s, with_clip {b:,.1f} img/s, b/a = {b / a:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

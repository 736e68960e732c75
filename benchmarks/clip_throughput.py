"""CLIP throughput: the with_clip stream against the model's own limit, in the same run.

(a) forward:   image + text encoders on pre-made tensors already on the device (normalized
               images, tokens), same batch size: the most any stream can reach.
By default (--mode interleaved) one (a) batch runs after every --forward-every stream batches and
(b) is timed inside the stream's ``next`` only, so load from other processes hits both alike;
the stream's decode threads may work ahead during an (a) batch (at most --prefetch batches,
~2% of a CPU forward) while competing with it for cores, two small biases of opposite sign.
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
        return make_image.__wrapped__(
            int(sizes[i, 0]), int(sizes[i, 1]), "jpg", seed * 1_000_003 + i, "RGB", 88, None, 6.0
        )

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        images = list(pool.map(one, range(n)))
    table = pa.table(
        {
            "key": pa.array([f"{i:09d}" for i in range(n)], pa.string()),
            "caption": pa.array([f"a photo of a colourful landscape number {i}" for i in range(n)], pa.string()),
            "image": pa.array(
                [{"bytes": b, "path": None} for b in images], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            ),  # fmt: skip
            "status": pa.array(["success"] * n, pa.string()),
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=512)
    os.replace(tmp, path)
    return path


class Forward:
    """(a): image + text encoders on pre-made tensors already on the device, one batch per step."""

    def __init__(self, embedder, table: pa.Table) -> None:
        import torch

        from laion_hf.clip.decode import open_image, preprocess_pil

        self.torch = torch
        self.embedder = embedder
        rows = table.slice(0, embedder.batch_size)
        imgs = [open_image(d["bytes"]) for d in rows["image"].to_pylist()]
        host = torch.stack([preprocess_pil(embedder, im, draft=True) for im in imgs])
        self.x = embedder.to_model_input(host)  # normalized, on the device
        self.tokens = embedder.tokenizer(rows["caption"].to_pylist()).to(embedder.device)
        self.rows = rows.num_rows

    def step(self) -> None:
        e = self.embedder
        with self.torch.inference_mode(), e.autocast():
            a = e.model.encode_image(self.x)
            b = e.model.encode_text(self.tokens)
            (a.float() * b.float()).sum().item()  # synchronizes like the stream's copy back

    def run(self, n_rows: int) -> tuple[int, float, float]:
        """Forward at least ``n_rows`` rows; returns (rows, wall seconds, process CPU seconds)."""
        t, c = time.perf_counter(), time.process_time()
        done = 0
        while done < n_rows:
            self.step()
            done += self.rows
        return done, time.perf_counter() - t, time.process_time() - c


def stream_segment(embedder, shard: Path, start: int, count: int, num_workers: int | None) -> tuple[int, float, float]:
    """(b): the full with_clip stream over rows [start, start + count) of the shard;
    (rows, wall seconds, process CPU seconds: all threads, decoding included)."""
    import datasets

    from laion_hf.clip import with_clip

    t, c = time.perf_counter(), time.process_time()
    ds = datasets.load_dataset("parquet", data_files=str(shard), split="train", streaming=True)
    ds = ds.skip(start).take(count) if start else ds.take(count)
    out = with_clip(ds, embedder, num_workers=num_workers)
    n = 0
    for table in out.iter(batch_size=embedder.batch_size):
        assert table["image_embedding"].null_count == 0 and table["clip_similarity"].null_count == 0
        n += table.num_rows
    return n, time.perf_counter() - t, time.process_time() - c


def interleaved(
    embedder, fwd: "Forward", shard: Path, n_images: int, forward_every: int, num_workers: int | None
) -> tuple[list[float], list[float]]:
    """One with_clip stream over the whole shard; after every ``forward_every``-th stream batch,
    one (a) step, so both see the same load from other processes. Returns the totals
    [rows, wall s, CPU s] of (b) (time spent inside the stream's ``next``) and of (a)."""
    import datasets

    from laion_hf.clip import with_clip

    b = [0.0, 0.0, 0.0]
    a = [0.0, 0.0, 0.0]
    t, c = time.perf_counter(), time.process_time()  # (b)'s clock includes building the stream
    ds = datasets.load_dataset("parquet", data_files=str(shard), split="train", streaming=True).take(n_images)
    it = iter(with_clip(ds, embedder, num_workers=num_workers).iter(batch_size=embedder.batch_size))
    i = 0
    while True:
        try:
            table = next(it)
        except StopIteration:
            b[1] += time.perf_counter() - t
            b[2] += time.process_time() - c
            break
        assert table["image_embedding"].null_count == 0 and table["clip_similarity"].null_count == 0
        b[0] += table.num_rows
        b[1] += time.perf_counter() - t
        b[2] += time.process_time() - c
        i += 1
        if i % forward_every == 0:
            rows, wall, cpu = fwd.run(1)
            a[0], a[1], a[2] = a[0] + rows, a[1] + wall, a[2] + cpu
            if i % (forward_every * 8) == 0:
                print(f"  {int(b[0])} rows: (b) {b[0] / b[1]:,.1f} img/s, (a) {a[0] / a[1]:,.1f} img/s, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        t, c = time.perf_counter(), time.process_time()
    return b, a


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
    p.add_argument("--mode", choices=["interleaved", "sequential"], default="interleaved",
                   help="interleaved: one (a) batch after every --forward-every stream batches, so other "
                        "processes' load hits both alike (for shared machines); sequential: (a) then (b)")  # fmt: skip
    p.add_argument("--forward-every", type=int, default=2, help="(a) forwards 1/N as many rows as (b) streams")
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
    emb = ClipEmbedder(
        args.model, args.pretrained, device=args.device, precision=args.precision, batch_size=args.batch_size
    )
    gpu = torch.cuda.get_device_name(emb.device) if emb.device.type == "cuda" else "-"
    print(f"model: {emb!r}; torch threads {torch.get_num_threads()}; cpu cores {os.cpu_count()}; gpu {gpu}")
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    table = pq.read_table(shard)
    c = bench_decode(emb, table.slice(0, min(len(table), 1024)), args.num_workers)
    print(f"(c) decode+preprocess alone: {c:,.1f} images/s")
    # warm-up both paths (first calls build kernels/primitives, start datasets' readers)
    fwd = Forward(emb, table)
    fwd.step()
    fwd.step()
    stream_segment(emb, shard, 0, emb.batch_size, args.num_workers)
    if args.mode == "interleaved":
        (b_rows, b_secs, b_cpu), (a_rows, a_secs, a_cpu) = interleaved(
            emb, fwd, shard, args.n_images, args.forward_every, args.num_workers
        )
    else:  # sequential: (a) then (b), what a quiet machine or a GPU box can afford
        a_rows, a_secs, a_cpu = fwd.run(max(emb.batch_size, args.n_images // args.forward_every))
        b_rows, b_secs, b_cpu = stream_segment(emb, shard, 0, args.n_images, args.num_workers)
    a, b, n = a_rows / a_secs, b_rows / b_secs, int(b_rows)
    print(f"(a) model forward (image+text) on pre-made tensors: {a:,.1f} images/s ({int(a_rows)} rows)")
    print(f"(b) with_clip stream from JPEG bytes to embeddings: {b:,.1f} images/s ({n} rows)")
    cpu_ratio = (a_cpu / a_rows) / (b_cpu / b_rows)
    print(f"process CPU time per image: (a) {1000 * a_cpu / a_rows:.1f} ms, (b) {1000 * b_cpu / b_rows:.1f} ms "
          f"(decode included); CPU-time b/a = {cpu_ratio:.3f} (info: OpenMP spin-waits under load count too; "
          f"interleaved mode books decode work done ahead during (a) batches to (a))")  # fmt: skip
    load1 = os.getloadavg()
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(
        f"clip_throughput {emb.model_name} {emb.device.type} {emb.precision} bs={emb.batch_size} n={n}: "
        f"forward {a:,.1f} img/s, with_clip {b:,.1f} img/s, b/a = {b / a:.3f} ({args.mode})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

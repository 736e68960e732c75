"""Zero-shot evaluation throughput: ``laion-hf eval`` against the model forward alone, same run.

(a) forward: ``encode_image`` on the same images already decoded, preprocessed and on the
             device, same batch size: the most any evaluation can reach.
(b) eval:    ``laion_hf.eval.evaluate`` on the set in CLIP_benchmark's layout (tar shards read,
             exact decode + open_clip transform in threads, model, classifier, metrics).

The set holds --n-images distinct generated photo-like JPEGs of 300-500 px in --classes classes
(cached under --data-dir). (a) runs before and after (b); its mean is the reference. The last
line prints both rates and b/a. Random init is fine for speed.

    python benchmarks/eval.py --model ViT-B-32 --n-images 400                          # CPU
    python benchmarks/eval.py --device cuda --batch-size 256 --n-images 10000 --num-workers 16
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def make_set(root: Path, n: int, classes: int, seed: int = 0) -> Path:
    """Write ``n`` JPEGs (300-500 px) with labels in CLIP_benchmark's layout under ``root``."""
    from laion_hf.eval import EvalSample, write_benchmark
    from laion_hf.testing.image_server import make_image

    out = root / f"wds_bench_{n}_{classes}"
    if (out / "test" / "nshards.txt").exists():
        return out
    rng = np.random.default_rng(seed)
    sizes = rng.integers(300, 501, size=(n, 2))

    def one(i: int) -> EvalSample:
        data = make_image.__wrapped__(int(sizes[i, 0]), int(sizes[i, 1]), "jpg", seed * 1_000_003 + i, "RGB", 88,
                                      None, 6.0)  # fmt: skip
        return EvalSample(f"{i:07d}", data, label=i % classes)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        samples = list(pool.map(one, range(n)))
    names = [f"class number {c}" for c in range(classes)]
    write_benchmark(out, samples, classnames=names, templates=["a photo of a {c}."], image_ext="jpg",
                    shard_size=1000)  # fmt: skip
    return out


def forward_rate(embedder, pixels: torch.Tensor) -> float:
    """Images/s of ``encode_image_batch`` on pre-made host batches (uint8 or float)."""
    bs = embedder.batch_size
    batches = [pixels[i : i + bs].to(embedder.device) for i in range(0, len(pixels), bs)]
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        embedder.encode_image_batch(b)
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    return len(pixels) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-images", type=int, default=400)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--data-dir", default="/tmp/laion-hf-bench-eval")
    args = p.parse_args()

    from PIL import Image

    from laion_hf.clip.decode import preprocess_pil
    from laion_hf.eval import evaluate, load_eval_dataset, load_model

    root = make_set(Path(args.data_dir), args.n_images, args.classes)
    emb = load_model(args.model, device=args.device, precision=args.precision, batch_size=args.batch_size)
    ds = load_eval_dataset(str(root))
    pixels = torch.stack([preprocess_pil(emb, Image.open(io.BytesIO(s.image))) for s in ds.samples()])
    print(f"{emb!r}; {len(pixels)} images, {args.classes} classes; torch threads {torch.get_num_threads()}")
    forward_rate(emb, pixels[: emb.batch_size])  # warm-up
    a1 = forward_rate(emb, pixels)
    t0 = time.perf_counter()
    result = evaluate(emb, ds, num_workers=args.num_workers)
    b = len(pixels) / (time.perf_counter() - t0)
    a2 = forward_rate(emb, pixels)
    a = (a1 + a2) / 2
    print(
        f"(a) forward alone: {a1:.1f} / {a2:.1f} images/s; (b) eval: {b:.1f} images/s; acc1 {result['metrics']['acc1']:.3f}"
    )
    print(
        f"eval {b:.1f} images/s vs model forward {a:.1f} images/s ({args.model}, {emb.device}, "
        f"{args.precision}): ratio {b / a:.2f}x"
    )


if __name__ == "__main__":
    main()

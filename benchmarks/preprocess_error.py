#!/usr/bin/env python
"""Pixel error of laion-hf's preprocessing against open_clip's eval transform, and its speed.

    python benchmarks/preprocess_error.py              # 224² output, 12 images per kind
    python benchmarks/preprocess_error.py --n 4        # quick look

Generated photo-like images (laion_hf.testing.image_server.make_image: smooth gradients plus
noise) are encoded as JPEG (600x520 up to 1600x1200, i.e. at least twice the output size,
where ``Image.draft`` kicks in) and as palette (mode "P") PNG. Each goes through

  * ``open_clip.image_transform(S, is_train=False)`` (the reference),
  * the training loader's ``fast_clip_preprocess(draft=False)`` (the default, exact) and
    ``draft=True`` (the opt-in approximation),
  * the CLIP embedder's decode path (``laion_hf.clip.decode.prepare_pil`` on the tiny model,
    64², against ``image_transform(64)``) with ``draft=False`` (default) and ``draft=True``.

It prints max and mean absolute error in normalised units per path and kind, then the JPEG
decode+preprocess rate of the loader's exact and draft modes; the last line is the speed
ratio draft/exact.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import open_clip
import torch
from PIL import Image

from laion_hf.clip import ClipEmbedder
from laion_hf.clip.decode import prepare_pil
from laion_hf.loader import fast_clip_preprocess
from laion_hf.testing.image_server import make_image

SIZES = [(600, 520), (800, 600), (1024, 768), (1600, 1200), (700, 1400), (1200, 1000)]


def images(n: int) -> dict[str, list[bytes]]:
    jpeg = [make_image(*SIZES[i % len(SIZES)], "jpg", seed=i) for i in range(n)]
    png = [make_image(*SIZES[i % len(SIZES)], "png", seed=i, mode="P") for i in range(n)]
    return {"jpeg": jpeg, "palette png": png}


def reference(blobs: list[bytes], size: int) -> torch.Tensor:
    tf = open_clip.image_transform(size, is_train=False)
    return torch.stack([tf(Image.open(io.BytesIO(b))) for b in blobs])


def embedder_pixels(emb: ClipEmbedder, blobs: list[bytes], draft: bool) -> torch.Tensor:
    host = torch.stack(
        [torch.from_numpy(np.asarray(prepare_pil(emb, Image.open(io.BytesIO(b)), draft=draft)).copy()) for b in blobs]
    )
    return emb.to_model_input(host).cpu()


def report(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    d = (got - want).abs()
    print(f"{name:<44} max {d.max().item():.4f}  mean {d.mean().item():.5f}")


def rate(blobs: list[bytes], size: int, draft: bool, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fast_clip_preprocess(blobs, size, draft=draft)
        best = min(best, time.perf_counter() - t0)
    return len(blobs) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="images per kind")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = images(args.n)
    emb = ClipEmbedder("laion-hf-tiny", device="cpu", precision="fp32")
    esize = emb.image_size[0]
    print(f"error vs open_clip.image_transform(S, is_train=False), normalised units, {args.n} images per kind")
    for kind, blobs in data.items():
        want = reference(blobs, args.size)
        for draft in (False, True):
            got, ok, _ = fast_clip_preprocess(blobs, args.size, draft=draft)
            assert ok.all()
            report(f"loader {kind} S={args.size} draft={draft}", got, want)
        ewant = reference(blobs, esize)
        for draft in (False, True):
            report(
                f"embedder {kind} S={esize} draft={draft}",
                embedder_pixels(emb, blobs, draft),
                ewant,
            )
    exact = rate(data["jpeg"], args.size, False, args.repeats)
    draft = rate(data["jpeg"], args.size, True, args.repeats)
    print(f"loader JPEG images/s (1 thread): exact {exact:.1f}, draft {draft:.1f}")
    print(f"draft/exact speed ratio: {draft / exact:.2f}")


if __name__ == "__main__":
    main()

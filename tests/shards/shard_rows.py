"""Test rows as the image and CLIP stages emit them: real JPEG bytes in ``image`` (null for
failed fetches, with ``status`` and ``error``), L2-normalized ``image_embedding`` /
``text_embedding`` float lists, and the canonical LAION metadata columns."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

ERROR_CLASSES = ("http_404", "timeout", "decode_error")  # statuses as laion_hf.images writes them


def jpeg(seed: int, w: int = 24, h: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 1, 3))
    arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def make_rows(
    n: int, *, dim: int = 8, seed: int = 0, start: int = 0, fail_every: int = 5, image_size: tuple[int, int] = (24, 16)
) -> pa.Table:
    """``n`` rows; every ``fail_every``-th row (index % fail_every == fail_every - 1) failed."""
    rng = np.random.default_rng(seed + start)
    keys = [f"{start + i:09d}" for i in range(n)]
    failed = [fail_every > 0 and (start + i) % fail_every == fail_every - 1 for i in range(n)]
    images = [None if f else jpeg(seed * 100_003 + start + i, *image_size) for i, f in enumerate(failed)]
    status = [ERROR_CLASSES[(start + i) % len(ERROR_CLASSES)] if f else "success" for i, f in enumerate(failed)]
    error = [f"fetch failed: {s}" if f else None for s, f in zip(status, failed)]
    img_e = rng.normal(size=(n, dim)).astype(np.float32)
    img_e /= np.linalg.norm(img_e, axis=1, keepdims=True)
    txt_e = rng.normal(size=(n, dim)).astype(np.float32)
    txt_e /= np.linalg.norm(txt_e, axis=1, keepdims=True)
    return pa.table(
        {
            "key": keys,
            "url": [f"https://images.example.com/{k}.jpg" for k in keys],
            "caption": [f"a photo of thing number {start + i}" for i in range(n)],
            "width": pa.array(rng.integers(256, 2048, n), pa.int32()),
            "height": pa.array(rng.integers(256, 2048, n), pa.int32()),
            "similarity": rng.uniform(0.28, 0.45, n),
            "punsafe": rng.uniform(0.0, 0.5, n),
            "pwatermark": rng.uniform(0.0, 0.8, n),
            "aesthetic": rng.uniform(4.0, 8.0, n),
            "image": pa.array(images, pa.binary()),
            "status": status,
            "error": error,
            "image_embedding": pa.array(
                [None if f else v.tolist() for f, v in zip(failed, img_e)], pa.list_(pa.float32())
            ),
            "text_embedding": pa.array([v.tolist() for v in txt_e], pa.list_(pa.float32())),
        }
    )


PROVENANCE = {
    "release": "laion2B-en",
    "sources": [{"repo": "laion/relaion2B-en-research-safe", "files": ["part-00000.parquet", "part-00001.parquet"]}],
    "preset": "laion2b-en",
    "filters": ["similarity >= 0.28", "punsafe < 0.5", "min(width, height) >= 256"],
    "blocklists": [{"name": "demo_md5.txt", "entries": 5, "column": "url", "removed": 3}],
    "scan": {
        "rows_in": 1000,
        "rows_kept": 120,
        "removed_by_filter": 877,
        "removed_by_blocklist": 3,
        "removed_by_sample": 0,
    },
    "robots": {
        "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
        "user_agent": "laion-hf/0.1 (+https://github.com/laion-hf/laion-hf)",
        "skipped": 0,
    },
    "clip": {"model": "laion-hf-tiny", "pretrained": None, "embedding_dim": 8},
}

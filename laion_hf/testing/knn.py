"""Test tooling for ``laion-hf index`` / ``serve``: embedding folders to index, written for
real (synthetic clustered vectors, or the tiny CLIP model's embeddings of real JPEGs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from laion_hf.schema import IMAGE_STRUCT
from laion_hf.testing.image_server import make_image


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 50, spread: float = 0.6) -> np.ndarray:
    """``n`` L2-normalized float32 vectors around ``clusters`` random centres (not uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_embed_folder(
    root: str | os.PathLike,
    parts: int,
    rows: int,
    dim: int = 32,
    seed: int = 0,
    missing_text: int = 0,
    dtype: str = "float16",
) -> Path:
    """A folder in ``laion-hf embed``'s layout with synthetic clustered vectors: ``parts`` parts
    of ``rows`` rows; metadata ``key`` = ``"{part}_{row}"``, ``caption``, ``url``, ``punsafe``;
    the first ``missing_text`` rows of each part have a zero text vector (no caption)."""
    root = Path(root)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    for n in range(parts):
        img = clustered(rows, dim, seed * 1000 + n)
        txt = img + 0.4 * rng.normal(size=img.shape).astype(np.float32)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        txt[:missing_text] = 0
        np.save(root / "img_emb" / f"img_emb_{n}.npy", img.astype(dtype))
        np.save(root / "text_emb" / f"text_emb_{n}.npy", txt.astype(dtype))
        pq.write_table(pa.table({
            "key": [f"{n}_{i}" for i in range(rows)],
            "caption": [None if i < missing_text else f"caption {n} {i}" for i in range(rows)],
            "url": [f"https://example.com/{n}/{i}.jpg" for i in range(rows)],
            "punsafe": rng.random(rows),
        }), root / "metadata" / f"metadata_{n}.parquet")  # fmt: skip
    return root


def image_shards(folder: str | os.PathLike, images: int, per_shard: int, seed: int = 0) -> list[Path]:
    """Parquet shards with real JPEGs (``image`` struct), captions, urls and a ``punsafe``
    column (every third row unsafe), as the images stage writes them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, images, per_shard)):
        idx = range(start, min(images, start + per_shard))
        table = pa.table({
            "key": [f"{i:09d}" for i in idx],
            "caption": [f"a picture number {i} of a {('red', 'green', 'blue')[i % 3]} thing" for i in idx],
            "url": [f"https://example.com/{i}.jpg" for i in idx],
            "image": pa.array([{"bytes": make_image(48 + 8 * (i % 5), 40 + 8 * (i % 4), "jpg", seed=seed + i),
                                "path": None} for i in idx], IMAGE_STRUCT),
            "status": ["success"] * len(idx),
            "punsafe": [0.9 if i % 3 == 0 else 0.1 for i in idx],
        })  # fmt: skip
        path = folder / f"{s:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


def tiny_index(root: str | os.PathLike, images: int = 40, per_shard: int = 16) -> tuple[Path, Path, Path]:
    """Image shards → ``embed_shards`` with the tiny CLIP model (CPU, float32) → ``build_index``.
    Returns ``(shards, embed folder, index folder)``."""
    from laion_hf.clip.embed import embed_shards
    from laion_hf.index.build import build_index

    root = Path(root)
    image_shards(root / "shards", images, per_shard)
    embed_shards([str(root / "shards")], root / "embed", model="laion-hf-tiny", device="cpu", dtype="float32",
                 progress=False)  # fmt: skip
    build_index(root / "embed", root / "index")
    return root / "shards", root / "embed", root / "index"

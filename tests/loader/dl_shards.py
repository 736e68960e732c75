"""Write small image-text shards (our parquet layout and webdataset tars) with real JPEGs.

Shared by the dataloader tests (as `dl_shards`), ``benchmarks/dataloader.py`` and the training-recipe test.
Images carry a colour class and the caption names it, so a contrastive model can learn.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
    "purple": (140, 30, 180),
    "cyan": (30, 210, 220),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
SHAPES = ("square", "stripe", "dot", "band")


def make_jpeg(index: int, size: int = 64, seed: int = 0, quality: int = 85) -> tuple[bytes, str]:
    """A JPEG of ``size``² whose colour and pattern follow ``index``; returns (bytes, caption)."""
    names = list(COLORS)
    color = names[index % len(names)]
    shape = SHAPES[(index // len(names)) % len(SHAPES)]
    rng = np.random.default_rng([seed, index])
    base = np.array(COLORS[color], dtype=np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base * 0.35 + 60
    s = size
    if shape == "square":
        img[s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = base
    elif shape == "stripe":
        img[:, s // 3 : 2 * s // 3] = base
    elif shape == "dot":
        yy, xx = np.mgrid[:s, :s]
        img[(yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (s / 4) ** 2] = base
    else:
        img[s // 3 : 2 * s // 3, :] = base
    img += rng.normal(0, 12, size=img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), f"a photo of a {color} {shape}"


FEATURES = datasets.Features(
    {
        "key": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "status": datasets.Value("string"),
        "image": datasets.Image(),
        "image_embedding": datasets.List(datasets.Value("float32"), length=4),
    }
)


def make_samples(n: int, size: int = 64, seed: int = 0, corrupt: tuple[int, ...] = (), missing: tuple[int, ...] = ()):
    """Lists (keys, jpeg bytes or None, captions, statuses) for ``n`` samples.

    Indices in ``corrupt`` get bytes that are not an image; those in ``missing`` get no image.
    """
    keys, images, captions, statuses = [], [], [], []
    for i in range(n):
        data, caption = make_jpeg(i, size=size, seed=seed)
        status = "success"
        if i in corrupt:
            data = b"\xff\xd8 this is not really a jpeg " + bytes(range(64))
        if i in missing:
            data, status = None, "failed_to_download"
        keys.append(f"{i:09d}")
        images.append(data)
        captions.append(caption)
        statuses.append(status)
    return keys, images, captions, statuses


def write_parquet_shards(
    root: str | Path,
    n: int,
    num_shards: int,
    *,
    size: int = 64,
    row_group_size: int = 50,
    config: str = "default",
    seed: int = 0,
    corrupt: tuple[int, ...] = (),
    missing: tuple[int, ...] = (),
    samples=None,
) -> list[Path]:
    """Write ``root/data/{config}/train-{i:05d}-of-{n:05d}.parquet`` like our publisher does."""
    keys, images, captions, statuses = samples or make_samples(n, size, seed, corrupt, missing)
    n = len(keys)
    out = Path(root) / "data" / config
    out.mkdir(parents=True, exist_ok=True)
    schema = FEATURES.arrow_schema
    emb = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    paths = []
    for s in range(num_shards):
        lo, hi = bounds[s], bounds[s + 1]
        image = pa.array(
            [None if b is None else {"bytes": b, "path": f"{keys[i]}.jpg"} for i, b in enumerate(images[lo:hi], lo)],
            type=schema.field("image").type,
        )
        table = pa.table(
            {
                "key": keys[lo:hi],
                "caption": captions[lo:hi],
                "status": statuses[lo:hi],
                "image": image,
                "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb[lo:hi].ravel()), 4),
            }
        ).cast(schema)
        path = out / f"train-{s:05d}-of-{num_shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_wds_shards(
    root: str | Path, n: int, num_shards: int, *, size: int = 64, seed: int = 0, samples=None
) -> list[Path]:
    """Write img2dataset-style tars ``{i:05d}.tar`` with ``{key}.jpg/.txt/.json`` per sample."""
    keys, images, captions, statuses = samples or make_samples(n, size, seed)
    n = len(keys)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    paths = []
    for s in range(num_shards):
        path = root / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(bounds[s], bounds[s + 1]):
                if images[i] is None:
                    continue
                meta = json.dumps({"key": keys[i], "caption": captions[i], "status": statuses[i]}).encode()
                for ext, data in (("jpg", images[i]), ("txt", captions[i].encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{keys[i]}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/default/train-*.parquet
---
# test shards
"""

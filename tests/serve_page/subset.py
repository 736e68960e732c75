"""A small real subset for the page tests: JPEGs made by the image server's generator, captions
from the embedded sample (two of them hostile HTML), real tiny-CLIP embeddings, written as
parquet shards (with ``stats.json``) by :func:`laion_hf.write_shards`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from laion_hf.testing.image_server import make_image

N = 72
XSS_SCRIPT = '<script>window.__xss = "script"</script>x'
XSS_IMG = '<img src="/nonexistent.png" onerror="window.__xss = \'img\'">y'
BROKEN_ROW = 7  # bytes that are not an image
MISSING_ROW = 11  # no image at all
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SAMPLE = Path(__file__).resolve().parents[2] / "laion_hf" / "data" / "web_url_caption_1k.parquet"


def captions(n: int) -> list[str]:
    texts = pq.read_table(SAMPLE, columns=["TEXT"]).column("TEXT").to_pylist()[: n - 2]
    return [XSS_SCRIPT, XSS_IMG] + [str(t) for t in texts]


def punsafe(i: int) -> float:
    """Spread over 0..1 so that some rows are above any threshold the tests use."""
    return round((i * 37 % N) / N, 4)


def build_table(embedder) -> pa.Table:
    """``N`` rows with images, scores, languages and tiny-CLIP image/text embeddings."""
    from PIL import Image

    caps = captions(N)
    images: list[bytes | None] = [make_image(48, 48, "jpg", seed=i) for i in range(N)]
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    img_emb = embedder.encode_pil(pil)
    txt_emb = embedder.encode_text(caps)
    images[BROKEN_ROW] = b"this is not an image"
    images[MISSING_ROW] = None
    dim = img_emb.shape[1]
    return pa.table(
        {
            "key": [f"{i:09d}" for i in range(N)],
            "url": [f"https://images.example.org/{i}.jpg" for i in range(N)],
            "caption": caps,
            "punsafe": [punsafe(i) for i in range(N)],
            "pwatermark": [round(((i * 5) % N) / N, 4) for i in range(N)],
            "aesthetic": [round(3 + (i % 7) * 0.5, 2) for i in range(N)],
            "language": [("en", "de", "fr")[i % 3] for i in range(N)],
            "status": ["success"] * N,
            "image": pa.array([None if b is None else {"bytes": b, "path": None} for b in images], IMAGE_TYPE),
            "image_embedding": pa.array(list(img_emb.astype(np.float32)), pa.list_(pa.float32(), dim)),
            "text_embedding": pa.array(list(txt_emb.astype(np.float32)), pa.list_(pa.float32(), dim)),
        }
    )


def write_subset(out: Path, embedder) -> Path:
    """Write the subset as parquet shards (two files) into ``out``; return ``out``."""
    from laion_hf import write_shards

    table = build_table(embedder)
    write_shards(
        table,
        out,
        max_shard_rows=N // 2,
        embedding_columns=["image_embedding", "text_embedding"],
        provenance={"pretty_name": "page test subset"},
        progress=False,
    )
    return out

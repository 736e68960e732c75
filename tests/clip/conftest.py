"""Fixtures of the CLIP tests: a real tiny open_clip model and real encoded images."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from laion_hf.testing.image_server import make_image  # noqa: E402

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture(scope="session")
def tiny():
    """The tiny random-init model on the CPU in fp32 (reference tests need fp32)."""
    from laion_hf.clip import ClipEmbedder

    return ClipEmbedder("laion-hf-tiny", device="cpu", precision="fp32", batch_size=8)


def jpeg(w: int, h: int, seed: int) -> bytes:
    return make_image(w, h, "jpg", seed=seed)


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def image_table(images: list, captions: list, statuses: list | None = None) -> pa.Table:
    """A table shaped like the images stage's output: image struct, caption, status."""
    structs = [None if b is None else {"bytes": b, "path": None} for b in images]
    return pa.table(
        {
            "key": pa.array([f"{i:09d}" for i in range(len(images))], pa.string()),
            "caption": pa.array(captions, pa.string()),
            "image": pa.array(structs, IMAGE_TYPE),
            "status": pa.array(statuses or ["success"] * len(images), pa.string()),
        }
    )


def reference_image_embeddings(embedder, images: list) -> np.ndarray:
    """open_clip's own path: ``encode_image(preprocess(img))``, L2-normalized, fp32."""
    out = []
    with torch.no_grad():
        for b in images:
            x = embedder.preprocess(Image.open(io.BytesIO(b))).unsqueeze(0)
            f = embedder.model.encode_image(x)
            out.append(torch.nn.functional.normalize(f, dim=-1)[0].numpy())
    return np.stack(out)


def reference_text_embeddings(embedder, captions: list) -> np.ndarray:
    with torch.no_grad():
        f = embedder.model.encode_text(embedder.tokenizer(captions))
    return torch.nn.functional.normalize(f, dim=-1).numpy()


def as_matrix(column) -> np.ndarray:
    return np.array(column.to_pylist(), dtype=np.float32)


@pytest.fixture(scope="session")
def h():
    """The helpers above, as a fixture (test modules cannot import conftest in importlib mode)."""
    import types

    return types.SimpleNamespace(
        jpeg=jpeg, encoded=encoded, image_table=image_table, IMAGE_TYPE=IMAGE_TYPE,
        ref_images=reference_image_embeddings, ref_texts=reference_text_embeddings, as_matrix=as_matrix,
    )  # fmt: skip

"""Image decoding + preprocessing for CLIP, run in worker threads (PIL releases the GIL).

Images go through the model's own PIL transforms (resize, crop, RGB), so the pixels equal
open_clip's ``preprocess``. With ``draft=True`` (an opt-in approximation for throughput) JPEGs
are first decoded with ``Image.draft`` at the smallest DCT scale that still covers the model's
input size. The
result is written as uint8 HWC straight into a (pinned) batch tensor; the ``ToTensor`` +
``Normalize`` tail runs once per batch on the device (see ``ClipEmbedder.to_model_input``).
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    from laion_hf.clip.model import ClipEmbedder

__all__ = ["open_image", "prepare_pil", "preprocess_pil", "decode_into", "ImageDecodeError"]


class ImageDecodeError(Exception):
    """One image could not be decoded; the row gets nulls and ``failed_to_decode``."""


def open_image(data: bytes | memoryview | None, path: str | None = None) -> Image.Image:
    """Open encoded image bytes, or a local file when there are no bytes (``datasets`` Image semantics)."""
    if data is not None:
        return Image.open(io.BytesIO(data))
    if path and os.path.isfile(path):
        return Image.open(path)
    raise ImageDecodeError("no image bytes" + (f" and {path!r} is not a local file" if path else ""))


def prepare_pil(embedder: "ClipEmbedder", img: Image.Image, draft: bool = False) -> Any:
    """Apply the model's PIL-side transforms (after a JPEG draft decode when ``draft``)."""
    if draft and img.format == "JPEG":
        h, w = embedder.image_size
        img.draft("RGB", (w, h))
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:  # PIL only warns below 2x its limit
        raise ImageDecodeError(f"decompression bomb: {img.width}x{img.height} pixels > {limit}")
    img.load()
    for t in embedder.pil_transforms:
        img = t(img)
    return img


def preprocess_pil(embedder: "ClipEmbedder", img: Image.Image, draft: bool = False) -> torch.Tensor:
    """One PIL image → the host tensor the embedder takes (uint8 HWC or float CHW)."""
    out = prepare_pil(embedder, img, draft=draft)
    if embedder.uint8_path:
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy())
    return out


def decode_into(
    out: torch.Tensor,
    slot: int,
    data: bytes | memoryview | None,
    path: str | None,
    embedder: "ClipEmbedder",
    draft: bool = False,
) -> str | None:
    """Decode one image into ``out[slot]``. Returns None on success, else ``"ErrorClass: message"``."""
    try:
        img = open_image(data, path)
        res = prepare_pil(embedder, img, draft=draft)
        if embedder.uint8_path:
            arr = np.asarray(res, dtype=np.uint8)
            if arr.shape != tuple(out.shape[1:]):
                raise ImageDecodeError(f"preprocessed shape {arr.shape} != {tuple(out.shape[1:])}")
            np.copyto(out[slot].numpy(), arr)
        else:
            out[slot].copy_(res)
        return None
    except Exception as e:  # any broken/truncated/unsupported/bomb image is a row status, never a crash
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        return f"{type(e).__name__}: {msg}" if msg else type(e).__name__

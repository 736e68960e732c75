"""Decode, resize, center-crop and normalise images straight into one batch tensor."""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------- image path
def _resized_rgb(data: bytes, size: int, draft: bool):
    """Decode ``data`` and apply open_clip's eval transform in its order: shortest side ->
    ``size`` (bicubic, in the image's own mode: PIL resizes palette and 1-bit images with
    nearest), center crop ``size``², then RGB. Returns a PIL image."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if draft and im.format == "JPEG":
        # approximation: DCT-domain downscale by 1/2, 1/4 or 1/8 while both sides stay >= size
        im.draft("RGB", (size, size))
    w, h = im.size
    # torchvision.transforms.functional.resize(img, size) on the shorter edge
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    if (nw, nh) != (size, size):
        # torchvision CenterCrop offsets
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    if im.mode != "RGB":  # open_clip converts after resizing and cropping
        im = im.convert("RGB")
    return im


def fast_clip_preprocess(
    images: Sequence[bytes | None],
    image_size: int = 224,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    draft: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray, list[str | None]]:
    """Decode encoded images into one normalised ``[n, 3, S, S]`` float tensor.

    With ``draft=False`` (the default) the pixels equal open_clip's eval ``preprocess``
    (Resize(S, bicubic), CenterCrop(S), RGB, ToTensor, Normalize) applied per image and
    stacked. ``draft=True`` is an approximation: JPEGs at least twice ``S`` are first reduced in
    the DCT domain (faster; measured error vs open_clip at S=224 up to ~0.1, mean ~0.01 in
    normalised units, more at small S, see ``benchmarks/preprocess_error.py``); use it for
    training only, never to evaluate models. Returns the tensor,
    a bool mask of decodable images, and the error class name of each failure (``None`` for
    successes). Failed rows are zeros.
    """
    n = len(images)
    if out is None:
        out = _alloc((n, 3, image_size, image_size), torch.float32)
    staging = _staging(image_size)  # one image, uint8 channels-first: converted while still in cache
    dst = out.numpy()  # numpy ufuncs: single-threaded, no per-call OpenMP fan-out for 150k-element ops
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(3, 1, 1)
    bias = np.array([-m / s for m, s in zip(mean, std)], dtype=np.float32).reshape(3, 1, 1)
    ok = np.zeros(n, dtype=bool)
    errors: list[str | None] = [None] * n
    for i, data in enumerate(images):
        o = dst[i]
        if data is None:
            errors[i] = "MissingImage"
            o[:] = 0.0
            continue
        try:
            im = _resized_rgb(data, image_size, draft)
            for c, band in enumerate(im.split()):
                staging[c] = band
        except Exception as exc:  # any undecodable input is a marked row, never a crash
            errors[i] = type(exc).__name__
            o[:] = 0.0
            continue
        np.multiply(staging, scale, out=o)
        np.add(o, bias, out=o)
        ok[i] = True
    return out, ok, errors


_STAGING: dict[int, np.ndarray] = {}


def _staging(size: int) -> np.ndarray:
    """A reused ``[3, size, size]`` uint8 buffer (one per size and process)."""
    buf = _STAGING.get(size)
    if buf is None:
        buf = _STAGING[size] = np.empty((3, size, size), dtype=np.uint8)
    return buf


def _alloc(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; in a DataLoader worker, directly in shared memory (as default_collate
    does) so handing it to the main process costs no copy."""
    if get_worker_info() is not None:
        try:
            numel = math.prod(shape)
            elem = torch.empty(0, dtype=dtype)
            storage = elem._typed_storage()._new_shared(numel, device=elem.device)
            return elem.new(storage).resize_(*shape)
        except Exception:  # private API moved: fall back to a normal tensor
            pass
    return torch.empty(shape, dtype=dtype)

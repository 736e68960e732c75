"""The embedder's default decode path gives exactly open_clip's eval pixels; draft is opt-in."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import open_clip
import torch
from PIL import Image

from laion_hf.clip import ClipPipeline
from laion_hf.testing.image_server import make_image


def _pixels(pipe: ClipPipeline, h, blobs: list[bytes]) -> torch.Tensor:
    with ThreadPoolExecutor(2) as pool:
        batch = pipe.decode_batch(h.image_table(blobs, ["x"] * len(blobs)), pool)
    assert batch.slot_errors == [None] * len(blobs)
    return pipe.embedder.to_model_input(batch.pixels).cpu()


def _blobs() -> list[bytes]:
    # JPEGs >= 8x the tiny model's 64² input (draft would decode them at 1/8 scale) and palette PNGs
    return [
        make_image(1024, 768, "jpg", seed=1),
        make_image(600, 900, "jpg", seed=2),
        make_image(800, 600, "png", seed=3, mode="P"),
        make_image(500, 700, "png", seed=4, mode="P"),
    ]


def test_default_pixels_equal_open_clip_image_transform(tiny, h):
    blobs = _blobs()
    size = tiny.image_size[0]
    want = torch.stack([open_clip.image_transform(size, is_train=False)(Image.open(io.BytesIO(b))) for b in blobs])
    got = _pixels(ClipPipeline(tiny), h, blobs)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5  # float rounding only; one 8-bit level is > 0.014


def test_draft_is_an_opt_in_approximation(tiny, h):
    blobs = _blobs()
    exact = _pixels(ClipPipeline(tiny), h, blobs)
    draft = _pixels(ClipPipeline(tiny, draft=True), h, blobs)
    assert (draft[:2] - exact[:2]).abs().max().item() > 0.05  # the JPEGs were decoded at a reduced scale
    assert (draft[2:] - exact[2:]).abs().max().item() == 0.0  # draft never touches PNGs

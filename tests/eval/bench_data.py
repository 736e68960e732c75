"""The fixed small evaluation sets' ingredients (shared by the fixtures and the tests)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

#: "red" and "Red" tokenise alike (open_clip lower-cases): their classifiers tie exactly
CLASSNAMES = ["red", "green", "blue", "Red", "circle", "square"]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}", "{c}"]
COLOURS = [
    (220, 30, 30),
    (30, 200, 40),
    (40, 60, 220),
    (230, 200, 20),
    (200, 40, 200),
    (30, 200, 200),
]


def draw(i: int) -> bytes:
    """Image ``i``: a coloured shape on a noisy background, PNG bytes (images 3k and 3k+1 of
    the retrieval set are made identical by the caller to force ties)."""
    rng = np.random.default_rng(i)
    w, h = 48 + (i % 3) * 16, 40 + (i % 4) * 12
    bg = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    box = (w // 5, h // 5, w - w // 5, h - h // 5)
    (d.ellipse if i % 2 else d.rectangle)(box, fill=COLOURS[i % len(COLOURS)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()

"""Draw a world image from its attributes: coloured shapes on a photo-like background, as JPEG.

Everything is a function of the key, so the same key gives byte-identical JPEGs in every
process. The layout is drawn in relative coordinates: a small render (``max_side``) shows
the same picture as the full-size one, only fewer pixels.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from laion_hf.world.attributes import BACKGROUNDS, COLOURS, Attributes, attributes, key_seed

_DIAMETER = {
    (1, "large"): 0.42,
    (1, "small"): 0.2,
    (2, "large"): 0.3,
    (2, "small"): 0.17,
    (3, "large"): 0.27,
    (3, "small"): 0.15,
}
_CENTRES = {
    "left": (0.27, 0.5),
    "center": (0.5, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
}


@lru_cache(maxsize=1)
def _grain() -> Image.Image:
    """A fixed 256x256 tile of sensor-like grain (sd ~5 around 20), tiled over backgrounds."""
    noise = np.random.default_rng(12345).normal(20, 5, (256, 256))
    return Image.fromarray(np.clip(noise, 0, 40).astype(np.uint8)).convert("RGB")


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _background(name: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A plain colour with a vertical light gradient and soft grain, drawn at half size and
    scaled up (PIL operations: fast at 1,500 px)."""
    w, h = max(1, width // 2), max(1, height // 2)
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    tilt = rng.uniform(-0.12, 0.12)
    ramp = (1 + tilt * np.linspace(-1, 1, h, dtype=np.float32))[:, None, None]
    column = np.clip(base * ramp + (18 if name == "black" else 0) * (ramp - 1), 0, 255).astype(np.uint8)
    gradient = Image.fromarray(column).resize((w, h), Image.NEAREST)
    grain, tile = Image.new("RGB", (w, h)), _grain()
    ox, oy = (int(v) for v in rng.integers(0, 256, 2))
    for y in range(-oy, h, 256):
        for x in range(-ox, w, 256):
            grain.paste(tile, (x, y))
    return ImageChops.add(gradient, grain, scale=1.0, offset=-20).resize((width, height), Image.BILINEAR)


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = [turn - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)], [r] * 3
    elif shape == "star":
        angles = [turn - math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [r if k % 2 == 0 else r * 0.42 for k in range(10)]
    elif shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.68, cy), (cx, cy + r), (cx - r * 0.68, cy)]
    else:  # cross: a plus sign with arms a third of the diameter wide
        a = r / 3
        pts = [
            (a, r),
            (a, a),
            (r, a),
            (r, -a),
            (a, -a),
            (a, -r),
            (-a, -r),
            (-a, -a),
            (-r, -a),
            (-r, a),
            (-a, a),
            (-a, r),
        ]
        return [(cx + x, cy + y) for x, y in pts]
    return [(cx + rr * math.cos(t), cy + rr * math.sin(t)) for t, rr in zip(angles, radii)]


def _draw_object(
    draw: ImageDraw.ImageDraw,
    a: Attributes,
    cx: float,
    cy: float,
    r: float,
    rng: np.random.Generator,
) -> None:
    fill = tuple(int(np.clip(c + rng.integers(-14, 15), 0, 255)) for c in COLOURS[a.colour])
    edge = tuple(int(c * 0.6) for c in fill)
    width = max(1, round(r * 0.06))
    if a.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=edge, width=width)
    elif a.shape == "square":
        s = r * 0.86
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=edge, width=width)
    else:
        turn = float(rng.uniform(-0.15, 0.15)) if a.shape in ("triangle", "star") else 0.0
        draw.polygon(_polygon(a.shape, cx, cy, r, turn), fill=fill, outline=edge, width=width)


def _centres(a: Attributes, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Object centres in coordinates relative to the central square (0..1)."""
    if a.count == 1:
        x, y = _CENTRES[a.position]
        return [(x + rng.uniform(-0.04, 0.04), y + rng.uniform(-0.04, 0.04))]
    return [((i + 0.5) / a.count + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.12, 0.12)) for i in range(a.count)]


def draw(key: str, max_side: int | None = None) -> Image.Image:
    """The world image ``key`` as a PIL image, at its full size or scaled to ``max_side``.

    Objects and the word sit in the central square (side ``min(width, height)``), so a
    CLIP-style center crop keeps everything a caption names.
    """
    a = attributes(key)
    scale = min(1.0, max_side / max(a.width, a.height)) if max_side else 1.0
    w, h = max(1, round(a.width * scale)), max(1, round(a.height * scale))
    side = min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    rng = np.random.default_rng(key_seed(key, "layout"))
    img = _background(a.background, w, h, rng)
    canvas = ImageDraw.Draw(img)
    r = _DIAMETER[(a.count, a.size)] * side / 2
    for x, y in _centres(a, rng):
        _draw_object(canvas, a, x0 + x * side, y0 + y * side, r * rng.uniform(0.92, 1.08), rng)
    if a.word:
        dark = a.background == "black"
        size = max(6, round(side * 0.1))
        top = a.position == "bottom" or (a.position != "top" and rng.random() < 0.5)
        corner = (round(x0 + side * 0.04), round(y0 + side * (0.03 if top else 0.85)))
        canvas.text(corner, a.word, fill=(240, 240, 240) if dark else (24, 24, 24), font=_font(size))
    return img


def render(key: str, max_side: int | None = None) -> bytes:
    """The JPEG bytes of world image ``key`` (byte-identical for the same key and ``max_side``).

    Full size is 300-1,500 px on the long side at JPEG quality 70-95 (both from the key);
    ``max_side`` renders a smaller copy of the same picture (fast, for training and tests).
    """
    buf = io.BytesIO()
    draw(key, max_side).save(buf, format="JPEG", quality=attributes(key).quality)
    return buf.getvalue()

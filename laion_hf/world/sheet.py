"""A contact sheet: a PNG grid of image-text pairs the CLIP filter kept and removed.

Each cell shows the image, its ``clip_similarity``, the ground truth when known (matched or
noisy) and the start of its caption, drawn as pixels (captions are untrusted text: never
markup). Kept pairs come first, then removed ones.
"""

from __future__ import annotations

import contextlib
import io
import textwrap
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

_GREEN, _RED, _GREY, _INK = (24, 140, 60), (200, 40, 40), (110, 110, 110), (20, 20, 20)


@dataclass
class Pair:
    """One cell of the sheet."""

    image: bytes | None
    caption: str
    similarity: float | None
    kept: bool
    matched: bool | None = None


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _thumb(data: bytes | None, side: int) -> Image.Image:
    tile = Image.new("RGB", (side, side), (235, 235, 235))
    if data:  # an undecodable image keeps the empty tile: the sheet still renders
        with contextlib.suppress(OSError, ValueError, Image.DecompressionBombError):
            img = Image.open(io.BytesIO(data)).convert("RGB")
            img.thumbnail((side, side))
            tile.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return tile


def _cell(p: Pair, side: int) -> Image.Image:
    lines = textwrap.wrap(" ".join(p.caption.split()), width=max(10, side // 7))[:3] or ["(empty caption)"]
    if len(textwrap.wrap(" ".join(p.caption.split()), width=max(10, side // 7))) > 3:
        lines[-1] = lines[-1][: max(1, len(lines[-1]) - 1)] + "…"
    cell = Image.new("RGB", (side + 8, side + 66), "white")
    cell.paste(_thumb(p.image, side), (4, 4))
    draw = ImageDraw.Draw(cell)
    sim = "n/a" if p.similarity is None else f"{p.similarity:.4f}"
    truth = {True: ("matched", _GREEN), False: ("noisy", _RED), None: ("", _GREY)}[p.matched]
    draw.text((4, side + 7), f"sim {sim}", fill=_INK, font=_font(12))
    draw.text((side - 56, side + 7), truth[0], fill=truth[1], font=_font(12))
    for i, line in enumerate(lines):
        draw.text((4, side + 23 + 13 * i), line, fill=_GREY, font=_font(11))
    return cell


def _section(pairs: list[Pair], title: str, colour: tuple[int, int, int], columns: int, side: int) -> Image.Image:
    rows = max(1, -(-len(pairs) // columns))
    cw, ch = side + 8, side + 66
    img = Image.new("RGB", (columns * cw + 8, rows * ch + 30), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 6), title, fill=colour, font=_font(16))
    for i, p in enumerate(pairs):
        img.paste(_cell(p, side), (4 + (i % columns) * cw, 28 + (i // columns) * ch))
    return img


def contact_sheet(pairs: list[Pair], title: str, *, columns: int = 6, side: int = 150) -> bytes:
    """A PNG of ``pairs``: a section of the kept ones, then one of the removed ones."""
    kept = [p for p in pairs if p.kept]
    removed = [p for p in pairs if not p.kept]
    parts = [
        _section(kept, f"kept ({len(kept)} shown)", _GREEN, columns, side),
        _section(removed, f"removed ({len(removed)} shown)", _RED, columns, side),
    ]
    width = max(p.width for p in parts)
    lines = textwrap.wrap(title, width=max(40, width // 9))
    y = 14 + 20 * len(lines)
    sheet = Image.new("RGB", (width, y + sum(p.height for p in parts)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((8, 8 + 20 * i), line, fill=_INK, font=_font(16))
    for part in parts:
        sheet.paste(part, (0, y))
        y += part.height
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

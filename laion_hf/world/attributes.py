"""Ground-truth attributes of a world image, drawn deterministically from its key."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

#: Object colours (name -> RGB). None of them is a background colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 38),
    "orange": (250, 135, 10),
    "yellow": (246, 214, 30),
    "green": (38, 160, 62),
    "blue": (34, 84, 222),
    "purple": (128, 48, 176),
    "pink": (250, 124, 192),
    "brown": (116, 70, 34),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "diamond": "diamonds",
    "cross": "crosses",
}
COUNTS = (1, 2, 3)
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
SIZES = ("small", "large")
POSITIONS = ("left", "center", "right", "top", "bottom")
#: Backgrounds (name -> RGB of the plain colour under the gradient and grain).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 244),
    "black": (22, 22, 26),
    "gray": (128, 128, 132),
    "beige": (226, 206, 166),
}
#: Short words or numbers some images carry, as on posters and product shots.
WORDS = ("SALE", "NEW", "OPEN", "2024", "HELLO", "7", "42", "FREE")

#: Attributes a caption (and a zero-shot prompt) can name, with their labels.
LABELS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": tuple(COUNT_WORDS.values()),
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}

#: Zero-shot prompt template and, per attribute, the label phrase of each value.
PROMPT = "a photo of a {label}"
ZERO_SHOT_LABELS: dict[str, dict] = {
    "colour": {c: f"{c} object" for c in COLOURS},
    "shape": {s: s for s in SHAPES},
    "count": {1: "single object", 2: "pair of objects", 3: "group of three objects"},
    "size": {s: f"{s} object" for s in SIZES},
    "position": {
        "left": "object on the left",
        "center": "object in the center",
        "right": "object on the right",
        "top": "object at the top",
        "bottom": "object at the bottom",
    },
    "background": {b: f"{b} background" for b in BACKGROUNDS},
}


@dataclass(frozen=True)
class Attributes:
    """What a world image shows (``position`` is ``""`` when several objects are drawn)."""

    shape: str
    colour: str
    count: int
    size: str
    position: str
    background: str
    word: str  # "" when the image carries no word
    width: int
    height: int
    quality: int

    def as_dict(self) -> dict:
        """The attributes as a plain dict (column name -> value)."""
        return asdict(self)


def key_seed(key: str, salt: str = "") -> int:
    """A 64-bit seed from ``key`` (and ``salt``), stable across processes and platforms."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@lru_cache(maxsize=65536)
def attributes(key: str) -> Attributes:
    """The ground-truth attributes of the image ``key`` (same key, same attributes)."""
    rng = np.random.default_rng(key_seed(key, "attributes"))
    count = int(rng.choice(COUNTS, p=[0.6, 0.25, 0.15]))
    long_side = int(np.exp(rng.uniform(np.log(300), np.log(1500))))
    aspect = float(rng.uniform(0.75, 1.34))
    width, height = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    return Attributes(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=tuple(COLOURS)[rng.integers(len(COLOURS))],
        count=count,
        size=SIZES[rng.integers(len(SIZES))],
        position=POSITIONS[rng.integers(len(POSITIONS))] if count == 1 else "",
        background=tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        word=WORDS[rng.integers(len(WORDS))] if rng.random() < 0.25 else "",
        width=max(300, width),
        height=max(300, height),
        quality=int(rng.integers(70, 96)),
    )


def world_key(seed: int, index: int) -> str:
    """The key of row ``index`` of the world drawn with ``seed`` (disjoint across seeds)."""
    return f"w{seed}-{index:07d}"

"""Captions of world images in several alt-text styles, and LAION-like caption noise.

A matched caption describes the image's own attributes (colour and shape always, the rest
depending on the style). A noisy caption is one of :data:`NOISE_KINDS`: a camera filename,
web boilerplate, the caption of another image, or the image's caption with one attribute
wrong.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from laion_hf.world.attributes import (
    BACKGROUNDS,
    COLOURS,
    COUNT_WORDS,
    PLURALS,
    SHAPES,
    Attributes,
    attributes,
    key_seed,
)

#: Caption styles of matched pairs, with their share.
STYLES = {"alt": 0.35, "long": 0.25, "prefix": 0.2, "tags": 0.2}
#: Kinds of noisy caption, drawn uniformly.
NOISE_KINDS = ("filename", "boilerplate", "other", "wrong_attribute")

_BRANDS = ("Acme Prints", "ShapeCo", "PosterHouse", "KidsLearn Cards", "DecoWall", "PrintPal")
_BOILERPLATE = (
    "click here",
    "buy now",
    "Buy Now!",
    "free shipping on all orders",
    "image not found",
    "Loading...",
    "Add to cart",
    "click here to enlarge",
    "view larger image",
    "no image available",
    "sold out",
    "Product image",
    "thumbnail",
    "Shop now and save",
    "see more",
)
_FILENAMES = (
    "IMG_{n:04d}.jpg",
    "DSC{n:05d}.JPG",
    "image-{n}.png",
    "2019{m:02d}{d:02d}_{n:06d}.jpg",
    "photo_{n}.jpeg",
    "Screenshot_{n}.png",
    "P{n:07d}.JPG",
    "untitled-{n}.jpg",
)


def _noun(a: Attributes) -> str:
    """'red star', 'two small blue circles'."""
    if a.count == 1:
        return f"{a.colour} {a.shape}"
    return f"{COUNT_WORDS[a.count]} {a.colour} {PLURALS[a.shape]}"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _alt(a: Attributes, rng: np.random.Generator) -> str:
    noun = _noun(a)
    forms = [
        noun,
        noun.title(),
        f"{noun} on {a.background}",
        f"{noun} icon",
        f"{_article(noun) if a.count == 1 else noun} on a {a.background} background",
    ]
    return forms[rng.integers(len(forms))]


def _long(a: Attributes, rng: np.random.Generator) -> str:
    lead = ("A photo of", "An image of", "Picture of", "A close-up of")[rng.integers(4)]
    sized = (
        f"{a.size} {a.colour} {a.shape}"
        if a.count == 1
        else f"{COUNT_WORDS[a.count]} {a.size} {a.colour} {PLURALS[a.shape]}"
    )
    body = f"{lead} {_article(sized) if a.count == 1 else sized}"
    if a.position:
        body += f" {'in the center' if a.position == 'center' else 'at the ' + a.position}"
    body += f" on a {a.background} background"
    if a.word:
        body += f', with the word "{a.word}"'
    return body + "."


def _prefix(a: Attributes, rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 9999))
    forms = [
        f"{_BRANDS[rng.integers(len(_BRANDS))]} | {_noun(a)} print",
        f"DSC_{n:04d} {_noun(a)}",
        f"stock-photo-{n}-{_noun(a).replace(' ', '-')}",
        (f"{_BRANDS[rng.integers(len(_BRANDS))]}: {_noun(a)} poster {a.size} size"),
    ]
    return forms[rng.integers(len(forms))]


def _tags(a: Attributes, rng: np.random.Generator) -> str:
    tags = [a.colour, a.shape, f"{a.background} background", a.size]
    if a.count > 1:
        tags.insert(0, COUNT_WORDS[a.count])
    if a.word:
        tags.append(a.word)
    order = rng.permutation(len(tags))
    return ", ".join(tags[i] for i in order)


_STYLE_FUNCS = {"alt": _alt, "long": _long, "prefix": _prefix, "tags": _tags}


def describe(a: Attributes, style: str, rng: np.random.Generator) -> str:
    """A caption of attributes ``a`` in ``style`` (a key of :data:`STYLES`)."""
    return _STYLE_FUNCS[style](a, rng)


def _wrong(a: Attributes, style: str, rng: np.random.Generator) -> tuple[Attributes, str]:
    fields = ["colour", "shape"] + (["background"] if style in ("long", "tags") else [])
    field = fields[rng.integers(len(fields))]
    choices = {"colour": tuple(COLOURS), "shape": SHAPES, "background": tuple(BACKGROUNDS)}[field]
    others = [c for c in choices if c != getattr(a, field)]
    return dataclasses.replace(a, **{field: others[rng.integers(len(others))]}), field


def _other(key: str, a: Attributes) -> Attributes:
    """Attributes of another image whose colour or shape differs from ``a``'s."""
    k = 0
    while True:
        b = attributes(f"{key}~other{k}")
        if (b.colour, b.shape) != (a.colour, a.shape):
            return b
        k += 1


def noisy_caption(key: str, kind: str, style: str, rng: np.random.Generator) -> tuple[str, str]:
    """A noisy caption of ``kind`` for image ``key``; returns (caption, detail)."""
    a = attributes(key)
    if kind == "filename":
        n, m, d = int(rng.integers(1, 999_999)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        return _FILENAMES[rng.integers(len(_FILENAMES))].format(n=n % 10_000 if n > 99_999 else n, m=m, d=d), ""
    if kind == "boilerplate":
        return _BOILERPLATE[rng.integers(len(_BOILERPLATE))], ""
    if kind == "other":
        return describe(_other(key, a), style, rng), ""
    wrong, field = _wrong(a, style, rng)
    return describe(wrong, style, rng), field


def caption_for(key: str, noise: float) -> dict:
    """The caption of ``key`` in a world with noise fraction ``noise``.

    Returns ``{"caption", "matched", "noise_kind", "caption_style"}``; the same key and noise
    give the same caption, and raising ``noise`` only turns more matched pairs noisy.
    """
    rng = np.random.default_rng(key_seed(key, "caption"))
    u = rng.random()
    style = tuple(STYLES)[rng.choice(len(STYLES), p=list(STYLES.values()))]
    kind = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
    if u >= noise:
        return {
            "caption": describe(attributes(key), style, rng),
            "matched": True,
            "noise_kind": "",
            "caption_style": style,
        }
    text, field = noisy_caption(key, kind, style, rng)
    return {
        "caption": text,
        "matched": False,
        "noise_kind": kind + (f":{field}" if field else ""),
        "caption_style": style,
    }

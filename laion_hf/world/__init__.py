"""An embedded image-text world whose images match (or, for noisy pairs, do not match) their captions.

Every image is drawn from ground-truth attributes (shape, colour, count, size, position,
background, sometimes a word) that are a function of its key; captions come from the same
attributes in several alt-text styles, and a controllable fraction of pairs carries
LAION-like noise (filenames, boilerplate, another image's caption, one wrong attribute).
The ground truth travels with the rows, so every filter can be scored::

    from laion_hf.world import world_rows, render

    table = world_rows(1000, seed=0, noise=0.3)    # key, url, caption, matched, colour, ...
    jpeg = render(table["key"][0].as_py())          # the image behind url (byte-identical)

The loopback image server (``laion_hf.testing.image_server``) serves ``/world/<key>.jpg``
with :func:`render`; the teacher CLIP ``laion-hf-world`` was trained on this world.
"""

from __future__ import annotations

from laion_hf.world.attributes import LABELS, Attributes, attributes, world_key
from laion_hf.world.captions import NOISE_KINDS, STYLES, caption_for, describe
from laion_hf.world.render import draw, render
from laion_hf.world.rows import URL_PREFIX, key_from_path, world_rows

__all__ = [
    "LABELS",
    "NOISE_KINDS",
    "STYLES",
    "URL_PREFIX",
    "Attributes",
    "attributes",
    "caption_for",
    "describe",
    "draw",
    "key_from_path",
    "render",
    "world_key",
    "world_rows",
]

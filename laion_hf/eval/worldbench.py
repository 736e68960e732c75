"""The world's held-out benchmark in CLIP_benchmark's layout.

One classification set per attribute (``colour``, ``shape``, ``count``, ``size``,
``background``, and ``position`` on single-object images), with the world's zero-shot label
phrases as class names and its prompt (``a photo of a {c}``) as the template, and one retrieval
set whose images carry one matched caption in each of the world's caption styles. Keys come
from a seed no training set uses, so the sets are disjoint from any ``world_rows(seed=...)``
with another seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from laion_hf.eval.data import EvalSample, write_benchmark

__all__ = ["ATTRIBUTES", "HELD_OUT_SEED", "write_world_benchmark"]

#: the world seed of the held-out sets (training sets use other seeds)
HELD_OUT_SEED = 9001
ATTRIBUTES = ("colour", "shape", "count", "size", "background", "position")


def _classes(attribute: str) -> tuple[list, list[str]]:
    from laion_hf.world.attributes import ZERO_SHOT_LABELS

    values = list(ZERO_SHOT_LABELS[attribute])
    return values, [ZERO_SHOT_LABELS[attribute][v] for v in values]


def _template() -> str:
    from laion_hf.world.attributes import PROMPT

    return PROMPT.replace("{label}", "{c}")


def _class_samples(keys: Sequence[str], images: dict[str, bytes], attribute: str) -> Iterator[EvalSample]:
    from laion_hf.world.attributes import attributes

    values, _ = _classes(attribute)
    for k in keys:
        v = getattr(attributes(k), attribute)
        if v != "":  # position: single-object images only
            yield EvalSample(k, images[k], label=values.index(v))


def _retrieval_samples(keys: Sequence[str], images: dict[str, bytes]) -> Iterator[EvalSample]:
    from laion_hf.world.attributes import attributes, key_seed
    from laion_hf.world.captions import STYLES, describe

    for k in keys:
        rng = np.random.default_rng(key_seed(k, "benchmark"))
        yield EvalSample(k, images[k], captions=[describe(attributes(k), s, rng) for s in STYLES])


def write_world_benchmark(
    out: str | Path,
    n: int = 500,
    *,
    seed: int = HELD_OUT_SEED,
    max_side: int | None = 256,
    attributes: Sequence[str] = ATTRIBUTES,
    retrieval: bool = True,
) -> dict[str, Path]:
    """Render ``n`` held-out world images (long side ``max_side``; None: full size) and write
    ``out/<attribute>/`` classification sets and ``out/retrieval/``. Returns name → folder."""
    from laion_hf.world.attributes import world_key
    from laion_hf.world.render import render

    out = Path(out)
    keys = [world_key(seed, i) for i in range(n)]
    images = {k: render(k, max_side) for k in keys}
    written: dict[str, Path] = {}
    for attr in attributes:
        _, names = _classes(attr)
        write_benchmark(out / attr, _class_samples(keys, images, attr), classnames=names, templates=[_template()],
                        image_ext="jpg")  # fmt: skip
        written[attr] = out / attr
    if retrieval:
        write_benchmark(out / "retrieval", _retrieval_samples(keys, images), image_ext="jpg")
        written["retrieval"] = out / "retrieval"
    return written

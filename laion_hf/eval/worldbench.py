"""The world's held-out benchmark in CLIP_benchmark's layout.

One classification set per attribute (``colour``, ``shape``, ``count``, ``size``,
``background``, and ``position`` on single-object images), with the world's zero-shot label
phrases as class names and its prompt (``a photo of a {c}``) as the template, and one retrieval
set whose images carry one matched caption in each of the world's caption styles. Keys come
from a seed no training set uses, so the sets are disjoint from any ``world_rows(seed=...)``
with another seed.

The classification sets are class-balanced by default (every class has ``n // k`` or one more
images, drawn in key order), as CLIP_benchmark's common sets are: with the world's own skew
(``count`` is 60/25/15 %) a model that always says "single object" would score 0.60, and an
untrained model's accuracy would swing with whichever class it happens to prefer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from laion_hf.errors import EvalError
from laion_hf.eval.data import EvalSample, write_benchmark

__all__ = ["ATTRIBUTES", "HELD_OUT_SEED", "balanced_keys", "write_world_benchmark"]

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


def _class_samples(keys: Sequence[str], images: _Images, attribute: str) -> Iterator[EvalSample]:
    from laion_hf.world.attributes import attributes

    values, _ = _classes(attribute)
    for k in keys:
        v = getattr(attributes(k), attribute)
        if v != "":  # position: single-object images only
            yield EvalSample(k, images[k], label=values.index(v))


def balanced_keys(attribute: str, n: int, seed: int = HELD_OUT_SEED) -> list[str]:
    """The first held-out keys (in key order) that give ``n`` images with every class of
    ``attribute`` ``n // k`` times (the first ``n % k`` classes once more)."""
    from laion_hf.world.attributes import attributes, world_key

    values, _ = _classes(attribute)
    quota = {v: n // len(values) + (i < n % len(values)) for i, v in enumerate(values)}
    keys: list[str] = []
    for i in range(200 * n):
        if len(keys) == n:
            break
        k = world_key(seed, i)
        v = getattr(attributes(k), attribute)
        if quota.get(v, 0) > 0:
            quota[v] -= 1
            keys.append(k)
    if len(keys) == n:
        return keys
    raise EvalError(f"world benchmark: {attribute!r} has classes too rare for {n} balanced images")


class _Images(dict):
    """Rendered images by key, rendered on first use."""

    def __init__(self, max_side: int | None) -> None:
        super().__init__()
        self.max_side = max_side

    def __missing__(self, key: str) -> bytes:
        from laion_hf.world.render import render

        self[key] = render(key, self.max_side)
        return self[key]


def _retrieval_samples(keys: Sequence[str], images: _Images) -> Iterator[EvalSample]:
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
    balanced: bool = True,
) -> dict[str, Path]:
    """Render held-out world images (long side ``max_side``; None: full size) and write
    ``out/<attribute>/`` classification sets of ``n`` images (class-balanced unless
    ``balanced=False``: then the first ``n`` keys, ``position`` keeping the single-object ones)
    and ``out/retrieval/`` (the first ``n`` keys). Returns name → folder."""
    from laion_hf.world.attributes import world_key

    out = Path(out)
    keys = [world_key(seed, i) for i in range(n)]
    images = _Images(max_side)
    written: dict[str, Path] = {}
    for attr in attributes:
        _, names = _classes(attr)
        chosen = balanced_keys(attr, n, seed) if balanced else keys
        write_benchmark(out / attr, _class_samples(chosen, images, attr), classnames=names, templates=[_template()],
                        image_ext="jpg")  # fmt: skip
        written[attr] = out / attr
    if retrieval:
        write_benchmark(out / "retrieval", _retrieval_samples(keys, images), image_ext="jpg")
        written["retrieval"] = out / "retrieval"
    return written

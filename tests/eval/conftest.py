"""Fixtures of the evaluation tests: a fixed small classification set and retrieval set (real
PNG images drawn here, with duplicates so that scores tie), written in CLIP_benchmark's layout,
and the fixed tiny open_clip model."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from bench_data import CLASSNAMES, TEMPLATES, draw


@pytest.fixture(scope="session")
def class_samples():
    """20 samples over 6 classes (classes 0 and 2 have 4 samples, the others 3); sample 19
    repeats sample 7's image with another label."""
    from laion_hf.eval import EvalSample

    out = [EvalSample(f"s{i:03d}", draw(i), label=(i * 5) % 6) for i in range(19)]
    out.append(EvalSample("s019", out[7].image, label=2))
    return out


@pytest.fixture(scope="session")
def retrieval_samples():
    """12 images with 1 to 3 captions each; image 5 repeats image 4 (tied image scores), the
    caption "a picture" belongs to images 2, 6 and 9 (tied caption scores)."""
    from laion_hf.eval import EvalSample

    caps = [
        ["a red square", "a square"],
        ["a green circle"],
        ["a blue square", "a picture", "blue"],
        ["a yellow circle"],
        ["a purple square", "purple"],
        ["a purple square again"],
        ["a picture", "teal circle"],
        ["red circle", "a red ball"],
        ["green square"],
        ["a picture"],
        ["blue ball", "a blue circle", "circle"],
        ["yellow box"],
    ]
    imgs = [draw(100 + i) for i in range(12)]
    imgs[5] = imgs[4]
    return [EvalSample(f"r{i:02d}", imgs[i], captions=caps[i]) for i in range(12)]


@pytest.fixture(scope="session")
def class_dir(tmp_path_factory, class_samples):
    from laion_hf.eval import write_benchmark

    out = tmp_path_factory.mktemp("bench") / "wds_shapes"
    write_benchmark(out, class_samples, classnames=CLASSNAMES, templates=TEMPLATES, shard_size=7)
    return out


@pytest.fixture(scope="session")
def retrieval_dir(tmp_path_factory, retrieval_samples):
    from laion_hf.eval import write_benchmark

    out = tmp_path_factory.mktemp("bench") / "wds_captions"
    write_benchmark(out, retrieval_samples, shard_size=5)
    return out


@pytest.fixture(scope="session")
def tiny():
    """The fixed tiny model (random init from seed 0), fp32 on the CPU."""
    from laion_hf.eval import load_model

    return load_model("laion-hf-tiny", device="cpu", precision="fp32", batch_size=8)

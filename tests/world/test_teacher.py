"""The shipped teacher CLIP ``laion-hf-world``: loaded by name offline, measured on fresh
held-out world pairs (never retrained here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from laion_hf.clip.model import ClipEmbedder, shipped_weights  # noqa: E402
from laion_hf.world.teacher import (  # noqa: E402
    TEACHER_MODEL,
    evaluate_teacher,
    filter_scores,
    roc_auc,
    teacher_meta,
    teacher_threshold,
)

# 2,000 pairs rendered and embedded on a shared 2-core machine can take minutes under load
pytestmark = pytest.mark.timeout(1800)

WEIGHTS = Path(__file__).resolve().parents[2] / "laion_hf" / "clip" / "weights"


@pytest.fixture(scope="module")
def teacher():
    return ClipEmbedder(TEACHER_MODEL, device="cpu")


@pytest.fixture(scope="module")
def held_out(teacher):
    # seed 7: keys w7-*, disjoint from the training (w1000001-*) and validation (w1000002-*) rows
    assert teacher_meta()["recipe"]["train_seed"] != 7 and teacher_meta()["recipe"]["val_seed"] != 7
    return evaluate_teacher(teacher, 2000, seed=7, noise=0.5, max_side=96)


def test_teacher_loads_shipped_weights_by_name(teacher):
    assert shipped_weights(TEACHER_MODEL) is not None
    assert "shipped" in teacher.weights_source and teacher.embed_dim == 64
    assert teacher.image_size == (64, 64)
    path = WEIGHTS / f"{TEACHER_MODEL}.safetensors"
    assert path.stat().st_size <= 20 * 2**20
    random_init = ClipEmbedder("laion-hf-tiny", device="cpu")
    assert random_init.weights_source == "random init"
    meta = json.loads((WEIGHTS / f"{TEACHER_MODEL}.json").read_text())
    assert meta["recipe"]["steps"] > 0 and 0 < meta["threshold"] < 1


def test_held_out_auc(held_out):
    assert held_out["pairs"] == 2000 and held_out["matched"] > 800 and held_out["noisy"] > 800
    assert held_out["auc"] >= 0.95, held_out


def test_held_out_filter_at_the_demo_threshold(held_out):
    f = held_out["filter"]
    assert f["threshold"] == teacher_threshold()
    assert f["kept_of_matched"] >= 0.9, f
    assert f["removed_of_noisy"] >= 0.9, f


# The target: 0.9 for every attribute (the shipped teacher, 1,600 CPU steps, reaches it
# for all; at 900 steps shape was 0.865).
ZERO_SHOT_MIN = {
    "colour": 0.9,
    "shape": 0.9,
    "count": 0.9,
    "size": 0.9,
    "position": 0.9,
    "background": 0.9,
}


@pytest.mark.parametrize("attribute", sorted(ZERO_SHOT_MIN))
def test_held_out_zero_shot(held_out, attribute):
    assert held_out["zero_shot"][attribute] >= ZERO_SHOT_MIN[attribute], held_out["zero_shot"]


def test_scoring_helpers():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == 0.5
    f = filter_scores(np.array([0.1, 0.6, 0.7, 0.2]), np.array([False, True, False, True]), 0.5)
    assert f["kept_of_matched"] == 0.5 and f["removed_of_noisy"] == 0.5 and f["precision"] == 0.5

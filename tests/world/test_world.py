"""The world: deterministic attributes, byte-identical renders, captions and noise."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from laion_hf.errors import LaionHFError
from laion_hf.world import LABELS, NOISE_KINDS, attributes, draw, key_from_path, render, world_rows
from laion_hf.world.attributes import COLOURS


def test_render_is_byte_identical_and_realistic():
    rows = world_rows(40, seed=3, noise=0.0)
    sizes, qualities = set(), set()
    for key, w, h in zip(rows["key"].to_pylist(), rows["width"].to_pylist(), rows["height"].to_pylist()):
        data = render(key)
        assert data == render(key)
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.size == (w, h)
        assert 300 <= max(w, h) <= 1500
        sizes.add(max(w, h))
        qualities.add(attributes(key).quality)
    assert len(sizes) > 20 and len(qualities) > 5


def test_small_render_shows_the_same_picture():
    key = "w3-0000007"
    big = np.asarray(Image.open(io.BytesIO(render(key))).convert("RGB").resize((64, 64)), np.float32)
    small = np.asarray(
        Image.open(io.BytesIO(render(key, max_side=128))).convert("RGB").resize((64, 64)),
        np.float32,
    )
    assert np.abs(big - small).mean() < 12


def test_object_pixels_have_the_ground_truth_colour():
    for key in world_rows(30, seed=4, noise=0.0)["key"].to_pylist():
        a = attributes(key)
        img = np.asarray(draw(key, max_side=200), np.int16)
        hits = (np.abs(img - np.array(COLOURS[a.colour])).sum(-1) < 60).mean()
        assert hits > 0.004, (key, a)


def test_rows_ground_truth_and_noise_fraction():
    rows = world_rows(2000, seed=5, noise=0.3)
    noisy = rows.filter(pc.invert(rows["matched"]))
    assert 0.25 < noisy.num_rows / rows.num_rows < 0.35
    kinds = {k.split(":")[0] for k in noisy["noise_kind"].to_pylist()}
    assert kinds == set(NOISE_KINDS)
    for r in rows.filter(rows["matched"]).slice(0, 300).to_pylist():
        text = r["caption"].lower()
        assert r["colour"] in text and r["shape"] in text, r
    for r in noisy.to_pylist():
        text = r["caption"].lower()
        if r["noise_kind"] in ("wrong_attribute:colour", "wrong_attribute:shape"):
            assert r[r["noise_kind"].split(":")[1]] not in text, r
        elif r["noise_kind"] == "wrong_attribute:background":
            assert f"{r['background']} background" not in text, r
        elif r["noise_kind"] == "other":
            assert not (r["colour"] in text and r["shape"] in text), r
    assert set(rows["colour"].to_pylist()) == set(LABELS["colour"])
    assert set(rows["shape"].to_pylist()) == set(LABELS["shape"])


def test_noise_is_controllable_and_nested():
    clean = world_rows(500, seed=6, noise=0.0)
    some = world_rows(500, seed=6, noise=0.4)
    all_noisy = world_rows(500, seed=6, noise=1.0)
    assert clean["matched"].to_pylist() == [True] * 500
    assert all_noisy["matched"].to_pylist() == [False] * 500
    for c, s, m in zip(clean["caption"].to_pylist(), some["caption"].to_pylist(), some["matched"].to_pylist()):
        if m:
            assert c == s
    assert some["key"].equals(clean["key"])


def test_seeds_give_disjoint_keys_and_paths_round_trip():
    a, b = world_rows(100, seed=0), world_rows(100, seed=1)
    assert not set(a["key"].to_pylist()) & set(b["key"].to_pylist())
    for key, url in zip(a["key"].to_pylist(), a["url"].to_pylist()):
        assert url.startswith("https://") and ".example/world/" in url
        assert key_from_path(url.split(".example", 1)[1]) == key
    assert key_from_path("/world/../etc/passwd.jpg") is None
    assert key_from_path("/other/w0-1.jpg") is None


def test_bad_arguments_raise():
    with pytest.raises(LaionHFError, match="noise"):
        world_rows(10, noise=1.5)
    with pytest.raises(LaionHFError, match="n >= 0"):
        world_rows(-1)

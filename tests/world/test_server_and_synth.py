"""The loopback image server serves world images; ``laion-hf synth --world`` writes their metadata."""

from __future__ import annotations

import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from laion_hf import load_laion
from laion_hf.cli import main
from laion_hf.synth import LAYOUTS, WORLD_COLUMNS
from laion_hf.testing.image_server import ImageServer
from laion_hf.world import render, world_rows


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        yield srv


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def test_server_serves_world_images_byte_identically(server):
    for key in world_rows(5, seed=11)["key"].to_pylist():
        status, body, ctype = _get(server.world_url(key))
        assert status == 200 and ctype == "image/jpeg"
        assert body == render(key)
        assert _get(server.world_url(key))[1] == body


def test_server_rejects_non_world_paths(server):
    assert _get(server.url("/world/w0-1.png"))[0] == 404
    assert _get(server.url("/world/bad%20key.jpg"))[0] == 404
    assert _get(server.url("/img/64x64.jpg"))[0] == 200  # the existing routes still work


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synth_world_in_every_layout(tmp_path, server, layout, capsys):
    out = tmp_path / layout
    assert (
        main(
            [
                "synth",
                "--world",
                "--rows",
                "60",
                "--files",
                "2",
                "--noise",
                "0.5",
                "--seed",
                "3",
                "--layout",
                layout,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    raw = pq.read_table(out)
    assert set(WORLD_COLUMNS) <= set(raw.column_names)
    rows = list(load_laion(str(out)))
    assert len(rows) == 60
    truth = world_rows(60, seed=3, noise=0.5)
    by_key = {r["key"]: r for r in truth.to_pylist()}
    assert sum(not r["matched"] for r in rows) == sum(not r["matched"] for r in by_key.values())
    for r in rows[:4]:
        want = by_key[r["world_key"]]
        assert r["caption"] == want["caption"] and (r["width"], r["height"]) == (
            want["width"],
            want["height"],
        )
        assert r["colour"] == want["colour"] and r["matched"] == want["matched"]
        status, body, _ = _get(server.rewrite_url(r["url"]))
        assert status == 200 and body == render(r["world_key"])


def test_synth_without_world_keeps_the_embedded_sample(tmp_path):
    assert main(["synth", "--rows", "20", "--out", str(tmp_path)]) == 0
    table = pq.read_table(tmp_path)
    assert "matched" not in table.column_names
    assert not any("/world/" in u for u in table.column("URL").to_pylist())

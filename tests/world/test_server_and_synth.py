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
from laion_hf.world.attributes import ZERO_SHOT_LABELS, attributes


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


def test_synth_world_writes_the_held_out_eval_sets(tmp_path, capsys):
    from laion_hf.eval import load_eval_dataset

    out, sets = tmp_path / "meta", tmp_path / "bench"
    argv = ["synth", "--world", "--rows", "30", "--out", str(out), "--eval-sets", str(sets), "--eval-images", "12"]
    assert main(argv) == 0
    assert "held-out evaluation sets" in capsys.readouterr().out
    colour = load_eval_dataset(str(sets / "colour"))
    got = list(colour.samples())
    assert colour.task == "zeroshot_classification" and len(got) == 12
    want = [ZERO_SHOT_LABELS["colour"][attributes(s.key).colour] for s in got]
    assert [colour.classnames[s.label] for s in got] == want  # the ground truth as labels
    assert not {s.key for s in got} & {r["world_key"] for r in load_laion(str(out))}  # held out
    retrieval = load_eval_dataset(str(sets / "retrieval"))
    assert retrieval.task == "zeroshot_retrieval" and all(len(s.captions) > 1 for s in retrieval.samples())


def test_synth_eval_sets_need_world(tmp_path, capsys):
    assert main(["synth", "--rows", "5", "--out", str(tmp_path / "m"), "--eval-sets", str(tmp_path / "b")]) == 1
    assert "--eval-sets needs --world" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()

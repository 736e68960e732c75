"""``laion-hf demo`` on the world: the teacher's filter scored against the ground truth, and a
contact sheet in the demo folder and in the dataset card's assets."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(1800)


def test_demo_scores_the_clip_filter_and_writes_the_contact_sheet(tmp_path, capsys):
    from laion_hf.demo import run_demo
    from laion_hf.world.teacher import teacher_threshold

    out = tmp_path / "demo"
    summary = run_demo(str(out), rows=400, stages_through="publish")
    printed = capsys.readouterr().out
    report = summary["clip_filter"]
    assert report["rows"] == summary["publish"]["rows"] == report["scored"] + report["unscored"]
    assert report["matched"] + report["noisy"] == report["scored"] and report["noisy"] > 40
    assert report["threshold"] == teacher_threshold()
    assert report["precision"] >= 0.9 and report["recall"] >= 0.9, report
    assert f"precision {report['precision']:.1%}" in printed and "recall" in printed
    assert "aesthetic" in printed and "would mean nothing" in printed
    for path in (out / "contact_sheet.png", out / "published" / "assets" / "contact_sheet.png"):
        img = Image.open(io.BytesIO(path.read_bytes()))
        assert img.format == "PNG" and img.width > 600 and img.height > 600
    card = (out / "published" / "README.md").read_text()
    assert "](assets/contact_sheet.png)" in card
    shards = list((out / "published").rglob("*.parquet"))
    columns = pq.read_schema(shards[0]).names
    assert {"matched", "clip_similarity", "colour"} <= set(columns)
    assert not any(c.startswith("aesthetic_score") for c in columns)

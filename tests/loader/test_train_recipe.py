"""loading_scripts/train_open_clip.py: a few contrastive steps of the tiny open_clip model on
shards written by our publisher (``laion_hf.shards.write_shards``, as the demo publishes them)
lower the loss, and a run resumed from its checkpoint continues where it stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "loading_scripts" / "train_open_clip.py"


def train(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def losses(out: str) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^step (\d+) epoch \d+ loss ([\d.]+)", out, re.M)}


@pytest.fixture(scope="module")
def published(tmp_path_factory, samples):
    import pyarrow as pa

    from laion_hf.shards import write_shards

    keys, images, captions, statuses = samples
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "key": keys,
            "caption": captions,
            "status": statuses,
            "image": pa.array([{"bytes": b, "path": None} for b in images], image_type),
        }
    )
    out = tmp_path_factory.mktemp("published")
    write_shards(table, out, max_shard_rows=60, progress=False)
    return out


@pytest.mark.slow
def test_loss_decreases_and_training_resumes(published, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    common = [
        "--data",
        str(published),
        "--batch-size",
        "24",
        "--workers",
        "2",
        "--lr",
        "2e-3",
        "--epochs",
        "3",
        "--checkpoint",
        str(ckpt),
        "--buffer-size",
        "100",
    ]
    first = train(*common, "--steps", "6", "--save-every", "6")
    assert ckpt.exists()
    second = train(*common, "--steps", "12", "--resume")
    assert "resumed at step 6, epoch 0" in second
    got = {**losses(first), **losses(second)}
    assert sorted(got) == list(range(1, 13)), got
    early = sum(got[s] for s in (1, 2, 3)) / 3
    late = sum(got[s] for s in (10, 11, 12)) / 3
    assert late < early - 0.3, got


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_real_model_on_gpu(published):
    out = train(
        "--data",
        str(published),
        "--model",
        "ViT-B-32",
        "--batch-size",
        "32",
        "--steps",
        "6",
        "--epochs",
        "3",
        "--lr",
        "1e-4",
    )
    assert "model ViT-B-32 on cuda" in out
    got = losses(out)
    assert sorted(got) == list(range(1, 7))
    assert all(0 < v < 10 for v in got.values())

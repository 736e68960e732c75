"""``laion-hf train``: trains the tiny open_clip model on shards written by our publisher,
evaluates zero-shot every N steps into log.jsonl, and after a kill -9 the same command resumes
from its checkpoint: every step logged once, the same losses as an uninterrupted run, and the
final metrics equal ``laion-hf eval`` of the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "loader"))
import dl_shards  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    import pyarrow as pa

    from laion_hf.shards import write_shards

    keys, images, captions, statuses = dl_shards.make_samples(240, size=40)
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


@pytest.fixture(scope="module")
def colour_bench(tmp_path_factory):
    from laion_hf.eval import EvalSample, write_benchmark

    names = list(dl_shards.COLORS)
    samples = []
    for i in range(32):
        data, _ = dl_shards.make_jpeg(i, size=40, seed=7)
        samples.append(EvalSample(f"{i:03d}", data, label=i % len(names)))
    out = tmp_path_factory.mktemp("bench") / "colour"
    write_benchmark(
        out,
        samples,
        classnames=names,
        templates=["a photo of a {c}", "a {c} picture"],
        image_ext="jpg",
    )
    return out


def command(published, bench, out) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from laion_hf.cli import main; sys.exit(main())",
        "train",
        "--data",
        str(published),
        "--out",
        str(out),
        "--batch-size",
        "24",
        "--workers",
        "2",
        "--lr",
        "2e-3",
        "--steps",
        "12",
        "--save-every",
        "4",
        "--eval",
        str(bench),
        "--eval-every",
        "6",
        "--buffer-size",
        "100",
        "--device",
        "cpu",
    ]


def records(out: Path) -> list[dict]:
    from laion_hf.train import read_log

    return read_log(out / "log.jsonl")


def losses(out: Path) -> dict[int, float]:
    got: dict[int, float] = {}
    for r in records(out):
        if "loss" in r:
            assert r["step"] not in got, f"step {r['step']} logged twice"
            got[r["step"]] = r["loss"]
    return got


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_train_eval_kill_resume(published, colour_bench, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(command(published, colour_bench, ref), env=ENV, check=True, timeout=600, capture_output=True)
    ref_losses = losses(ref)
    assert sorted(ref_losses) == list(range(1, 13))
    evals = [r for r in records(ref) if "eval" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert set(evals[-1]["eval"]["colour"]) == {"acc1", "acc5", "mean_per_class_recall"}

    run = tmp_path / "run"
    proc = subprocess.Popen(
        command(published, colour_bench, run),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 500
    while time.time() < deadline and not (run / "checkpoints" / "latest.pt").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(run), default=0)
    assert 4 <= killed_at < 12, killed_at
    out = subprocess.run(
        command(published, colour_bench, run),
        env=ENV,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    ).stdout
    assert "resumed at step 4, epoch" in out or "resumed at step 8, epoch" in out, out
    got = losses(run)
    assert sorted(got) == list(range(1, 13))
    assert got == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    final = [r for r in records(run) if "eval" in r][-1]
    assert final["step"] == 12 and final["eval"]["colour"] == pytest.approx(evals[-1]["eval"]["colour"])

    from laion_hf.eval import evaluate

    standalone = evaluate(str(run / "checkpoints" / "latest.pt"), str(colour_bench), device="cpu")
    assert standalone["model"] == "laion-hf-tiny"
    assert standalone["metrics"] == pytest.approx(final["eval"]["colour"])


def test_a_resume_with_other_settings_is_refused_and_a_longer_run_resumes(published, tmp_path):
    from laion_hf.errors import EvalError
    from laion_hf.train import TrainConfig, train

    def cfg(**kw):
        base = dict(data=str(published), out=str(tmp_path / "run"), batch_size=16, workers=0, steps=2, lr=1e-3,
                    save_every=1, device="cpu", threads=1, buffer_size=50)  # fmt: skip
        return TrainConfig(**{**base, **kw})

    assert train(cfg())["step"] == 2
    with pytest.raises(EvalError, match=r"other settings \(batch_size 16 there, 24 now, lr 0.001 there, 0.002 now\)"):
        train(cfg(lr=2e-3, batch_size=24))
    assert max(losses(tmp_path / "run")) == 2  # nothing was trained or logged by the refused run
    got = train(cfg(steps=3, log_every=1))  # a longer run of the same settings continues
    assert got["step"] == 3 and sorted(losses(tmp_path / "run")) == [1, 2, 3]

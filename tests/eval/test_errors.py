"""Bad input gets a clear error naming the culprit: unknown model, missing weights, no class
names, a tar sample without its label, k larger than the set, and the CLI exits 1 saying so."""

from __future__ import annotations

import shutil

import pytest
from bench_data import draw

from laion_hf.errors import EvalError, ModelError


def test_unknown_model():
    from laion_hf.eval import load_model

    with pytest.raises(ModelError, match="unknown open_clip model 'ViT-Nope-99'"):
        load_model("ViT-Nope-99", device="cpu")


def test_missing_weights(tmp_path):
    from laion_hf.eval import load_model

    missing = tmp_path / "gone.pt"
    with pytest.raises(ModelError, match="gone.pt does not exist"):
        load_model("laion-hf-tiny", str(missing), device="cpu")
    with pytest.raises(ModelError, match="weights for ViT-B-32 / laion2b_s34b_b79k are not on this machine"):
        load_model("ViT-B-32", "laion2b_s34b_b79k", device="cpu", cache_dir=str(tmp_path / "empty-cache"))


def test_dataset_without_classnames(tmp_path, class_dir):
    from laion_hf.eval import load_eval_dataset

    bare = tmp_path / "no_names"
    shutil.copytree(class_dir, bare)
    (bare / "classnames.txt").unlink()
    with pytest.raises(EvalError, match=r"no_names: no class names .*--classnames FILE"):
        load_eval_dataset(str(bare))


def test_tar_sample_without_label(tmp_path, tiny):
    from webdataset import TarWriter

    from laion_hf.eval import evaluate

    root = tmp_path / "nolabel"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("a\nb\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    with TarWriter(str(root / "test" / "0.tar"), encoder=False) as w:
        w.write({"__key__": "ok", "png": draw(1), "cls": b"1"})
        w.write({"__key__": "lost", "png": draw(2)})
    with pytest.raises(EvalError, match=r"0\.tar: sample 'lost' has no label \(no lost\.cls member\)"):
        evaluate(tiny, str(root), num_workers=1)


def test_label_outside_classnames(tmp_path, tiny, class_dir):
    from laion_hf.eval import evaluate

    few = tmp_path / "few"
    shutil.copytree(class_dir, few)
    (few / "classnames.txt").write_text("red\ngreen\n")
    with pytest.raises(EvalError, match=r"sample 's00\d' has label \d, outside the 2 class names"):
        evaluate(tiny, str(few), num_workers=1)


def test_k_larger_than_the_set(tiny, retrieval_dir):
    from laion_hf.eval import evaluate

    with pytest.raises(
        EvalError,
        match=r"recall@50: k must be between 1 and the set size \(12 images, 20 captions\)",
    ):
        evaluate(tiny, str(retrieval_dir), recall_k=(1, 50), num_workers=1)


def test_template_without_placeholder(class_dir):
    from laion_hf.eval import load_eval_dataset

    with pytest.raises(EvalError, match="template 'a photo' has no {c} placeholder"):
        load_eval_dataset(str(class_dir), templates=["a photo"])


def test_cli_reports_the_culprit(class_dir, capsys):
    from laion_hf.cli import main

    assert main(["eval", "--model", "ViT-Nope-99", "--dataset", str(class_dir), "--device", "cpu"]) == 1
    assert "laion-hf eval: error: unknown open_clip model 'ViT-Nope-99'" in capsys.readouterr().err

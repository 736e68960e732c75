"""Evaluation sets from every kind of source give the same numbers: CLIP_benchmark's layout in a
local folder and on a (local, loopback) Hub over ``hf://``, and a Hugging Face dataset with an
image column plus a ClassLabel / caption column; results are written and tabulated like
CLIP_benchmark's, and the CLI does the same."""

from __future__ import annotations

import csv
import json

import pytest
from bench_data import CLASSNAMES, TEMPLATES


@pytest.fixture(scope="module")
def hub(class_dir, retrieval_dir):
    from huggingface_hub import HfApi

    from laion_hf.testing.hub_server import DEFAULT_TEST_TOKEN, HubServer, configure_client

    with HubServer() as server:
        configure_client(server.url)
        api = HfApi(endpoint=server.url, token=DEFAULT_TEST_TOKEN)
        for repo, folder in (
            ("laion-hf/wds_shapes", class_dir),
            ("laion-hf/wds_captions", retrieval_dir),
        ):
            api.create_repo(repo, repo_type="dataset")
            api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset")
        yield server


def test_hub_layout_over_hf_equals_local_folder(hub, tiny, class_dir, retrieval_dir):
    from laion_hf.eval import evaluate, load_eval_dataset

    ds = load_eval_dataset("hf://datasets/laion-hf/wds_shapes")
    assert ds.classnames == CLASSNAMES and ds.templates == TEMPLATES and ds.name == "shapes"
    remote = evaluate(tiny, ds, num_workers=2)
    local = evaluate(tiny, str(class_dir), num_workers=2)
    assert remote["metrics"] == local["metrics"]
    remote_r = evaluate(tiny, "hf://datasets/laion-hf/wds_captions", num_workers=2)
    local_r = evaluate(tiny, str(retrieval_dir), num_workers=2)
    assert remote_r["task"] == "zeroshot_retrieval" and remote_r["metrics"] == local_r["metrics"]
    fetched = {r["path"] for r in hub.requests if r["status"] in (200, 206)}
    assert "/datasets/laion-hf/wds_shapes/resolve/main/test/2.tar" in fetched
    assert "/datasets/laion-hf/wds_captions/resolve/main/test/2.tar" in fetched


def _hf_folder(tmp_path, samples, target):
    import datasets

    feats = {"image": datasets.Image()}
    rows = {"image": [{"bytes": s.image, "path": None} for s in samples]}
    if target == "label":
        feats["label"] = datasets.ClassLabel(names=CLASSNAMES)
        rows["label"] = [s.label for s in samples]
    else:
        feats["captions"] = datasets.List(datasets.Value("string"))
        rows["captions"] = [s.captions for s in samples]
    out = tmp_path / target / "data"
    out.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=datasets.Features(feats)).to_parquet(
        str(out / "test-00000-of-00001.parquet")
    )
    return out.parent


def test_hf_dataset_with_classlabel_and_captions(
    tmp_path, tiny, class_samples, retrieval_samples, class_dir, retrieval_dir
):
    from laion_hf.eval import evaluate, load_eval_dataset

    folder = _hf_folder(tmp_path, class_samples, "label")
    ds = load_eval_dataset(str(folder), templates=str(_write(tmp_path / "t.txt", TEMPLATES)))
    assert ds.task == "zeroshot_classification" and ds.classnames == CLASSNAMES
    assert evaluate(tiny, ds, num_workers=2)["metrics"] == evaluate(tiny, str(class_dir), num_workers=2)["metrics"]
    rfolder = _hf_folder(tmp_path, retrieval_samples, "captions")
    got = evaluate(tiny, load_eval_dataset(str(rfolder), caption_column="captions"), num_workers=2)
    assert got["task"] == "zeroshot_retrieval"
    assert got["metrics"] == evaluate(tiny, str(retrieval_dir), num_workers=2)["metrics"]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_templates_override_and_builtin(tmp_path, class_dir):
    from laion_hf.eval import BUILTIN_TEMPLATES, load_eval_dataset

    assert load_eval_dataset(str(class_dir), templates="simple").templates == BUILTIN_TEMPLATES["simple"]
    t = _write(tmp_path / "t.txt", ["itap of a {c}", "{c} drawn"])
    assert load_eval_dataset(str(class_dir), templates=str(t)).templates == [
        "itap of a {c}",
        "{c} drawn",
    ]
    names = _write(tmp_path / "n.txt", [f"class {i}" for i in range(6)])
    assert load_eval_dataset(str(class_dir), classnames=str(names)).classnames[5] == "class 5"


def test_result_files_and_table(tmp_path, tiny, class_dir, retrieval_dir):
    from laion_hf.eval import build_table, evaluate, write_result, write_table

    paths = [
        write_result(evaluate(tiny, str(d), num_workers=2), tmp_path / "results") for d in (class_dir, retrieval_dir)
    ]
    assert paths[0].name == "shapes_none_laion-hf-tiny_en_zeroshot_classification.json"
    record = json.loads(paths[0].read_text())
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    rows = build_table([tmp_path / "results"])
    write_table(rows, tmp_path / "table.csv")
    table = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["task"] for r in table] == ["zeroshot_retrieval", "zeroshot_classification"]
    assert float(table[1]["acc1"]) == record["metrics"]["acc1"]
    assert table[0]["model_fullname"] == "laion-hf-tiny " and table[0]["acc1"] == ""


def test_cli_eval_and_build(tmp_path, class_dir, retrieval_dir, capsys):
    from laion_hf.cli import main

    rc = main(
        [
            "eval",
            "--model",
            "laion-hf-tiny",
            "--dataset",
            str(class_dir),
            str(retrieval_dir),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "res"),
            "--recall-k",
            "1",
            "3",
            "--no-progress",
            "--num-workers",
            "2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "shapes zeroshot_classification laion-hf-tiny: acc1" in out and "text_retrieval_recall@3" in out
    files = sorted((tmp_path / "res").glob("*.json"))
    assert len(files) == 2
    assert main(["eval", "build", *map(str, files), "--out", str(tmp_path / "t.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "t.csv").open()))) == 2

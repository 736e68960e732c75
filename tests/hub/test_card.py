"""The dataset card: YAML front matter, counts, histogram image, validation, no token or local
path, template errors, the packaged template, and ``laion-hf card``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard

from laion_hf.errors import CardError, ShardError
from laion_hf.hub.card import HISTOGRAM_PATH, default_template, render_card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_yaml_and_counts(shard_dir):
    folder, table = shard_dir
    text = render_card(folder, "laion-hf/cards")
    assert (folder / "README.md").read_text() == text
    meta = _front_matter(text)
    assert meta["license"] == "cc-by-4.0"
    assert set(meta["task_categories"]) == {"zero-shot-image-classification", "text-to-image", "image-to-text"}
    assert meta["size_categories"] == ["n<1K"]
    assert meta["pretty_name"] == "cards"
    assert {"laion", "clip", "parquet"} <= set(meta["tags"])
    assert meta["configs"] == [
        {
            "config_name": "default",
            "default": True,
            "data_files": [{"split": "train", "path": "data/default/train-*.parquet"}],
        }
    ]
    feats = {f["name"]: f for f in meta["dataset_info"]["features"]}
    assert feats["image"]["dtype"] == "image"
    assert feats["image_embedding"] == {"name": "image_embedding", "list": "float32", "length": 8}
    assert meta["dataset_info"]["splits"] == [
        {"name": "train", "num_bytes": meta["dataset_info"]["dataset_size"], "num_examples": 40}
    ]

    # body: provenance, funnel counts, errors by class, histogram, loading, citation, safety
    assert "| metadata rows read | 1,000 |" in text
    assert "| removed by filters | 877 |" in text and "| removed by blocklists | 3 |" in text
    assert "| rows written to shards | 40 |" in text
    assert "| images downloaded (status `success`) | 32 |" in text
    errors = {e: table["status"].to_pylist().count(e) for e in set(table["status"].to_pylist()) if e != "success"}
    assert sum(errors.values()) == 8
    for name, n in errors.items():
        assert f"| `{name}` | {n} |" in text
    assert "`similarity >= 0.28`" in text and "demo_md5.txt: 5 entries on `url`, 3 rows removed" in text
    assert "`noimageai`" in text and "`laion/relaion2B-en-research-safe`" in text
    assert f"![score histograms]({HISTOGRAM_PATH})" in text
    assert (folder / HISTOGRAM_PATH).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'load_dataset("laion-hf/cards", split="train", streaming=True)' in text
    assert "torch.utils.data.DataLoader" in text and "open_clip_train.main" in text
    assert "schuhmann2022laionb" in text and "## Safety" in text
    assert "`laion-hf-tiny`" in text

    card = DatasetCard.load(folder / "README.md")  # huggingface_hub parses it back
    assert card.data.configs[0]["config_name"] == "default"
    card.validate()  # the local Hub's validate-yaml endpoint accepts it


def test_card_has_no_token_or_local_path(shard_dir, token, monkeypatch):
    folder, _ = shard_dir
    monkeypatch.setenv("HF_TOKEN", token)
    text = render_card(folder, "laion-hf/cards")
    assert token not in text and str(folder.resolve()) not in text and str(Path.home()) + "/" not in text
    with pytest.raises(CardError, match="contains an access token") as err:
        render_card(folder, "laion-hf/cards", pretty_name=f"leak {token}")
    assert token not in str(err.value)


def test_webdataset_card_has_training_command(tmp_path):
    from shard_rows import PROVENANCE, make_rows

    from laion_hf.shards import write_shards

    write_shards(make_rows(20), tmp_path, format="webdataset", max_shard_rows=8, provenance=PROVENANCE, progress=False)
    text = render_card(tmp_path, "laion-hf/wds")
    meta = _front_matter(text)
    assert meta["configs"][0]["data_files"][0]["path"] == "data/default/train-*.tar"
    assert "features" not in meta["dataset_info"]  # the WebDataset builder infers jpg/json/txt/npy itself
    assert "train-{00000..00002}.tar" in text and "--dataset-type webdataset" in text
    assert "--train-num-samples 16" in text
    assert "| samples in the `.tar` shards | 16 |" in text


def test_template_errors_and_missing_stats(shard_dir, tmp_path):
    folder, _ = shard_dir
    bad = tmp_path / "bad.md.j2"
    bad.write_text("---\n{{ card_data }}\n---\n{% for x in %}\n")
    with pytest.raises(CardError, match=r"bad\.md\.j2 line 4"):
        render_card(folder, template=bad)
    bad.write_text("---\n{{ card_data }}\n---\n{{ no_such_variable }}\n")
    with pytest.raises(CardError, match="'no_such_variable' is undefined"):
        render_card(folder, template=bad)
    bad.write_text("# a card without front matter\n")
    with pytest.raises(CardError, match="no 'configs'"):
        render_card(folder, template=bad)
    with pytest.raises(CardError, match="not found"):
        render_card(folder, template=tmp_path / "missing.j2")
    (tmp_path / "no_stats").mkdir()
    with pytest.raises(ShardError, match="has no stats.json"):
        render_card(tmp_path / "no_stats")


def test_packaged_template_is_the_dataset_cards_one():
    top = Path(__file__).resolve().parents[2] / "dataset_cards" / "laion_subset.md.j2"
    assert default_template().read_text() == top.read_text()


def test_cli_card_verb(shard_dir, capsys):
    from laion_hf.cli import main

    folder, _ = shard_dir
    assert main(["card", str(folder), "--repo-id", "laion-hf/cli-card"]) == 0
    assert 'load_dataset("laion-hf/cli-card"' in (folder / "README.md").read_text()
    assert main(["card", str(folder), "--stdout", "--pretty-name", "Printed"]) == 0
    assert "# Printed" in capsys.readouterr().out
    assert main(["card", str(folder.parent / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err

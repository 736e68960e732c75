"""The card's provenance on the documented CLI path, with no ``--provenance``: ``download
--preset/--where/--blocklist`` (or ``filter`` then ``download``, then ``embed``) against the
loopback image server, then ``shards --card``. Each stage writes its record beside its output and
the next extends it (laion_hf/provenance.py); the card shows the filters, the robots policy and
every stage's counts. Also: the CLIP line for embeddings of an unrecorded model, and ``push``
leaving the folder untouched and naming a rejected token."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_rows import make_rows

from laion_hf.cli import main
from laion_hf.hub.card import render_card
from laion_hf.provenance import FILENAME, merge
from laion_hf.shards import write_shards
from laion_hf.testing.image_server import ImageServer

FETCH = [
    "--allow-private-networks",
    "--no-progress",
    "--image-size",
    "16",
    "--timeout",
    "3",
    "--retries",
    "0",
]


@pytest.fixture(scope="module")
def images():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def meta(images, tmp_path):
    """12 LAION-style rows: similarity decides laion2b-en (>= 0.28), punsafe the --where; among
    the rows both keep: one blocklisted URL, one robots opt-out, one 404, five images."""
    urls = [images.image_url(30 + i, 20) for i in range(12)]
    urls[1] = images.fault_url("robots")
    urls[2] = images.fault_url("404")
    sim = [0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.37, 0.20, 0.21, 0.40, 0.41]
    punsafe = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9]
    table = pa.table(
        {
            "URL": urls,
            "TEXT": [f"caption {i}" for i in range(12)],
            "similarity": sim,
            "punsafe": punsafe,
        }
    )
    pq.write_table(table, tmp_path / "meta.parquet")
    (tmp_path / "iwf_md5.txt").write_text(hashlib.md5(urls[7].encode()).hexdigest() + "\n")
    return tmp_path / "meta.parquet", tmp_path / "iwf_md5.txt"


def _card(capsys, *args: str) -> str:
    assert main(["shards", *args, "--quiet", "--card", "--repo-id", "laion-hf/prov"]) == 0, capsys.readouterr().err
    return (Path(args[1]) / "README.md").read_text()


def test_download_with_selection_then_shards_card(meta, tmp_path, capsys):
    src, blocklist = meta
    dl = tmp_path / "dl"
    assert (
        main(
            [
                "download",
                str(src),
                "--out",
                str(dl),
                "--preset",
                "laion2b-en",
                "--where",
                "punsafe < 0.5",
                "--blocklist",
                str(blocklist),
                *FETCH,
            ]
        )
        == 0
    )
    capsys.readouterr()
    card = _card(capsys, str(dl), str(tmp_path / "out"))

    assert "- **Preset:** `laion2b-en`" in card
    assert "LAION release" not in card  # a URL/TEXT table is no LAION release
    assert "  - `preset laion2b-en: similarity >= 0.28`\n  - `punsafe < 0.5`\n" in card
    assert "  - iwf_md5.txt: 1 entries on `url`, 1 rows removed\n" in card
    assert (
        "- **Robots policy:** images whose `X-Robots-Tag` header contains `noai`, `noimageai`, `noindex`, "
        "`noimageindex` were not downloaded; requests identified themselves as `laion-hf/"
    ) in card
    assert "; 1 rows were skipped by this policy" in card
    # 12 read: 2 below 0.28 and 2 with punsafe 0.9 removed by filters, 1 by the blocklist, 7 fetched
    for row in (
        "| metadata rows read | 12 |",
        "| removed by filters | 4 |",
        "| removed by blocklists | 1 |",
        "| kept after filters | 7 |",
        "| images requested | 7 |",
        "| images downloaded (status `success`) | 5 |",
        "| images not downloaded (error classes below) | 2 |",
        "| rows written to shards | 7 |",
        "| `robots_optout` | 1 |",
        "| `http_404` | 1 |",
    ):
        assert row in card, row
    assert "not recorded" not in card and "  - none" not in card
    assert "- **CLIP model:** none (no embeddings computed)" in card
    assert str(tmp_path) not in card and str(tmp_path) not in (tmp_path / "out" / "stats.json").read_text()

    record = json.loads((dl / FILENAME).read_text())  # the record itself: one small documented object
    assert record["schema"] == "laion-hf/provenance/1" and record["stages"] == ["download"]
    scan = record["scan"]
    assert (
        scan["rows_in"]
        == scan["rows_kept"] + scan["removed_by_filter"] + scan["removed_by_blocklist"] + scan["removed_by_sample"]
    )
    assert record["fetch"]["rows"] == scan["rows_kept"] == sum(record["fetch"]["errors"].values()) + 5

    # an explicit --provenance key replaces the record's, the others stay
    card2 = _card(
        capsys,
        str(dl),
        str(tmp_path / "out2"),
        "--provenance",
        '{"release": "laion2B-en"}',
    )
    assert "- **LAION release:** laion2B-en" in card2 and "`punsafe < 0.5`" in card2


def test_filter_then_download_chains_the_record(meta, tmp_path, capsys):
    src, _ = meta
    assert (
        main(
            [
                "filter",
                str(src),
                "--out",
                str(tmp_path / "f"),
                "--preset",
                "laion2b-en",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "download",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "dl"),
                "--where",
                "punsafe < 0.5",
                *FETCH,
            ]
        )
        == 0
    )
    capsys.readouterr()
    card = _card(capsys, str(tmp_path / "dl"), str(tmp_path / "out"))
    assert "  - `preset laion2b-en: similarity >= 0.28`\n  - `punsafe < 0.5`\n" in card
    # filter: 12 -> 10; download's selection: 10 -> 8; one read count, the removals summed
    for row in (
        "| metadata rows read | 12 |",
        "| removed by filters | 4 |",
        "| kept after filters | 8 |",
        "| images requested | 8 |",
        "| images downloaded (status `success`) | 6 |",
    ):
        assert row in card, row
    assert "`meta.parquet`" in card  # the metadata read first, not the intermediate folder
    assert "- **Blocklists** (matched before any fetch):\n  - none\n" in card


def test_embed_adds_the_clip_model(meta, tmp_path, capsys):
    pytest.importorskip("open_clip")
    src, _ = meta
    assert (
        main(
            [
                "download",
                str(src),
                "--out",
                str(tmp_path / "dl"),
                "--preset",
                "laion2b-en",
                *FETCH,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "embed",
                str(tmp_path / "dl"),
                "--out",
                str(tmp_path / "emb"),
                "--device",
                "cpu",
                "--no-progress",
                "--head",
                "aesthetic_v1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    card = _card(capsys, str(tmp_path / "emb" / "metadata"), str(tmp_path / "out"))
    assert (
        "- **CLIP model:** `laion-hf-tiny`, 512-d L2-normalized embeddings; score heads: aesthetic_v1:vit_b_32 "
        "(the embeddings are not in these shards)" in card
    )
    assert "| images downloaded (status `success`) | 8 |" in card and "| images embedded with CLIP | 8 |" in card
    assert "`preset laion2b-en: similarity >= 0.28`" in card and "1 rows were skipped by this policy" in card


def test_embedding_columns_without_clip_provenance_say_unknown(tmp_path):
    write_shards(
        make_rows(10),
        tmp_path,
        provenance={"filters": ["similarity >= 0.3"]},
        progress=False,
    )
    card = render_card(tmp_path, "laion-hf/unknown")
    assert (
        "- **CLIP model:** unknown (not recorded) for the embedding columns `image_embedding`, `text_embedding`"
    ) in card
    assert "CLIP embeddings" not in card and "embeddings from an unrecorded model" in card
    assert "none (no embeddings computed)" not in card
    write_shards(make_rows(5), tmp_path / "bare", progress=False)  # nothing recorded at all
    bare = render_card(tmp_path / "bare")
    assert "- **Filters** (applied to the metadata before any image was fetched):\n  - not recorded\n" in bare


def test_merge_chains_counts_so_they_sum():
    first = {
        "sources": ["meta.parquet"],
        "filters": ["a"],
        "scan": {
            "rows_in": 100,
            "rows_kept": 60,
            "removed_by_filter": 30,
            "removed_by_blocklist": 10,
            "removed_by_sample": 0,
        },
        "stages": ["filter"],
    }
    then = {
        "sources": ["f"],
        "filters": ["b", "a"],
        "scan": {
            "rows_in": 60,
            "rows_kept": 20,
            "removed_by_filter": 35,
            "removed_by_blocklist": 0,
            "removed_by_sample": 5,
        },
        "stages": ["download"],
    }
    out = merge(first, then)
    assert out["sources"] == ["meta.parquet"] and out["filters"] == ["a", "b"]
    assert out["stages"] == ["filter", "download"]
    s = out["scan"]
    assert (s["rows_in"], s["rows_kept"]) == (100, 20)
    assert s["rows_in"] == s["rows_kept"] + s["removed_by_filter"] + s["removed_by_blocklist"] + s["removed_by_sample"]


def test_push_leaves_the_folder_untouched_and_blames_a_rejected_token(hub, token, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from laion_hf.errors import HubError
    from laion_hf.hub import push

    folder = tmp_path / "out"
    write_shards(make_rows(6), folder, progress=False)
    render_card(folder)  # README.md with the placeholder repo id, as `shards --card` writes it
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    with pytest.raises(HubError) as err:
        push(
            folder,
            "laion-hf/untouched",
            token="hf_WrongTokenWrongTokenWrong123",
            endpoint=hub.url,
        )
    msg = str(err.value)
    assert "HTTP 401" in msg and "rejected the token" in msg and "does not exist" not in msg
    assert "WrongToken" not in msg
    monkeypatch.setenv("HF_TOKEN", "hf_WrongTokenWrongTokenWrong123")
    assert main(["push", str(folder), "laion-hf/untouched", "--endpoint", hub.url]) == 1
    assert "rejected the token" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # README.md byte-identical, nothing added

    push(folder, "laion-hf/untouched", token=token, endpoint=hub.url)  # a push that works: still untouched
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    remote = HfApi(endpoint=hub.url).hf_hub_download(
        "laion-hf/untouched", "README.md", repo_type="dataset", cache_dir=tmp_path / "c"
    )
    assert 'load_dataset("laion-hf/untouched"' in Path(remote).read_text()
    again = push(folder, "laion-hf/untouched", token=token, endpoint=hub.url, dry_run=True)
    assert again.to_upload == []  # the in-memory card and histogram equal what was pushed

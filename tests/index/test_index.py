"""``laion-hf index``: real faiss indexes, checked against exact search computed here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from laion_hf.errors import KnnIndexError
from laion_hf.index import (
    IndexFolder,
    KnnIndex,
    build_index,
    choose_index_key,
    filter_near,
    read_infos,
)
from laion_hf.testing.knn import write_embed_folder

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from laion_hf.cli import main; sys.exit(main())"]


def _npy(folder: Path, kind: str) -> np.ndarray:
    d, pre = {"image": ("img_emb", "img_emb_"), "text": ("text_emb", "text_emb_")}[kind]
    files = sorted((folder / d).glob(f"{pre}*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return np.concatenate([np.load(f).astype(np.float32) for f in files])


def _exact(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    sims[:, ~(np.abs(x).sum(axis=1) > 0)] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def test_tiny_model_index_equals_exact_search(tiny, embedder):
    _, embed, index = tiny
    infos = read_infos(index)
    assert infos["clip_model"] == "laion-hf-tiny" and infos["rows"] == 40
    assert {k: v["index_key"] for k, v in infos["kinds"].items()} == {
        "image": "Flat",
        "text": "Flat",
    }
    assert infos["kinds"]["image"]["recall_at_10"] == 1.0
    q = embedder.encode_text(["a red thing", "a picture number 7 of a green thing", "blue"])
    for kind in ("image", "text"):
        want_d, want_i = _exact(_npy(embed, kind), q, 10)
        got = KnnIndex(index, kind).search(q, 10)
        for (d, i), wd, wi in zip(got, want_d, want_i):
            assert i.tolist() == wi.tolist()
            np.testing.assert_allclose(d, wd, rtol=1e-5, atol=1e-6)


def test_row_i_is_metadata_row_i_in_numeric_part_order(tmp_path):
    src = write_embed_folder(tmp_path / "emb", parts=11, rows=30, dim=16, missing_text=3)
    infos = build_index(src, tmp_path / "idx")
    folder = IndexFolder(tmp_path / "idx")
    vec = np.load(src / "img_emb" / "img_emb_10.npy")[7].astype(np.float32)
    _, ids = folder.indexes["image"].search(vec[None], 1)[0]
    assert ids.tolist() == [10 * 30 + 7]  # metadata_10 comes after metadata_9, not after metadata_1
    assert folder.rows_of(ids)[0]["key"] == "10_7"
    assert infos["kinds"]["text"]["missing"] == 11 * 3
    _, ids = folder.indexes["text"].search(np.ones((1, 16), np.float32), 330)[0]
    assert len(ids) == 330 - 33 and not {i % 30 for i in ids.tolist()} & {0, 1, 2}


@pytest.mark.parametrize("options", [{"index_key": "HNSW32"}, {"index_key": "IVF16,Flat"},
                                     {"memory_mappable": True}])  # fmt: skip
def test_approximate_indexes_are_tuned_to_the_recall_target(tmp_path, options):
    src = write_embed_folder(tmp_path / "emb", parts=4, rows=1000, dim=32, seed=3)
    infos = build_index(src, tmp_path / "idx", **options)
    for kind, k in infos["kinds"].items():
        assert k["target_met"] and k["recall_at_10"] >= 0.95, k["sweep"]
        assert k["search_params"] and k["count"] == 4000
        if options.get("index_key") == "HNSW32":
            assert k["build_params"] == {"efConstruction": 80}
        # independent check: fresh queries (perturbed rows), exact search done here
        x = _npy(src, kind)
        rng = np.random.default_rng(9)
        q = x[rng.choice(4000, 100, replace=False)] + 0.3 * rng.normal(size=(100, 32)).astype(np.float32)
        _, truth = _exact(x, q, 10)
        got = KnnIndex(tmp_path / "idx", kind).search(q, 10)
        recall = np.mean([len(np.intersect1d(i, t)) / 10 for (_, i), t in zip(got, truth)])
        assert recall >= 0.9
    if options.get("memory_mappable"):
        assert (tmp_path / "idx" / "image.ivfdata").stat().st_size > 4000 * 32 * 4
        assert infos["kinds"]["image"]["index_key"].startswith("IVF")


def test_graph_index_is_tuned_on_fresh_queries(tmp_path):
    """Fresh queries (drawn like the rows, not in the index) reach the recall target with the
    tuned efSearch. Leave-one-out queries (rows of the graph) tuned this data to efSearch 16,
    recall@10 0.99 on themselves but ~0.8 on fresh queries."""
    import pyarrow as pa

    from laion_hf.testing.knn import clustered

    n, dim = 3000, 128
    x = clustered(n + 300, dim, seed=4, clusters=10, spread=3.0)
    (tmp_path / "emb" / "img_emb").mkdir(parents=True)
    (tmp_path / "emb" / "metadata").mkdir()
    np.save(tmp_path / "emb" / "img_emb" / "img_emb_0.npy", x[:n].astype(np.float16))
    pq.write_table(pa.table({"key": [str(i) for i in range(n)]}), tmp_path / "emb" / "metadata" / "metadata_0.parquet")
    k = build_index(tmp_path / "emb", tmp_path / "idx", index_key="HNSW32")["kinds"]["image"]
    assert k["queries_from"] == f"rows {n - 300}-{n - 1}" and k["tuned_on_rows"] == n - 300
    assert k["target_met"] and k["recall_at_10_low"] >= 0.95, k["sweep"]
    fresh = x[n:]
    _, truth = _exact(x[:n].astype(np.float16).astype(np.float32), fresh, 10)
    got = KnnIndex(tmp_path / "idx", "image").search(fresh, 10)
    recall = np.mean([len(np.intersect1d(i, t)) / 10 for (_, i), t in zip(got, truth)])
    assert recall >= k["recall_target"], (recall, k["search_params"], k["sweep"])


def test_index_type_follows_count_and_memory():
    gb = 10**9
    assert choose_index_key(5_000, 512, 8 * gb) == "Flat"
    assert choose_index_key(1_000_000, 512, 8 * gb) == "HNSW32"
    big = choose_index_key(100_000_000, 512, 8 * gb)
    assert big.startswith("OPQ") and ",IVF" in big and big.endswith("x8")
    assert choose_index_key(1_000_000, 512, 8 * gb, memory_mappable=True).endswith(",Flat")
    with pytest.raises(KnnIndexError, match="max-index-memory"):
        choose_index_key(10**9, 512, 10**6)


def _copy_metadata(tiny, tmp_path) -> Path:
    dst = tmp_path / "meta"
    shutil.copytree(tiny[1] / "metadata", dst)
    return dst


def test_misaligned_metadata_is_refused(tiny, tmp_path):
    index = tiny[2]
    same = _copy_metadata(tiny, tmp_path / "same")
    assert IndexFolder(index, metadata=str(same)).rows == 40
    swapped = _copy_metadata(tiny, tmp_path / "swapped")
    t = pq.read_table(swapped / "metadata_0.parquet")
    pq.write_table(t.take([1, 0] + list(range(2, t.num_rows))), swapped / "metadata_0.parquet")
    with pytest.raises(KnnIndexError, match="does not match the index.*different rows or order"):
        IndexFolder(index, metadata=str(swapped))
    shorter = _copy_metadata(tiny, tmp_path / "shorter")
    pq.write_table(t.slice(1), shorter / "metadata_0.parquet")
    with pytest.raises(KnnIndexError, match="39 rows, the index 40"):
        IndexFolder(index, metadata=str(shorter))


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    src = write_embed_folder(tmp_path / "emb", parts=2, rows=50, dim=8)
    build_index(src, tmp_path / "idx")
    before = (tmp_path / "idx" / "image.index").stat().st_mtime_ns
    assert build_index(src, tmp_path / "idx")["rows"] == 100  # same settings: already built
    assert (tmp_path / "idx" / "image.index").stat().st_mtime_ns == before
    with pytest.raises(KnnIndexError, match="other settings"):
        build_index(src, tmp_path / "idx", index_key="HNSW32")


def test_shards_with_embedding_columns_and_null_vectors(tmp_path):
    import pyarrow as pa

    x = np.random.default_rng(1).normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)
    mask = np.zeros(60, bool)
    mask[[5, 40]] = True
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8, mask=pa.array(mask))
    (tmp_path / "shards").mkdir()
    for s in range(2):
        pq.write_table(pa.table({"key": [str(i) for i in range(30 * s, 30 * s + 30)],
                                 "image_embedding": emb.slice(30 * s, 30)}),
                       tmp_path / "shards" / f"train-{s:05d}-of-00002.parquet", row_group_size=7)  # fmt: skip
    infos = build_index(tmp_path / "shards", tmp_path / "idx", clip_model="laion-hf-tiny")
    assert infos["layout"] == "shards" and list(infos["kinds"]) == ["image"]
    assert infos["kinds"]["image"]["missing"] == 2 and infos["clip_model"] == "laion-hf-tiny"
    _, i = KnnIndex(tmp_path / "idx", "image").search(x[41][None], 60)[0]
    assert i[0] == 41 and len(i) == 58 and not {5, 40} & set(i.tolist())


def test_the_clip_model_of_shards_is_recorded(tmp_path):
    """``laion-hf shards`` records the model under ``configs.<config>.provenance.clip`` of its
    ``stats.json``: the index finds it from the shards folder and from ``data/<config>/``."""
    import pyarrow as pa

    from laion_hf.shards.writer import write_shards

    x = np.random.default_rng(2).normal(size=(40, 8)).astype(np.float32)
    table = pa.table({"key": [str(i) for i in range(40)], "caption": ["c"] * 40,
                      "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)})  # fmt: skip
    clip = {"model": "laion-hf-tiny", "pretrained": "tiny.pt"}
    write_shards(table, tmp_path / "shards", provenance={"clip": clip}, progress=False)
    for n, src in enumerate([tmp_path / "shards", tmp_path / "shards" / "data" / "default"]):
        infos = build_index(src, tmp_path / f"idx{n}")
        assert (infos["clip_model"], infos["clip_pretrained"]) == ("laion-hf-tiny", "tiny.pt"), src
    infos = build_index(tmp_path / "shards", tmp_path / "other", clip_model="ViT-B-32", clip_pretrained="openai")
    assert (infos["clip_model"], infos["clip_pretrained"]) == ("ViT-B-32", "openai")
    infos = build_index(tmp_path / "shards", tmp_path / "weights", clip_pretrained="other.pt")
    assert (infos["clip_model"], infos["clip_pretrained"]) == ("laion-hf-tiny", "other.pt")
    src = write_embed_folder(tmp_path / "emb", parts=1, rows=20, dim=8)  # no embed_config.json: no model
    with pytest.raises(KnnIndexError, match="give clip_model with clip_pretrained"):
        build_index(src, tmp_path / "none", clip_pretrained="openai")


def test_kill_during_index_then_rerun_gives_the_same_index(tmp_path):
    src = write_embed_folder(tmp_path / "emb", parts=6, rows=1000, dim=32, seed=5)
    args = [str(src), "--index-key", "IVF32,Flat", "--batch-rows", "50", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(CLI + ["index", *args, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    parts = tmp_path / "killed" / "_work" / "image"
    deadline = time.monotonic() + 240
    while len(list(parts.glob("part-*.index"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "infos.json").exists()
    done_before = len(list(parts.glob("part-*.index")))
    assert 3 <= done_before < 240
    r = subprocess.run(CLI + ["index", *args, "--out", str(tmp_path / "killed")], env=env,
                       capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    build_index(src, tmp_path / "fresh", index_key="IVF32,Flat", batch_rows=50)
    for name in ("image.index", "text.index", "image.missing.npy", "text.missing.npy"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert not (tmp_path / "killed" / "_work").exists()


def test_filter_near_writes_the_nearest_rows(tiny, embedder, tmp_path):
    _, embed, index = tiny
    stats = filter_near(index, tmp_path / "near", text="a red thing", k=5)
    table = pq.read_table(tmp_path / "near" / "part-00000.parquet")
    want_d, want_i = _exact(_npy(embed, "image"), embedder.encode_text(["a red thing"]), 5)
    meta = pq.read_table(embed / "metadata")
    assert table["key"].to_pylist() == [meta["key"][int(i)].as_py() for i in want_i[0]]
    np.testing.assert_allclose(table["similarity"].to_numpy(), want_d[0], rtol=1e-5)
    assert stats["rows_kept"] == 5 and stats["rows_in"] == 40
    cut = float(want_d[0][2] + want_d[0][3]) / 2
    filter_near(index, tmp_path / "min", text="a red thing", min_similarity=cut)
    assert pq.read_table(tmp_path / "min" / "part-00000.parquet")["key"].to_pylist() == table["key"].to_pylist()[:3]
    img = pq.read_table(tiny[0] / "00000.parquet")["image"][4].as_py()["bytes"]
    (tmp_path / "q.jpg").write_bytes(img)
    filter_near(index, tmp_path / "byimg", image=str(tmp_path / "q.jpg"), k=1)
    assert pq.read_table(tmp_path / "byimg" / "part-00000.parquet")["key"].to_pylist() == [f"{4:09d}"]


def test_filter_verb_near_text(tiny, tmp_path, capsys):
    from laion_hf.cli import main

    index = tiny[2]
    assert (
        main(
            [
                "filter",
                str(index),
                "--out",
                str(tmp_path / "cli"),
                "--near",
                "a blue thing",
                "--k",
                "3",
            ]
        )
        == 0
    )
    assert "kept 3 of 40 rows" in capsys.readouterr().out
    filter_near(index, tmp_path / "lib", text="a blue thing", k=3)
    got = pq.read_table(tmp_path / "cli" / "part-00000.parquet")
    assert got.equals(pq.read_table(tmp_path / "lib" / "part-00000.parquet"))
    assert got.column_names[-1] == "similarity" and "url" in got.column_names


def _dedup_reference(emb: np.ndarray, threshold: float) -> np.ndarray:
    """The all-pairs definition, written here: float64 products of the normalized vectors,
    components by union-find, every member but the best-ranked (first) dropped."""
    x = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    parent = list(range(len(x)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(x @ x.T > threshold, 1))):
        a, b = root(int(i)), root(int(j))
        parent[max(a, b)] = min(a, b)
    return np.array([root(i) != i for i in range(len(x))])


def _dedup_set(dim: int = 24, seed: int = 0) -> np.ndarray:
    """Tight clusters, scattered points, chains one step under 0.94 apart (components through
    several balls) and pairs a hair either side of 0.94, shuffled."""
    rng = np.random.default_rng(seed)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    centres = unit(rng.normal(size=(30, dim)))
    spread = np.repeat(np.tile([0.02, 0.07], 15), 40)[:, None]  # tight balls and looser ones
    clusters = unit(np.repeat(centres, 40, axis=0) + spread * rng.normal(size=(1200, dim)))
    scattered = unit(rng.normal(size=(300, dim)))
    chains = []
    for _ in range(6):
        a, b = unit(rng.normal(size=(2, dim)))
        b = unit(b - (a @ b) * a)
        step = np.arccos(0.94) * 0.999
        chains.append(np.cos(np.arange(12) * step)[:, None] * a + np.sin(np.arange(12) * step)[:, None] * b)
    pairs = []
    for eps in (-1e-9, 1e-9, -1e-8, -1e-6, 1e-6, -3e-5, 3e-5) * 20:
        a, b = unit(rng.normal(size=(2, dim)))
        b = unit(b - (a @ b) * a)
        pairs += [a, (0.94 + eps) * a + np.sqrt(1 - (0.94 + eps) ** 2) * b]
    x = np.concatenate([clusters, scattered, *chains, np.array(pairs)])
    return (x[rng.permutation(len(x))] * rng.uniform(0.5, 2, size=(len(x), 1))).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.94, 0.8, 0.97])
def test_dedup_equals_the_all_pairs_definition(threshold):
    from laion_hf.index.search import _DEDUP_DIRECT_MAX, duplicates

    x = _dedup_set()
    assert len(x) > _DEDUP_DIRECT_MAX  # the ball cover path
    want = _dedup_reference(x, threshold)
    assert 0 < want.sum() < len(x) - 300
    np.testing.assert_array_equal(duplicates(x, threshold), want)
    small = x[:200]  # the direct path
    assert len(small) <= _DEDUP_DIRECT_MAX
    np.testing.assert_array_equal(duplicates(small, threshold), _dedup_reference(small, threshold))


def test_filter_near_with_where_keeps_the_nearest_rows_that_match(tiny, embedder, tmp_path, capsys):
    from laion_hf.cli import main

    _, embed, index = tiny
    meta = pq.read_table(embed / "metadata")
    want_d, want_i = _exact(_npy(embed, "image"), embedder.encode_text(["a red thing"]), 12)
    keep = [n for n, i in enumerate(want_i[0]) if meta["punsafe"][int(i)].as_py() < 0.5]
    assert 0 < len(keep) < 12  # the filter removes some of the nearest rows
    stats = filter_near(index, tmp_path / "lib", text="a red thing", k=12, where="punsafe < 0.5")
    table = pq.read_table(tmp_path / "lib" / "part-00000.parquet")
    assert table["key"].to_pylist() == [meta["key"][int(want_i[0][n])].as_py() for n in keep]
    np.testing.assert_allclose(table["similarity"].to_numpy(), want_d[0][keep], rtol=1e-5)
    assert stats["rows_kept"] == len(keep) and stats["removed_by_filter"] == 12 - len(keep)
    assert stats["rows_kept"] + stats["removed_by_filter"] + stats["removed_by_query"] == stats["rows_in"] == 40
    args = ["filter", str(index), "--near", "a red thing", "--k", "12", "--where", "punsafe < 0.5"]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 0
    assert (
        f"kept {len(keep)} of 40 rows nearest the query (12 nearest, {12 - len(keep)} removed"
        in capsys.readouterr().out
    )
    assert pq.read_table(tmp_path / "cli" / "part-00000.parquet").equals(table)
    assert main([*args, "--sample", "0.5", "--out", str(tmp_path / "sampled")]) != 0
    assert "--sample cannot be combined with --near" in capsys.readouterr().err
    assert not (tmp_path / "sampled").exists()
    with pytest.raises(Exception, match="unknown column.*'nope'"):
        filter_near(index, tmp_path / "bad", text="a red thing", k=3, where="nope > 1")


def test_filter_near_keeps_laion_similarity_beside_the_query_similarity(tmp_path):
    """LAION metadata has a ``similarity`` column (the caption-image score): the query's score is
    written beside it as ``query_similarity`` (two columns of one name cannot be read back)."""
    import pyarrow as pa

    src = write_embed_folder(tmp_path / "emb", parts=1, rows=30, dim=8)
    meta = pq.read_table(src / "metadata" / "metadata_0.parquet")
    laion = np.linspace(0.2, 0.4, 30)
    pq.write_table(meta.append_column("similarity", pa.array(laion)), src / "metadata" / "metadata_0.parquet")
    build_index(src, tmp_path / "idx")
    q = np.load(src / "img_emb" / "img_emb_0.npy")[20].astype(np.float32)
    filter_near(tmp_path / "idx", tmp_path / "near", embedding=q.tolist(), k=8, where="similarity >= 0.3")
    got = pq.read_table(tmp_path / "near" / "part-00000.parquet")
    assert got.column_names[-2:] == ["similarity", "query_similarity"]
    assert all(v >= 0.3 for v in got["similarity"].to_pylist())  # --where reads LAION's column
    want_d, want_i = _exact(_npy(src, "image"), q[None] / np.linalg.norm(q), 8)
    keep = [n for n, i in enumerate(want_i[0]) if laion[i] >= 0.3]
    assert 0 < len(keep) < 8
    assert got["key"].to_pylist() == [f"0_{want_i[0][n]}" for n in keep]
    np.testing.assert_allclose(got["query_similarity"].to_numpy(), want_d[0][keep], rtol=1e-4)

"""Every rank yields the same number of batches per exact epoch, on uneven shards (DDP would
hang otherwise); RANK / WORLD_SIZE from the environment; resume on balanced shares."""

from __future__ import annotations

import collections
import shutil

import datasets
import dl_shards
import pytest

from laion_hf.loader import LaionTorchDataset, make_dataloader

SIZES = (151, 60, 30)  # 241 rows: not a multiple of 2 ranks x 2 workers
KW = {"batch_size": 16, "image_size": 32, "buffer_size": 40, "tokenizer": None, "num_workers": 2}


def _subsets(samples):
    lo = 0
    for n in SIZES:
        yield tuple(col[lo : lo + n] for col in samples)
        lo += n


@pytest.fixture(scope="module")
def uneven_samples():
    return dl_shards.make_samples(sum(SIZES), size=40, seed=3)


@pytest.fixture(scope="module")
def uneven_tars(tmp_path_factory, uneven_samples):
    root = tmp_path_factory.mktemp("uneven_wds")
    for i, sub in enumerate(_subsets(uneven_samples)):
        dl_shards.write_wds_shards(root / "tmp", 0, 1, samples=sub)
        shutil.move(root / "tmp" / "00000.tar", root / f"{i:05d}.tar")
    shutil.rmtree(root / "tmp")
    return root


@pytest.fixture(scope="module")
def uneven_parquet(tmp_path_factory, uneven_samples):
    root = tmp_path_factory.mktemp("uneven_parquet")
    out = root / "data" / "default"
    out.mkdir(parents=True)
    for i, sub in enumerate(_subsets(uneven_samples)):
        (path,) = dl_shards.write_parquet_shards(root / "tmp", 0, 1, row_group_size=100, samples=sub)
        shutil.move(path, out / f"train-{i:05d}-of-{len(SIZES):05d}.parquet")
    shutil.rmtree(root / "tmp")
    return root


def _source(kind, uneven_tars, uneven_parquet):
    if kind == "webdataset":
        return uneven_tars
    if kind == "parquet":
        return uneven_parquet
    files = sorted(map(str, uneven_parquet.rglob("*.parquet")))
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)


def _rank_keys(source, rank, **kw):
    loader = make_dataloader(source, rank=rank, world_size=2, **{**KW, **kw})
    loader.dataset.set_epoch(1)
    return [b["key"] for b in loader]


@pytest.mark.parametrize("kind", ["webdataset", "parquet", "datasets"])
def test_ranks_yield_equal_batch_counts_on_uneven_shards(kind, uneven_tars, uneven_parquet, uneven_samples):
    source = _source(kind, uneven_tars, uneven_parquet)
    per_rank = [_rank_keys(source, r) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0, [len(b) for b in per_rank]
    keys = [k for rank in per_rank for b in rank for k in b]
    assert set(keys) == set(uneven_samples[0])  # nothing lost
    # padded like DistributedSampler: 4 readers x ceil(241 / 4) = 244 rows, 3 repeated
    assert len(keys) == 244
    assert sum(c - 1 for c in collections.Counter(keys).values()) == 3


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_drop_last_gives_equal_full_batches_without_repeats(kind, uneven_tars, uneven_parquet):
    source = _source(kind, uneven_tars, uneven_parquet)
    per_rank = [_rank_keys(source, r, drop_last=True) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2 * (241 // 4 // 16)  # 2 workers x 3 full batches
    keys = [k for rank in per_rank for b in rank for k in b]
    assert all(len(b) == 16 for rank in per_rank for b in rank)
    assert len(set(keys)) == len(keys)


def test_unbalanced_opt_out_keeps_whole_units(uneven_tars):
    counts = [len(_rank_keys(uneven_tars, r, balance=False)) for r in (0, 1)]
    keys = [k for r in (0, 1) for b in _rank_keys(uneven_tars, r, balance=False) for k in b]
    assert len(keys) == len(set(keys)) == 241  # every sample exactly once
    assert counts[0] != counts[1]  # what DDP would hang on


def test_tar_row_counts_match_what_is_read(uneven_tars):
    ds = LaionTorchDataset(uneven_tars, rank=0, world_size=2, tokenizer=None)
    assert ds._unit_rows() == list(SIZES)


def test_rank_and_world_size_from_the_environment(uneven_parquet, monkeypatch):
    want = _rank_keys(uneven_parquet, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = make_dataloader(uneven_parquet, **KW)
    loader.dataset.set_epoch(1)
    assert [b["key"] for b in loader] == want


@pytest.mark.parametrize("kind", ["webdataset", "datasets"])
def test_resume_mid_epoch_on_balanced_shares(kind, uneven_tars, uneven_parquet):
    source = _source(kind, uneven_tars, uneven_parquet)
    full = _rank_keys(source, 1)
    loader = make_dataloader(source, rank=1, world_size=2, **KW)
    loader.dataset.set_epoch(1)
    head = []
    for batch in loader:
        head.append(batch["key"])
        if len(head) == 3:
            state = loader.state_dict()
            break
    fresh = make_dataloader(source, rank=1, world_size=2, **KW)
    fresh.load_state_dict(state)
    assert head + [b["key"] for b in fresh] == full


def test_all_bad_batches_are_yielded_empty_to_keep_counts_equal(corrupt_dir):
    """60 rows, 3 of them without a decodable image, batches of 1: the bad rows become empty
    batches (counted in num_skipped) instead of vanishing from one rank's count."""
    kw = {"batch_size": 1, "image_size": 32, "tokenizer": None, "num_workers": 0, "world_size": 2}
    per_rank = [list(make_dataloader(corrupt_dir, rank=r, **kw)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 30
    empty = [b for rank in per_rank for b in rank if not b["key"]]
    assert len(empty) == 3
    assert all(b["num_skipped"] == 1 and b["image"].shape == (0, 3, 32, 32) for b in empty)


def test_resume_across_balance_modes_is_refused(uneven_tars):
    loader = make_dataloader(uneven_tars, rank=0, world_size=2, balance=False, **KW)
    next(iter(loader))
    state = loader.state_dict()
    fresh = make_dataloader(uneven_tars, rank=0, world_size=2, **KW)
    fresh.load_state_dict(state)
    with pytest.raises(Exception, match="in exact mode; this is reader 0 of 4 in balanced mode"):
        next(iter(fresh))

"""Exact resume: a loader state taken after k batches, loaded into a fresh loader, continues with
exactly the batches the uninterrupted run yields from batch k on (shuffling on, 2 workers)."""

from __future__ import annotations

import io

import datasets
import pytest
import torch

from laion_hf.errors import LoaderError
from laion_hf.loader import make_dataloader

KW = dict(batch_size=16, image_size=32, buffer_size=40, tokenizer=None, num_workers=2, seed=7)


def run(source, *, epoch=1, stop_after=None, state=None, **kw):
    """(batches, state after ``stop_after`` batches) of one epoch."""
    loader = make_dataloader(source, **{**KW, **kw})
    loader.dataset.set_epoch(epoch)
    if state is not None:
        loader.load_state_dict(state)
    batches, saved = [], None
    for i, batch in enumerate(loader):
        batches.append(batch)
        if stop_after is not None and i + 1 == stop_after:
            saved = loader.state_dict()
            break
    return batches, saved


def checkpoint_roundtrip(state):
    """The state goes through torch.save / torch.load(weights_only=True) like a training checkpoint."""
    buf = io.BytesIO()
    torch.save({"loader": state}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["loader"]


def assert_same_batches(got, want):
    assert [b["key"] for b in got] == [b["key"] for b in want]
    for g, w in zip(got, want):
        assert torch.equal(g["image"], w["image"])


@pytest.mark.parametrize("k", [1, 4, 13, 15])  # 16 batches (8 per worker): 13 resumes while buffers
# drain, 15 after worker 0 has finished
def test_resume_after_k_batches_equals_uninterrupted_run(parquet_dir, k):
    full, _ = run(parquet_dir)
    assert len(full) == 16
    head, state = run(parquet_dir, stop_after=k)
    assert_same_batches(head, full[:k])
    tail, _ = run(parquet_dir, state=checkpoint_roundtrip(state), epoch=0)  # the state's epoch wins
    assert_same_batches(tail, full[k:])


def test_resume_webdataset_and_datasets_stream(wds_dir, parquet_dir):
    stream = datasets.load_dataset(
        "parquet", data_files=sorted(map(str, parquet_dir.rglob("*.parquet"))), split="train", streaming=True
    )
    for source in (wds_dir, stream):
        full, _ = run(source)
        _, state = run(source, stop_after=5)
        tail, _ = run(source, state=checkpoint_roundtrip(state))
        assert_same_batches(tail, full[5:])


def test_resume_in_resampled_mode(parquet_dir):
    kw = dict(samples_per_epoch=300)
    full, _ = run(parquet_dir, **kw)
    assert len(full) == 19  # ceil(300 / 16)
    _, state = run(parquet_dir, stop_after=6, **kw)
    tail, _ = run(parquet_dir, state=checkpoint_roundtrip(state), **kw)
    assert_same_batches(tail, full[6:])


def test_resume_single_process(parquet_dir):
    full, _ = run(parquet_dir, num_workers=0, buffer_size=100)
    _, state = run(parquet_dir, num_workers=0, buffer_size=100, stop_after=3)
    tail, _ = run(parquet_dir, num_workers=0, buffer_size=100, state=state)
    assert_same_batches(tail, full[3:])


def test_resume_with_other_topology_is_refused(parquet_dir):
    _, state = run(parquet_dir, stop_after=2)
    loader = make_dataloader(parquet_dir, **{**KW, "num_workers": 1})
    loader.load_state_dict(state)
    with pytest.raises(Exception, match="same world_size, num_workers"):
        next(iter(loader))
    with pytest.raises(LoaderError):
        loader.dataset.load_state_dict({"epoch": 3})


@pytest.fixture
def eager_compaction(monkeypatch):
    """Compact the shuffle buffer as soon as it holds more than 2 x buffer_size rows (the default
    slack of 2,048 rows is larger than these test shards)."""
    import laion_hf.loader.stream as lt

    monkeypatch.setattr(lt, "_COMPACT_SLACK", 0)


def test_compaction_bounds_memory_and_keeps_the_stream(parquet_dir, all_keys, eager_compaction):
    from laion_hf.loader import LaionTorchDataset

    ds = LaionTorchDataset(parquet_dir, batch_size=8, image_size=32, buffer_size=30, tokenizer=None, seed=3)
    keys, most_held = [], 0
    for batch in ds:
        keys += batch["key"]
        most_held = max(most_held, sum(len(s.ids) for s in ds._live.segments))
    assert sorted(keys) == sorted(all_keys)
    assert most_held <= 2 * 30 + 20  # 2 x buffer + one 20-row table
    full, _ = run(parquet_dir, buffer_size=30)
    _, state = run(parquet_dir, buffer_size=30, stop_after=5)
    tail, _ = run(parquet_dir, buffer_size=30, state=state)
    assert_same_batches(tail, full[5:])


def test_resume_on_changed_shards_is_refused(parquet_dir, tmp_path):
    import shutil

    _, state = run(parquet_dir, stop_after=2)
    changed = tmp_path / "changed"
    shutil.copytree(parquet_dir, changed)
    victim = sorted(changed.rglob("*.parquet"))[-1]
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(victim), victim, row_group_size=5)  # same rows, other row groups
    loader = make_dataloader(changed, **KW)
    loader.load_state_dict(state)
    with pytest.raises(Exception, match="shards changed since the checkpoint"):
        next(iter(loader))

"""The loader on a published repo: load_dataset(repo, streaming=True) from a local Hub-compatible
server, through the real huggingface_hub / datasets clients."""

from __future__ import annotations

import collections

import datasets

from laion_hf.loader import make_dataloader

KW = dict(batch_size=16, image_size=32, buffer_size=40, tokenizer=None, num_workers=2)


def test_published_repo_two_ranks_and_resume(hub, all_keys):
    stream = datasets.load_dataset("laion-hf/dl-test", split="train", streaming=True)
    keys = []
    for rank in (0, 1):
        loader = make_dataloader(stream, rank=rank, world_size=2, **KW)
        keys += [k for batch in loader for k in batch["key"]]
    assert not [k for k, c in collections.Counter(keys).items() if c > 1]
    assert set(keys) == all_keys

    full = [b["key"] for b in make_dataloader(stream, **KW)]
    loader = make_dataloader(stream, **KW)
    for i, _ in enumerate(loader):
        if i == 2:
            state = loader.state_dict()
            break
    resumed = make_dataloader(stream, **KW)
    resumed.load_state_dict(state)
    assert [b["key"] for b in resumed] == full[3:]
    assert any(r["route"].startswith("resolve") or "resolve" in r["path"] for r in hub.requests)


def test_published_repo_through_hf_filesystem(hub, all_keys):
    """``hf://datasets/{repo}`` reads the same shards with fsspec (row-group units, no datasets)."""
    keys = []
    for rank in (0, 1):
        loader = make_dataloader("hf://datasets/laion-hf/dl-test", rank=rank, world_size=2, **KW)
        assert len(loader.dataset.units_for(4)) == 12  # 3 files x 4 row groups
        keys += [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == sorted(all_keys)

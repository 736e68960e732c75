"""Node and worker splitting, per-epoch shuffling and resampling of laion_hf.loader."""

from __future__ import annotations

import collections

import datasets
import pytest
import torch

from laion_hf.errors import LoaderError
from laion_hf.loader import LaionTorchDataset, make_dataloader

KW = dict(batch_size=16, image_size=32, buffer_size=40, tokenizer=None)


def epoch_batches(source, *, rank=0, world_size=1, epoch=0, num_workers=2, **kw):
    """Key lists of every batch one rank sees in one epoch."""
    loader = make_dataloader(source, num_workers=num_workers, rank=rank, world_size=world_size, **{**KW, **kw})
    loader.dataset.set_epoch(epoch)
    return [batch["key"] for batch in loader]


def flat(batches):
    return [k for b in batches for k in b]


def hub_stream():
    return datasets.load_dataset("laion-hf/dl-test", split="train", streaming=True)


@pytest.fixture(params=["parquet", "one_unit", "webdataset", "datasets"])
def source(request, parquet_dir, one_unit_dir, wds_dir):
    if request.param == "parquet":
        return parquet_dir
    if request.param == "one_unit":
        return one_unit_dir  # 1 unit < 4 readers: split by row ranges
    if request.param == "webdataset":
        return wds_dir  # 3 tars < 4 readers: split by row strides
    return datasets.load_dataset(
        "parquet", data_files=sorted(map(str, parquet_dir.rglob("*.parquet"))), split="train", streaming=True
    )


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(source, all_keys):
    orders = []
    for epoch in (0, 1):
        per_rank = [flat(epoch_batches(source, rank=r, world_size=2, epoch=epoch)) for r in (0, 1)]
        union = per_rank[0] + per_rank[1]
        dupes = [k for k, c in collections.Counter(union).items() if c > 1]
        assert not dupes, f"epoch {epoch}: duplicated keys {dupes[:5]}"
        assert set(union) == all_keys, f"epoch {epoch}: lost {sorted(all_keys - set(union))[:5]}"
        assert all(len(r) > 0 for r in per_rank)
        orders.append(per_rank[0])
    assert orders[0] != orders[1], "two epochs gave the same order"
    again = flat(epoch_batches(source, rank=0, world_size=2, epoch=0))
    assert again == orders[0], "same seed and epoch gave a different order"


def test_seed_changes_order_and_no_shuffle_is_file_order(parquet_dir, all_keys):
    a = flat(epoch_batches(parquet_dir, num_workers=0, seed=1))
    b = flat(epoch_batches(parquet_dir, num_workers=0, seed=2))
    assert a != b and set(a) == set(b) == all_keys
    plain = flat(epoch_batches(parquet_dir, num_workers=0, shuffle=False))
    assert plain == sorted(all_keys)


def test_shuffle_buffer_mixes_within_units(parquet_dir):
    # with shard shuffling alone, each 20-row unit would come out as one consecutive run
    keys = flat(epoch_batches(parquet_dir, num_workers=0, buffer_size=60))
    unit_of = [int(k) // 20 for k in keys]
    runs = sum(1 for i in range(1, len(unit_of)) if unit_of[i] != unit_of[i - 1])
    assert runs > 60, f"only {runs} unit changes in {len(keys)} rows: rows are not shuffled"


def test_torch_distributed_rank_is_used(parquet_dir, all_keys, tmp_path):
    """Two real gloo processes: without explicit rank/world_size the loader splits by the
    process group."""
    ctx = torch.multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ddp_rank, args=(r, str(tmp_path), str(parquet_dir))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert got[0] and got[1]
    assert not set(got[0]) & set(got[1])
    assert set(got[0]) | set(got[1]) == all_keys


def _ddp_rank(rank: int, out: str, source: str) -> None:
    import torch.distributed as dist

    store = dist.FileStore(f"{out}/store", 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    loader = make_dataloader(source, num_workers=2, **KW)
    keys = flat(batch["key"] for batch in loader)
    with open(f"{out}/rank{rank}.txt", "w") as fh:
        fh.write("\n".join(keys))
    dist.barrier()
    dist.destroy_process_group()


def test_samples_per_epoch_resamples_whole_batches(parquet_dir, all_keys):
    per_rank = [epoch_batches(parquet_dir, rank=r, world_size=2, samples_per_epoch=100) for r in (0, 1)]
    # ceil(100 / (2 ranks * 16)) = 4 full batches per rank, split over the 2 workers
    assert [len(b) for b in per_rank] == [4, 4]
    assert all(len(batch) == 16 for rank in per_rank for batch in rank)
    keys = flat(per_rank[0]) + flat(per_rank[1])
    assert set(keys) <= all_keys
    assert (
        LaionTorchDataset(parquet_dir, samples_per_epoch=100, batch_size=16, world_size=2, rank=0).batches_per_rank()
        == 4
    )
    other = flat(epoch_batches(parquet_dir, rank=0, world_size=2, samples_per_epoch=100, epoch=1))
    assert other != flat(per_rank[0])
    # more samples than the dataset holds: resampling goes on past one pass
    big = flat(epoch_batches(parquet_dir, num_workers=2, samples_per_epoch=400))
    assert len(big) == 400 and len(set(big)) < 400


def test_bad_sources_name_the_culprit(tmp_path, parquet_dir):
    with pytest.raises(LoaderError, match="does-not-exist"):
        LaionTorchDataset(tmp_path / "does-not-exist")
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(Exception, match="x.parquet"):
        LaionTorchDataset(tmp_path / "x.parquet")
    with pytest.raises(LoaderError, match="no image column 'photo'"):
        LaionTorchDataset(parquet_dir, image_column="photo")
    with pytest.raises(LoaderError, match="on_error"):
        LaionTorchDataset(parquet_dir, on_error="ignore")


def test_map_style_dataset_source(parquet_dir, all_keys):
    table_ds = datasets.load_dataset(
        "parquet", data_files=sorted(map(str, parquet_dir.rglob("*.parquet"))), split="train"
    )
    keys = flat(epoch_batches(table_ds, rank=0, world_size=2)) + flat(epoch_batches(table_ds, rank=1, world_size=2))
    assert sorted(keys) == sorted(all_keys)

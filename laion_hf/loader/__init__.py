"""PyTorch data loading for training on published LAION shards.

``LaionTorchDataset`` is a ``torch.utils.data.IterableDataset`` that yields ready batches
(``{"image": float [n,3,S,S], "text": long [n,77], "caption": [...], "key": [...], ...}``)
from a local folder of our parquet shards, webdataset tars, or a ``datasets`` stream
(``load_dataset(repo, streaming=True)``). ``make_dataloader`` wraps it in torchdata's
``StatefulDataLoader`` so ``state_dict()`` / ``load_state_dict()`` resume exactly.

How the work is cut:

* A source is a list of *units*: parquet files x row groups, tars, or ``datasets`` shards
  (after ``reshard()``). When there are fewer units than ``world_size * num_workers`` they
  are split further (row ranges for parquet, row strides otherwise), the same way on every
  rank, so every sample belongs to exactly one reader.
* Each epoch the unit order is permuted with ``(seed, epoch)``. With one rank (or
  ``balance=False``) the units are dealt round-robin to the ``world_size * num_workers``
  readers. With several ranks (rank and world size from ``torch.distributed`` when
  initialised, else from the ``RANK`` / ``WORLD_SIZE`` environment variables, as webdataset
  does) the permuted units are laid end to end and cut into equal row ranges, one per reader,
  so that **every rank yields the same number of batches** (DDP hangs otherwise). Like
  ``DistributedSampler``, each reader gets ceil(rows / readers) rows, the few missing at the
  end repeating the epoch's first rows (< readers duplicates); with ``drop_last=True`` it gets
  floor(rows / readers), the rest dropped, and short final batches are dropped. Row counts
  come from parquet metadata, tar headers (one seek-only pass over each tar at construction)
  or one small column of each ``datasets`` shard; a tar or ``datasets`` shard cut between
  readers is read by skipping to the first row of the range. A batch whose every image fails
  with ``on_error="skip"`` is then yielded empty (0 rows, ``num_skipped`` > 0) rather than
  dropped, so counts stay equal.
* Each reader passes its rows through a bounded shuffle buffer (``buffer_size`` rows). The
  buffer's random draw for the t-th row is a function of ``(seed, epoch, reader, t)`` only,
  so the stream is reproducible and a reader's state is small: where it reads next, and
  which rows (unit, row) sit in the buffer.
* Rows stay in Arrow tables until a batch is complete; then images are decoded, resized,
  center-cropped and normalised straight into one batch tensor (in shared memory when in a
  worker) and captions are tokenised as one list.

``samples_per_epoch`` switches to resampling (open_clip's ``--dataset-resampled``): every
reader draws units with replacement until it has produced its share of whole batches.

Usage::

    from laion_hf import make_dataloader

    loader = make_dataloader("shards/", batch_size=256, num_workers=8)   # or load_dataset(repo, streaming=True)
    for epoch in range(start_epoch, epochs):
        loader.dataset.set_epoch(epoch)
        for batch in loader:            # batch["image"]: [n,3,224,224] float, batch["text"]: [n,77] long
            ...
            checkpoint = {"loader": loader.state_dict(), ...}   # exact resume: loader.load_state_dict(...)

Exact passes over several ranks are balanced (above); ``samples_per_epoch`` gives every rank
the same number of whole batches too.
"""

from __future__ import annotations

from laion_hf.loader.dataset import LaionTorchDataset, loader_demo, make_dataloader
from laion_hf.loader.preprocess import OPENAI_MEAN, OPENAI_STD, fast_clip_preprocess

__all__ = ["LaionTorchDataset", "make_dataloader", "loader_demo", "fast_clip_preprocess", "OPENAI_MEAN", "OPENAI_STD"]

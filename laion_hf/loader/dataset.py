"""``LaionTorchDataset``: the IterableDataset that yields ready batches, and ``make_dataloader``."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from laion_hf._util.on_error import check_on_error
from laion_hf.errors import LoaderError
from laion_hf.loader.preprocess import OPENAI_MEAN, OPENAI_STD, _alloc, fast_clip_preprocess
from laion_hf.loader.sources import (
    _dist_info,
    _HFSource,
    _ParquetSource,
    _resolve_files,
    _TarSource,
    _Unit,
    _unit_rows,
)
from laion_hf.loader.stream import _STATE_VERSION, _ReaderStream


# --------------------------------------------------------------------------- dataset
class LaionTorchDataset(IterableDataset):
    """Batches of decoded, preprocessed, tokenised samples for training (see module docstring).

    Args:
        source: a folder of our shards (``data/{config}/train-*.parquet``) or of webdataset
            tars, a glob, a file, a list of files (local paths or fsspec URLs), or a
            ``datasets.IterableDataset`` / ``Dataset`` (e.g. ``load_dataset(repo, streaming=True)``).
        batch_size: rows per batch (the last batch of an exact pass may be smaller).
        image_size: output side for the built-in open_clip-equivalent preprocessing.
        preprocess: a per-image callable PIL -> tensor (e.g. open_clip's ``preprocess``) used
            instead of the built-in batched path; ``None`` uses the fast path.
        mean, std: normalisation of the fast path (OpenAI CLIP's by default).
        draft: ``False`` (default): pixels equal open_clip's eval transform. ``True``: an
            approximation that downscales big JPEGs in the DCT domain first (faster; see
            ``fast_clip_preprocess`` for its error). Never use it to evaluate models.
        tokenizer: ``"clip"`` (open_clip's default BPE, context 77), a callable
            ``list[str] -> LongTensor``, or ``None`` to leave captions as strings only.
        shuffle: shuffle unit order and rows (buffer) with ``(seed, epoch)``.
        buffer_size: rows held by each reader's shuffle buffer.
        seed: base seed; call ``set_epoch`` each epoch for a fresh order.
        samples_per_epoch: resampling mode: each epoch is this many samples (rounded up to
            whole batches per rank) drawn with replacement of units; ``None``: exact passes.
        rank, world_size: node split; default from ``torch.distributed`` when initialised, else
            the ``RANK`` / ``WORLD_SIZE`` environment variables, else a single rank.
        on_error: ``"skip"`` drops rows whose image is missing or undecodable and counts them
            in ``batch["num_skipped"]``; ``"mark"`` keeps them as zero images with
            ``batch["valid"]`` False and ``batch["error"]`` naming the error class; ``"raise"``
            stops with a :class:`LoaderError` naming the first such row's key.
        columns: extra columns to pass through (numbers and fixed-length lists become tensors).
        image_column, caption_column, key_column: override column detection.
        config, split: pick ``data/{config}/{split}-*`` in a folder of published shards.
        drop_last: drop a final short batch in exact mode (with several ranks: cut the row
            shares down to equal instead of padding them up).
        balance: with several ranks, cut exact passes into equal row shares so every rank
            yields the same number of batches (default). ``False``: whole units dealt
            round-robin, every row exactly once, batch counts may differ between ranks.
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int = 256,
        image_size: int = 224,
        preprocess: Callable | None = None,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        draft: bool = False,
        tokenizer: str | Callable | None = "clip",
        shuffle: bool = True,
        buffer_size: int = 2000,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "skip",
        columns: Sequence[str] = (),
        image_column: str | None = None,
        caption_column: str | None = None,
        key_column: str | None = None,
        config: str | None = None,
        split: str = "train",
        drop_last: bool = False,
        balance: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
        on_error = check_on_error(on_error, ("raise", "skip", "mark"), "the loader", LoaderError)
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise LoaderError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if buffer_size < 0:
            raise LoaderError(f"buffer_size must be >= 0, got {buffer_size}")
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.preprocess = preprocess
        self.mean, self.std = tuple(mean), tuple(std)
        self.draft = draft
        self.tokenizer = tokenizer
        self.shuffle = shuffle
        self.buffer_size = int(buffer_size) if shuffle else 0
        self.seed = int(seed)
        self.samples_per_epoch = samples_per_epoch
        self.rank, self.world_size = rank, world_size
        self.on_error = on_error
        self.drop_last = drop_last
        self.balance = balance
        self.epoch = 0
        self._source = self._make_source(
            source, image_column, caption_column, key_column, tuple(columns), config, split
        )
        self._base_units = self._source.units()  # computed once, shipped to the workers
        if not self._base_units:
            raise LoaderError(f"{source!r} holds no rows")
        self._rows: list[int] | None = None
        if self._balanced(self._topology()[1]):
            self._unit_rows()  # count once here: forked workers inherit the counts
        self._tok = None
        if tokenizer is not None and tokenizer != "clip" and not callable(tokenizer):
            raise LoaderError(f"tokenizer must be 'clip', a callable or None, got {tokenizer!r}")
        if tokenizer == "clip":
            self._tokenize([])  # build it here once: forked workers inherit it instead of importing open_clip
        self._resume: dict | None = None
        self._live: _ReaderStream | None = None

    @staticmethod
    def _make_source(source, image_column, caption_column, key_column, columns, config, split):
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a core dependency
            datasets = None
        if datasets is not None and isinstance(source, datasets.Dataset):
            source = source.to_iterable_dataset(num_shards=max(1, min(len(source) // 1000, 256)))
        if datasets is not None and isinstance(source, datasets.IterableDataset):
            return _HFSource(source, image_column, caption_column, key_column, columns)
        fs, files, kind = _resolve_files(source, config, split)
        cls = _ParquetSource if kind == "parquet" else _TarSource
        return cls(fs, files, image_column, caption_column, key_column, columns)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = None  # a running iterator stays in its process
        return state

    # -- epochs and state ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """This reader's position (called in each DataLoader worker by ``StatefulDataLoader``)."""
        if self._live is not None:
            return self._live.state()
        if self._resume is not None:
            return self._resume
        return {"v": _STATE_VERSION, "epoch": self.epoch, "fresh": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration."""
        if not isinstance(state, dict) or state.get("v") != _STATE_VERSION:
            raise LoaderError(f"not a LaionTorchDataset state (version {_STATE_VERSION}): {str(state)[:200]}")
        self.epoch = int(state["epoch"])
        self._resume = None if state.get("fresh") else state
        self._live = None

    # -- topology -----------------------------------------------------------------------
    def _topology(self) -> tuple[int, int, int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            env_rank, env_world = _dist_info()
            rank = env_rank if rank is None else rank
            world = env_world if world is None else world
        if not 0 <= rank < world:
            raise LoaderError(f"rank {rank} is outside world_size {world}")
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, w, nw

    def _balanced(self, world: int) -> bool:
        """Whether an exact pass cuts rows evenly across readers (see the module docstring)."""
        return self.balance and world > 1 and self.samples_per_epoch is None

    def _unit_rows(self) -> list[int]:
        """Rows of each base unit (computed once; shipped to the workers when known early)."""
        if self._rows is None:
            self._rows = [_unit_rows(self._source, u) for u in self._base_units]
        return self._rows

    def _read(self, unit: _Unit, start: int) -> Iterator[pa.Table]:
        """Rows ``start:`` of ``unit``; a row range ``lo:hi`` of a tar or ``datasets`` shard is
        read by skipping ``lo`` rows of the whole unit and stopping after ``hi``."""
        if unit.hi < 0 or self._source.kind == "parquet":
            yield from self._source.read(unit, start)
            return
        left = unit.hi - unit.lo - start
        whole = _Unit(unit.file, part=unit.part, nparts=unit.nparts)
        tables = self._source.read(whole, unit.lo + start)
        with contextlib.closing(tables):
            for t in tables:
                if left <= 0:
                    break
                t = t.slice(0, left) if t.num_rows > left else t
                left -= t.num_rows
                yield t

    def units_for(self, readers: int) -> list[_Unit]:
        """All units, split so that there are at least ``readers`` of them."""
        units = self._base_units
        if len(units) < readers:
            k = math.ceil(readers / len(units))
            units = [u for unit in units for u in self._source.split(unit, k)]
        return units

    def batches_per_rank(self) -> int | None:
        """Batches each rank yields per epoch in ``samples_per_epoch`` mode (None for exact passes)."""
        if self.samples_per_epoch is None:
            return None
        _, world, _, _ = self._topology()
        return math.ceil(self.samples_per_epoch / (world * self.batch_size))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, w, nw = self._topology()
        resume, self._resume = self._resume, None
        stream = _ReaderStream(self, rank * nw + w, world * nw, w, nw, self.epoch, resume)
        self._live = stream
        return stream

    # -- per-batch work (runs in the workers) -------------------------------------------
    def _tokenize(self, captions: list[str]) -> torch.Tensor | None:
        if self.tokenizer is None:
            return None
        if self._tok is None:  # built once per process
            if self.tokenizer == "clip":
                try:
                    from open_clip.tokenizer import SimpleTokenizer
                except ImportError as exc:
                    raise LoaderError(
                        "tokenizer='clip' needs open_clip: pip install 'laion-hf[clip]', or pass tokenizer=None "
                        f"(captions as strings) or your own callable ({exc})"
                    ) from exc
                self._tok = SimpleTokenizer()
            elif callable(self.tokenizer):
                self._tok = self.tokenizer
            else:
                raise LoaderError(f"tokenizer must be 'clip', a callable or None, got {self.tokenizer!r}")
        return self._tok(captions)

    def _decode(self, table: pa.Table, carry_skipped: int, keep_empty: bool = False) -> dict[str, Any] | None:
        images = table.column("image").to_pylist()
        if self.preprocess is None:
            pixels, ok, errors = fast_clip_preprocess(images, self.image_size, self.mean, self.std, self.draft)
        else:
            pixels, ok, errors = self._slow_preprocess(images)
        n_bad = int((~ok).sum())
        if self.on_error == "raise" and n_bad:
            bad = int(np.nonzero(~ok)[0][0])
            key = table.column("key")[bad].as_py()
            raise LoaderError(
                f"row {key!r}: image cannot be used ({errors[bad]}); pass on_error='skip' or 'mark' to go on without it"
            )
        if self.on_error == "skip" and n_bad:
            keep = np.nonzero(ok)[0]
            if len(keep) == 0 and not keep_empty:
                return None
            pixels = pixels[torch.from_numpy(keep)]
            table = table.take(pa.array(keep))
        batch: dict[str, Any] = {"image": pixels}
        captions = [c if c is not None else "" for c in table.column("caption").to_pylist()]
        text = self._tokenize(captions)
        if text is not None:
            batch["text"] = text
        batch["caption"] = captions
        batch["key"] = table.column("key").to_pylist()
        if self.on_error == "mark":
            batch["valid"] = torch.from_numpy(ok)
            batch["error"] = errors
            batch["num_skipped"] = 0
        else:
            batch["num_skipped"] = n_bad + carry_skipped
        for name in table.column_names[3:]:
            batch[name] = _column_to_torch(table.column(name))
        return batch

    def _slow_preprocess(self, images: list[bytes | None]):
        from PIL import Image

        n = len(images)
        ok = np.zeros(n, dtype=bool)
        errors: list[str | None] = [None] * n
        tensors: list[torch.Tensor | None] = [None] * n
        for i, data in enumerate(images):
            if data is None:
                errors[i] = "MissingImage"
                continue
            try:
                tensors[i] = self.preprocess(Image.open(io.BytesIO(data)))
                ok[i] = True
            except Exception as exc:
                errors[i] = type(exc).__name__
        like = next((t for t in tensors if t is not None), None)
        if like is None:
            like = torch.zeros(3, self.image_size, self.image_size)
        out = _alloc((n, *like.shape), like.dtype)
        for i, t in enumerate(tensors):
            out[i] = t if t is not None else 0
        return out, ok, errors


def _column_to_torch(col: pa.ChunkedArray):
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        arr = col.combine_chunks()
        if arr.null_count == 0 and (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
            flat = arr.flatten().to_numpy(zero_copy_only=False)
            if len(arr) and len(flat) % len(arr) == 0:
                return torch.from_numpy(flat.reshape(len(arr), -1).copy())
        return arr.to_pylist()
    if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)) and col.null_count == 0:
        return torch.from_numpy(col.to_numpy().copy())
    return col.to_pylist()


# --------------------------------------------------------------------------- loader
def make_dataloader(
    source: Any,
    *,
    batch_size: int = 256,
    num_workers: int = 2,
    pin_memory: bool = False,
    prefetch_factor: int | None = 2,
    multiprocessing_context: Any = None,
    **dataset_kwargs: Any,
):
    """A ``torchdata.stateful_dataloader.StatefulDataLoader`` over ``LaionTorchDataset(source, ...)``
    (``batch_size=None``: the dataset yields whole batches; ``dataset_kwargs`` go to the dataset).

    Use ``loader.dataset.set_epoch(e)`` before each epoch; save ``loader.state_dict()`` with
    your checkpoint and call ``loader.load_state_dict(...)`` on a fresh loader (same
    world_size, num_workers and options) to continue with exactly the batches that would
    have come next.
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    dataset = (
        source
        if isinstance(source, LaionTorchDataset)
        else LaionTorchDataset(source, batch_size=batch_size, **dataset_kwargs)
    )
    with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch.set_vital on construction
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        return StatefulDataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            persistent_workers=False,
            multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        )


def loader_demo(
    source: Any,
    *,
    batch_size: int = 16,
    num_workers: int = 2,
    image_size: int = 64,
    resume_after: int = 2,
    **dataset_kwargs: Any,
) -> dict[str, Any]:
    """Show the loader on ``source`` (e.g. the demo's shard folder or its published stream):
    read ``resume_after + 1`` batches, then prove exact resume by loading the state taken after
    ``resume_after`` batches into a fresh loader and comparing its first batch with the one the
    uninterrupted run produced. Returns a summary dict (shapes, keys, samples/s, ``resume_exact``)."""
    import time

    kw = dict(batch_size=batch_size, num_workers=num_workers, image_size=image_size, **dataset_kwargs)
    loader = make_dataloader(source, **kw)
    t0 = time.perf_counter()
    batches, state, n = [], None, 0
    for i, batch in enumerate(loader):
        batches.append(batch)
        n += len(batch["key"])
        if i + 1 == resume_after:
            state = loader.state_dict()
        if i == resume_after:
            break
    rate = n / (time.perf_counter() - t0)
    if len(batches) <= resume_after:
        raise LoaderError(f"{source!r} holds fewer than {resume_after + 1} batches of {batch_size}")
    fresh = make_dataloader(source, **kw)
    fresh.load_state_dict(state)
    again = next(iter(fresh))
    want = batches[resume_after]
    first = batches[0]
    return {
        "batches_read": len(batches),
        "image": list(first["image"].shape),
        "text": list(first["text"].shape) if "text" in first else None,
        "first_keys": first["key"][:4],
        "first_captions": first["caption"][:2],
        "num_skipped": sum(b["num_skipped"] for b in batches),
        "samples_per_s": round(rate, 1),
        "resume_exact": again["key"] == want["key"] and bool(torch.equal(again["image"], want["image"])),
    }

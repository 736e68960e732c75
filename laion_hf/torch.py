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

import contextlib
import io
import math
import os
import posixpath
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from laion_hf.errors import LoaderError, ShardError
from laion_hf.schema import pick_column
from laion_hf.sources import open_parquet

__all__ = ["LaionTorchDataset", "make_dataloader", "loader_demo", "fast_clip_preprocess", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_STATE_VERSION = 1
_BLOCK = 4096  # shuffle draws are generated in blocks of this many rows
_COMPACT_SLACK = 2048  # held rows beyond 2 x buffer_size that trigger a compaction of the buffer


# --------------------------------------------------------------------------- image path
def _resized_rgb(data: bytes, size: int, draft: bool):
    """Decode ``data`` and apply open_clip's eval transform in its order: shortest side ->
    ``size`` (bicubic, in the image's own mode: PIL resizes palette and 1-bit images with
    nearest), center crop ``size``², then RGB. Returns a PIL image."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if draft and im.format == "JPEG":
        # approximation: DCT-domain downscale by 1/2, 1/4 or 1/8 while both sides stay >= size
        im.draft("RGB", (size, size))
    w, h = im.size
    # torchvision.transforms.functional.resize(img, size) on the shorter edge
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    if (nw, nh) != (size, size):
        # torchvision CenterCrop offsets
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    if im.mode != "RGB":  # open_clip converts after resizing and cropping
        im = im.convert("RGB")
    return im


def fast_clip_preprocess(
    images: Sequence[bytes | None],
    image_size: int = 224,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    draft: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray, list[str | None]]:
    """Decode encoded images into one normalised ``[n, 3, S, S]`` float tensor.

    With ``draft=False`` (the default) the pixels equal open_clip's eval ``preprocess``
    (Resize(S, bicubic), CenterCrop(S), RGB, ToTensor, Normalize) applied per image and
    stacked. ``draft=True`` is an approximation: JPEGs at least twice ``S`` are first reduced in
    the DCT domain (faster; measured error vs open_clip at S=224 up to ~0.1, mean ~0.01 in
    normalised units, more at small S, see ``benchmarks/preprocess_error.py``); use it for
    training only, never to evaluate models. Returns the tensor,
    a bool mask of decodable images, and the error class name of each failure (``None`` for
    successes). Failed rows are zeros.
    """
    n = len(images)
    if out is None:
        out = _alloc((n, 3, image_size, image_size), torch.float32)
    staging = _staging(image_size)  # one image, uint8 channels-first: converted while still in cache
    dst = out.numpy()  # numpy ufuncs: single-threaded, no per-call OpenMP fan-out for 150k-element ops
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(3, 1, 1)
    bias = np.array([-m / s for m, s in zip(mean, std)], dtype=np.float32).reshape(3, 1, 1)
    ok = np.zeros(n, dtype=bool)
    errors: list[str | None] = [None] * n
    for i, data in enumerate(images):
        o = dst[i]
        if data is None:
            errors[i] = "MissingImage"
            o[:] = 0.0
            continue
        try:
            im = _resized_rgb(data, image_size, draft)
            for c, band in enumerate(im.split()):
                staging[c] = band
        except Exception as exc:  # any undecodable input is a marked row, never a crash
            errors[i] = type(exc).__name__
            o[:] = 0.0
            continue
        np.multiply(staging, scale, out=o)
        np.add(o, bias, out=o)
        ok[i] = True
    return out, ok, errors


_STAGING: dict[int, np.ndarray] = {}


def _staging(size: int) -> np.ndarray:
    """A reused ``[3, size, size]`` uint8 buffer (one per size and process)."""
    buf = _STAGING.get(size)
    if buf is None:
        buf = _STAGING[size] = np.empty((3, size, size), dtype=np.uint8)
    return buf


def _alloc(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; in a DataLoader worker, directly in shared memory (as default_collate
    does) so handing it to the main process costs no copy."""
    if get_worker_info() is not None:
        try:
            numel = math.prod(shape)
            elem = torch.empty(0, dtype=dtype)
            storage = elem._typed_storage()._new_shared(numel, device=elem.device)
            return elem.new(storage).resize_(*shape)
        except Exception:  # private API moved: fall back to a normal tensor
            pass
    return torch.empty(shape, dtype=dtype)


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Unit:
    """One unit of reading work: a file (or datasets shard), optionally one row group of it,
    optionally only rows ``lo:hi`` of that, optionally only every ``nparts``-th row."""

    file: int
    row_group: int = -1
    lo: int = 0
    hi: int = -1
    part: int = 0
    nparts: int = 1


@dataclass(frozen=True)
class _Columns:
    image: str
    caption: str | None
    key: str | None
    extra: tuple[str, ...]


def _normalize(table: pa.Table, cols: _Columns, key_prefix: str, row0: int) -> pa.Table:
    """Project a source table onto the loader's columns: key, image (binary), caption, extras."""
    n = table.num_rows
    image = table.column(cols.image)
    if pa.types.is_struct(image.type):
        image = pc.struct_field(image, "bytes")
    if not (pa.types.is_binary(image.type) or pa.types.is_large_binary(image.type)):
        raise LoaderError(f"image column {cols.image!r} has type {image.type}; expected binary or struct<bytes, path>")
    if cols.caption is not None:
        caption = table.column(cols.caption)
        if not pa.types.is_string(caption.type) and not pa.types.is_large_string(caption.type):
            caption = caption.cast(pa.string())
    else:
        caption = pa.nulls(n, pa.string())
    if cols.key is not None:
        key = table.column(cols.key).cast(pa.string())
    else:
        key = pa.array([f"{key_prefix}{row0 + i}" for i in range(n)], pa.string())
    arrays = [key, image, caption] + [table.column(c) for c in cols.extra]
    return pa.table(arrays, names=["key", "image", "caption", *cols.extra])


def _stride(table: pa.Table, g0: int, part: int, nparts: int) -> pa.Table:
    """Rows of ``table`` (whose first row is row ``g0`` of its unit) with index % nparts == part."""
    if nparts == 1:
        return table
    first = (part - g0) % nparts
    return table.take(pa.array(np.arange(first, table.num_rows, nparts)))


class _ParquetSource:
    kind = "parquet"

    def __init__(self, fs, files: list[str], image_column, caption_column, key_column, columns):
        self.fs, self.files = fs, files
        protocol = getattr(fs, "protocol", "file")
        self._local = "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))
        with self._open(0) as pf:
            names = pf.schema_arrow.names
        where = f"parquet shard {files[0]}"
        self.cols = _Columns(
            pick_column(names, image_column, "image", where=where, error=LoaderError),
            pick_column(names, caption_column, "caption", where=where, required=False, error=LoaderError),
            pick_column(names, key_column, "key", where=where, required=False, error=LoaderError),
            tuple(pick_column(names, c, "requested", where=where, error=LoaderError) for c in columns),
        )
        wanted = [self.cols.key, self.cols.image, self.cols.caption, *self.cols.extra]
        self.read_columns = [c for c in dict.fromkeys(wanted) if c]
        self._units: list[_Unit] | None = None

    @contextlib.contextmanager
    def _open(self, i: int) -> Iterator[pq.ParquetFile]:
        """The parquet file ``i``; its handle is closed on exit."""
        try:
            fh = self.fs.open(self.files[i], "rb")
        except Exception as exc:
            raise ShardError(f"cannot open parquet shard {self.files[i]}: {exc}") from exc
        with fh:
            try:
                pf = open_parquet(fh, local=self._local)
            except Exception as exc:
                raise ShardError(f"cannot read parquet shard {self.files[i]}: {exc}") from exc
            yield pf

    def units(self) -> list[_Unit]:
        if self._units is None:
            units = []
            for f in range(len(self.files)):
                with self._open(f) as pf:
                    md = pf.metadata
                for rg in range(md.num_row_groups):
                    n = md.row_group(rg).num_rows
                    if n:
                        units.append(_Unit(f, rg, 0, n))
            self._units = units
        return self._units

    def split(self, unit: _Unit, k: int) -> list[_Unit]:
        b = np.linspace(unit.lo, unit.hi, k + 1).astype(int)
        return [_Unit(unit.file, unit.row_group, int(b[j]), int(b[j + 1])) for j in range(k) if b[j + 1] > b[j]]

    def read(self, unit: _Unit, start: int) -> Iterator[pa.Table]:
        lo, hi = unit.lo + start, unit.hi
        try:
            with self._open(unit.file) as pf:
                yield from self._read_row_group(pf, unit, lo, hi)
        except (OSError, pa.ArrowException) as exc:
            raise ShardError(
                f"cannot read row group {unit.row_group} of parquet shard {self.files[unit.file]}: {exc}"
            ) from exc

    def _read_row_group(self, pf: pq.ParquetFile, unit: _Unit, lo: int, hi: int) -> Iterator[pa.Table]:
        pos = 0  # row within the row group
        for batch in pf.iter_batches(batch_size=1024, row_groups=[unit.row_group], columns=self.read_columns):
            n = batch.num_rows
            a, b = max(lo - pos, 0), min(hi - pos, n)
            if b > a:
                t = pa.Table.from_batches([batch.slice(a, b - a)])
                yield _normalize(t, self.cols, f"{self.files[unit.file]}#", pos + a)
            pos += n
            if pos >= hi:
                break


def _is_text_ext(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in ("txt", "json", "text", "cls", "caption")


class _TarSource:
    """img2dataset / webdataset tars: ``{key}.jpg`` (or png/webp), ``{key}.txt``, ``{key}.json``...;
    extra columns name extensions (``json`` comes as a string, ``npy`` as bytes)."""

    kind = "webdataset"

    def __init__(self, fs, files: list[str], image_column, caption_column, key_column, columns):
        self.fs, self.files = fs, files
        self.image_ext = None if image_column in (None, "image") else image_column  # an extension, e.g. "webp"
        self.caption_ext = "txt" if caption_column in (None, "caption") else caption_column
        self.extra = tuple(columns)
        self.cols = _Columns("image", "caption", "key", self.extra)
        if key_column not in (None, "key", "__key__"):
            raise LoaderError(
                f"webdataset tars carry their key in the member names; key_column={key_column!r} is not supported"
            )

    def units(self) -> list[_Unit]:
        return [_Unit(f) for f in range(len(self.files))]

    def split(self, unit: _Unit, k: int) -> list[_Unit]:
        return [_Unit(unit.file, part=j, nparts=k) for j in range(k)]

    def _samples(self, path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {ext: bytes}) per sample, grouping consecutive members like webdataset; a tar
        cut short or corrupt raises a :class:`ShardError` naming it."""
        from laion_hf.io.tar import open_samples

        for sample in open_samples(path, fs=self.fs):
            yield sample["__key__"], sample

    def read(self, unit: _Unit, start: int) -> Iterator[pa.Table]:
        path = self.files[unit.file]
        keys: list[str] = []
        images: list[bytes | None] = []
        captions: list[str | None] = []
        extras: dict[str, list] = {c: [] for c in self.extra}
        kept = 0

        def flush():
            cols = [pa.array(keys, pa.string()), pa.array(images, pa.binary()), pa.array(captions, pa.string())]
            cols += [pa.array(extras[c], pa.string() if _is_text_ext(c) else pa.binary()) for c in self.extra]
            return pa.table(cols, names=["key", "image", "caption", *self.extra])

        for i, (key, sample) in enumerate(self._samples(path)):
            if i % unit.nparts != unit.part:
                continue
            kept += 1
            if kept <= start:
                continue
            if self.image_ext:
                img = sample.get(self.image_ext)
            else:
                img = next((sample[e] for e in _IMAGE_EXTS if e in sample), None)
            txt = sample.get(self.caption_ext)
            keys.append(key)
            images.append(img)
            captions.append(txt.decode("utf-8", "replace") if txt is not None else None)
            for c in self.extra:
                v = sample.get(c)
                extras[c].append(v.decode("utf-8", "replace") if v is not None and _is_text_ext(c) else v)
            if len(keys) == 256:
                yield flush()
                keys, images, captions = [], [], []
                extras = {c: [] for c in self.extra}
        if keys:
            yield flush()


class _HFSource:
    kind = "datasets"

    def __init__(self, ds, image_column, caption_column, key_column, columns):
        if hasattr(ds, "reshard"):
            try:
                ds = ds.reshard()  # parquet: one shard per row group
            except Exception:  # formats that cannot be resharded keep their file shards
                pass
        self.ds = ds
        if ds.features is not None:
            names = list(ds.features)
        else:  # untyped stream (e.g. from_generator): look at its first rows
            first = next(iter(ds.with_format("arrow").iter(batch_size=1)), None)
            names = first.column_names if first is not None else []
        where = "the datasets stream"
        self.cols = _Columns(
            pick_column(names, image_column, "image", where=where, error=LoaderError),
            pick_column(names, caption_column, "caption", where=where, required=False, error=LoaderError),
            pick_column(names, key_column, "key", where=where, required=False, error=LoaderError),
            tuple(pick_column(names, c, "requested", where=where, error=LoaderError) for c in columns),
        )
        keep = [c for c in dict.fromkeys([self.cols.key, self.cols.image, self.cols.caption, *self.cols.extra]) if c]
        if set(keep) != set(names):
            self.ds = self.ds.select_columns(keep)

    def units(self) -> list[_Unit]:
        return [_Unit(i) for i in range(self.ds.num_shards)]

    def split(self, unit: _Unit, k: int) -> list[_Unit]:
        return [_Unit(unit.file, part=j, nparts=k) for j in range(k)]

    def read(self, unit: _Unit, start: int) -> Iterator[pa.Table]:
        shard = self.ds.shard(num_shards=self.ds.num_shards, index=unit.file, contiguous=True).with_format("arrow")
        g = 0  # row in the shard
        kept = 0  # rows of this part before the current table
        for table in shard.iter(batch_size=1024):
            n = table.num_rows
            t = _stride(table, g, unit.part, unit.nparts)
            m = t.num_rows
            if kept + m > start:
                a = max(start - kept, 0)
                yield _normalize(t.slice(a), self.cols, f"shard{unit.file}#", kept + a)
            kept += m
            g += n


def _resolve_files(source, config: str | None, split: str) -> tuple[Any, list[str], str]:
    """(filesystem, sorted files, "parquet" | "webdataset") for a folder, glob, file or list."""
    import fsspec

    paths = [source] if isinstance(source, (str, Path)) else list(source)
    if not paths:
        raise LoaderError("no shard files given")
    fs, _ = fsspec.core.url_to_fs(str(paths[0]))
    files: list[str] = []
    for p in paths:
        p = str(p)
        fs_p, root = fsspec.core.url_to_fs(p)
        if any(ch in root for ch in "*?["):
            files += sorted(fs_p.glob(root))
        elif fs_p.isdir(root):
            files += _files_in_folder(fs_p, root, config, split)
        elif fs_p.exists(root):
            files.append(root)
        else:
            raise LoaderError(f"shard source {p} does not exist")
    if not files:
        raise LoaderError(f"no .parquet or .tar shards found in {source}")
    kinds = {"parquet" if f.endswith(".parquet") else "webdataset" if f.endswith(".tar") else f for f in files}
    if len(kinds) != 1 or not kinds <= {"parquet", "webdataset"}:
        raise LoaderError(f"shards must be all .parquet or all .tar; found {sorted(kinds)} in {source}")
    return fs, files, kinds.pop()


def _files_in_folder(fs, root: str, config: str | None, split: str) -> list[str]:
    data = posixpath.join(root, "data")
    if config is not None:
        base = posixpath.join(data, config)
        if not fs.isdir(base):
            raise LoaderError(f"config {config!r} not found: {base} is not a folder")
    elif fs.isdir(data):
        configs = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(data, detail=False) if fs.isdir(p))
        if len(configs) > 1:
            raise LoaderError(f"{root} holds several configs {configs}; pass config=... to pick one")
        base = posixpath.join(data, configs[0]) if configs else root
    else:
        base = root
    found = sorted(f for f in fs.find(base) if f.endswith((".parquet", ".tar")))
    pat = re.compile(rf"(^|/){re.escape(split)}-\d+-of-\d+\.(parquet|tar)$")
    in_split = [f for f in found if pat.search(f)]
    return in_split or found


# --------------------------------------------------------------------------- balancing
def _dist_info() -> tuple[int, int]:
    """(rank, world_size): from ``torch.distributed`` when initialised, else from the
    ``RANK`` / ``WORLD_SIZE`` environment variables (torchrun, SLURM wrappers, as webdataset
    does), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise LoaderError(f"RANK / WORLD_SIZE in the environment must be integers: {exc}") from exc


def _count_tar_samples(fs, path: str) -> int:
    """Samples in a webdataset tar, as ``_TarSource`` groups them (see :func:`laion_hf.io.tar.count_samples`)."""
    from laion_hf.io.tar import count_samples

    return count_samples(path, fs)


def _unit_rows(source, unit: _Unit) -> int:
    """Rows of a base unit: parquet metadata, tar headers, or one small column of a
    ``datasets`` shard."""
    if source.kind == "parquet":
        return unit.hi - unit.lo
    if source.kind == "webdataset":
        return _count_tar_samples(source.fs, source.files[unit.file])
    ds = source.ds.shard(num_shards=source.ds.num_shards, index=unit.file, contiguous=True)
    col = source.cols.key or source.cols.caption or source.cols.image
    tables = ds.select_columns([col]).with_format("arrow").iter(batch_size=4096)
    return sum(t.num_rows for t in tables)


def _balanced_plan(
    units: Sequence[_Unit],
    rows: Sequence[int],
    order: Sequence[int],
    gid: int,
    readers: int,
    pad: bool,
) -> list[_Unit]:
    """Reader ``gid``'s share of an epoch: the units in ``order`` (``rows[k]`` rows in
    ``units[order[k]]``) laid end to end and cut into ``readers`` equal row ranges. ``pad``:
    every share has ceil(total / readers) rows, the last ones wrapping around to the first rows
    (like ``DistributedSampler``); else floor(total / readers), the rest dropped."""
    total = int(sum(rows))
    if total == 0:
        return []
    each = -(-total // readers) if pad else total // readers
    offs = np.concatenate([[0], np.cumsum(rows)])
    plan, pos, end = [], gid * each, (gid + 1) * each
    while pos < end:
        p = pos % total
        k = int(np.searchsorted(offs, p, side="right")) - 1
        a = int(p - offs[k])
        take = min(int(rows[k]) - a, end - pos)
        plan.append(_piece(units[order[k]], a, a + take))
        pos += take
    return plan


def _piece(unit: _Unit, a: int, b: int) -> _Unit:
    """Rows ``a:b`` of ``unit`` (relative to its first row)."""
    if unit.row_group >= 0:  # parquet: an absolute row range of the row group
        return _Unit(unit.file, unit.row_group, unit.lo + a, unit.lo + b)
    return _Unit(unit.file, -1, a, b, unit.part, unit.nparts)


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
            ``batch["valid"]`` False and ``batch["error"]`` naming the error class.
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
        if on_error not in ("skip", "mark"):
            raise LoaderError(f"on_error must be 'skip' or 'mark', got {on_error!r}")
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


# --------------------------------------------------------------------------- one reader
class _Segment:
    """Rows held by a reader: a table, the ingest ids of its rows (sorted), and where each row
    comes from (position in the reader's unit sequence, row in that unit)."""

    __slots__ = ("table", "ids", "pos", "row", "live")

    def __init__(self, table: pa.Table, ids: np.ndarray, pos: np.ndarray, row: np.ndarray):
        self.table, self.ids, self.pos, self.row = table, ids, pos, row
        self.live = len(ids)


class _ReaderStream:
    """The iterator of one reader (rank x worker) for one epoch; its state is exact at every
    yielded batch."""

    def __init__(
        self, ds: LaionTorchDataset, gid: int, readers: int, worker: int, workers: int, epoch: int, resume: dict | None
    ):
        self.ds, self.gid, self.readers, self.epoch = ds, gid, readers, epoch
        self.units = ds.units_for(readers)
        self.S, self.B = ds.buffer_size, ds.batch_size
        self.resampled = ds.samples_per_epoch is not None
        self.balanced = not self.resampled and ds._balanced(readers // workers)
        if self.resampled:
            per_rank = math.ceil(ds.samples_per_epoch / ((readers // workers) * self.B))
            self.quota = per_rank // workers + (1 if worker < per_rank % workers else 0)
            self.seq = None
        else:
            self.quota = None
            if self.balanced:
                self.units = ds._base_units
            order = np.arange(len(self.units))
            if ds.shuffle:
                order = np.random.default_rng([ds.seed, epoch, 0x5A4D]).permutation(len(self.units))
            if self.balanced:
                rows = ds._unit_rows()
                self.seq = _balanced_plan(
                    self.units, [rows[i] for i in order], order, gid, readers, pad=not ds.drop_last
                )
            else:
                self.seq = [self.units[i] for i in order[gid::readers]]
        self.pos = 0  # position in this reader's unit sequence of the next row to ingest
        self.row = 0  # row in that unit
        self.t = 0  # rows ingested so far
        self.slots: list[int] = []  # the shuffle buffer: ingest ids
        self.flushing = False
        self.flush_i = 0
        self.pending: list[int] = []
        self.segments: list[_Segment] = []
        self.batches = 0
        self.stats = {"rows": 0, "skipped": 0, "marked": 0}
        self.done = False
        self._draw_block = -1
        self._draws: list[int] = []
        self._carry_skipped = 0
        if resume is not None:
            self._restore(resume)
        self._gen = self._run()

    # -- unit sequence and random draws ---------------------------------------------
    def _unit_at(self, p: int) -> _Unit | None:
        if self.seq is not None:
            return self.seq[p] if p < len(self.seq) else None
        block = np.random.default_rng([self.ds.seed, self.epoch, self.gid, p // 1024, 0x5E0]).integers(
            0, len(self.units), 1024
        )
        return self.units[int(block[p % 1024])]

    def _draw(self, tid: int) -> int:
        b = tid // _BLOCK
        if b != self._draw_block:
            self._draws = (
                np.random.default_rng([self.ds.seed, self.epoch, self.gid, b, 0xB0F])
                .integers(0, 2**62, _BLOCK)
                .tolist()
            )
            self._draw_block = b
        return self._draws[tid % _BLOCK] % self.S

    # -- held rows -------------------------------------------------------------------
    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """For ``ids``: per segment index, (segment, positions in ``ids``, local rows)."""
        firsts = np.array([s.ids[0] for s in self.segments])
        si = np.searchsorted(firsts, ids, side="right") - 1
        groups = []
        for s in np.unique(si):
            where = np.nonzero(si == s)[0]
            seg = self.segments[s]
            groups.append((int(s), where, np.searchsorted(seg.ids, ids[where])))
        return si, groups

    def _gather(self, ids: list[int], consume: bool = True) -> pa.Table:
        arr = np.asarray(ids, dtype=np.int64)
        _, groups = self._lookup(arr)
        parts, order = [], []
        for s, where, local in groups:
            seg = self.segments[s]
            parts.append(seg.table.take(pa.array(local)))
            order.append(where)
            if consume:
                seg.live -= len(where)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        cat = np.concatenate(order)
        if len(parts) > 1 or not np.array_equal(cat, np.arange(len(cat))):
            table = table.take(pa.array(np.argsort(cat, kind="stable")))
        if consume:
            self.segments = [s for s in self.segments if s.live > 0]
        return table

    def _refs(self, ids: list[int]) -> tuple[list[int], list[int]]:
        if not ids:
            return [], []
        arr = np.asarray(ids, dtype=np.int64)
        pos = np.empty(len(arr), dtype=np.int64)
        row = np.empty(len(arr), dtype=np.int64)
        _, groups = self._lookup(arr)
        for s, where, local in groups:
            pos[where] = self.segments[s].pos[local]
            row[where] = self.segments[s].row[local]
        return pos.tolist(), row.tolist()

    def _buffered(self) -> list[int]:
        return self.slots[self.flush_i :] if self.flushing else self.slots

    def _compact(self) -> None:
        """Copy the rows still buffered into one segment so old tables can be freed."""
        live = sorted(self._buffered() + self.pending)
        if not live:
            self.segments = []
            return
        pos, row = self._refs(live)
        table = self._gather(live, consume=False)
        self.segments = [_Segment(table, np.asarray(live, dtype=np.int64), np.asarray(pos), np.asarray(row))]

    # -- state -------------------------------------------------------------------------
    def _mode(self) -> str:
        return "resampled" if self.resampled else "balanced" if self.balanced else "exact"

    def state(self) -> dict[str, Any]:
        ids = list(self._buffered())
        pos, row = self._refs(ids)
        return {
            "v": _STATE_VERSION,
            "epoch": self.epoch,
            "reader": self.gid,
            "readers": self.readers,
            "units": len(self.units),
            "mode": self._mode(),
            "pos": self.pos,
            "row": self.row,
            "t": self.t,
            "slots": ids,
            "slot_pos": pos,
            "slot_row": row,
            "flushing": self.flushing,
            "batches": self.batches,
            "done": self.done,
            "stats": dict(self.stats),
        }

    def _restore(self, st: dict[str, Any]) -> None:
        mode = self._mode()
        if st.get("reader") != self.gid or st.get("readers") != self.readers or st.get("mode") != mode:
            raise LoaderError(
                f"saved loader state was made by reader {st.get('reader')} of {st.get('readers')} in {st.get('mode')} "
                f"mode; this is reader {self.gid} of {self.readers} in {mode} mode. Resume with the same world_size, "
                f"num_workers, samples_per_epoch and balance."
            )
        if st.get("units") != len(self.units):
            raise LoaderError(
                f"saved loader state was made on a source of {st.get('units')} units (files x row groups); this "
                f"source has {len(self.units)}: the shards changed since the checkpoint, an exact resume is impossible"
            )
        self.pos, self.row, self.t = int(st["pos"]), int(st["row"]), int(st["t"])
        self.batches, self.done, self.flushing = int(st["batches"]), bool(st["done"]), bool(st["flushing"])
        self.stats = dict(st["stats"])
        ids = [int(x) for x in st["slots"]]
        self.slots = ids
        if ids:
            order = np.argsort(ids, kind="stable")
            sid = np.asarray(ids, dtype=np.int64)[order]
            spos = np.asarray(st["slot_pos"], dtype=np.int64)[order]
            srow = np.asarray(st["slot_row"], dtype=np.int64)[order]
            table = self._reread(spos, srow)
            self.segments = [_Segment(table, sid, spos, srow)]

    def _reread(self, pos: np.ndarray, row: np.ndarray) -> pa.Table:
        """Rows (pos[i], row[i]) read back from the source, in that order."""
        pieces, where_all = [], []
        for p in np.unique(pos):
            where = np.nonzero(pos == p)[0]
            wanted = row[where]
            lo, hi = int(wanted.min()), int(wanted.max()) + 1
            unit = self._unit_at(int(p))
            tables, got = [], 0
            for t in self.ds._read(unit, lo):
                tables.append(t)
                got += t.num_rows
                if got >= hi - lo:
                    break
            if got < hi - lo:
                raise LoaderError(f"cannot resume: unit {unit} of the source has fewer rows than the saved state says")
            span = pa.concat_tables(tables)
            pieces.append(span.take(pa.array(wanted - lo)))
            where_all.append(where)
        table = pa.concat_tables(pieces)
        cat = np.concatenate(where_all)
        return table.take(pa.array(np.argsort(cat, kind="stable")))

    # -- the loop ------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._gen)

    def _emit(self) -> dict[str, Any] | None:
        table = self._gather(self.pending)
        self.pending = []
        batch = self.ds._decode(table, self._carry_skipped, keep_empty=self.balanced)
        self.stats["rows"] += table.num_rows
        if batch is None:  # every row of this batch was skipped: carry the count to the next one
            self._carry_skipped += table.num_rows
            self.stats["skipped"] += table.num_rows
            return None
        self._carry_skipped = 0
        if self.ds.on_error == "mark":
            self.stats["marked"] += int((~batch["valid"]).sum())
        else:
            self.stats["skipped"] += table.num_rows - len(batch["key"])
        self.batches += 1
        return batch

    def _run(self) -> Iterator[dict[str, Any]]:
        if self.done:
            return
        yield from self._read_units()
        if self.done:  # the quota of batches was reached
            return
        self._start_flush()
        yield from self._drain()
        yield from self._emit_rest()
        self.done = True

    def _quota_reached(self) -> bool:
        return self.quota is not None and self.batches >= self.quota

    def _read_units(self) -> Iterator[dict[str, Any]]:
        """Read this reader's units from (pos, row) on, until they end or the quota is reached."""
        empty_units = 0  # consecutive units without a row (resampling an empty source must not spin)
        while not self.flushing:
            if self._quota_reached():
                self.done = True
                return
            unit = self._unit_at(self.pos)
            if unit is None:
                break
            empty_units += 1
            if self.resampled and empty_units > 4 * len(self.units) + 64:
                raise LoaderError(f"resampled {empty_units} units in a row without finding a row: the source is empty")
            for table in self.ds._read(unit, self.row):
                if not table.num_rows:
                    continue
                empty_units = 0
                yield from self._take_table(table)
                if self.done:
                    return
            self.pos += 1
            self.row = 0

    def _take_table(self, table: pa.Table) -> Iterator[dict[str, Any]]:
        """Hold the rows of ``table`` (next in the unit) and emit every batch they complete."""
        n = table.num_rows
        # between tables every held row is buffered or pending: a safe point to compact
        if self.S and sum(len(s.ids) for s in self.segments) > 2 * self.S + _COMPACT_SLACK:
            self._compact()
        t0 = self.t
        self.segments.append(
            _Segment(
                table,
                np.arange(t0, t0 + n, dtype=np.int64),
                np.full(n, self.pos, dtype=np.int64),
                np.arange(self.row, self.row + n, dtype=np.int64),
            )
        )
        for tid in range(t0, t0 + n):
            self.t += 1
            self.row += 1
            out = self._admit(tid)
            if out is None:
                continue
            self.pending.append(out)
            if len(self.pending) == self.B:
                batch = self._emit()
                if batch is not None:
                    yield batch
                    if self._quota_reached():
                        self.done = True
                        return

    def _admit(self, tid: int) -> int | None:
        """Row ``tid`` enters the shuffle buffer; return the row it pushes out (``tid`` itself
        without a buffer), or None while the buffer fills."""
        if not self.S:
            return tid
        if len(self.slots) < self.S:
            self.slots.append(tid)
            return None
        j = self._draw(tid)
        out = self.slots[j]
        self.slots[j] = tid
        return out

    def _start_flush(self) -> None:
        """End of this reader's units (exact pass): empty the buffer in a seeded random order."""
        if self.flushing:
            return
        rest = list(self.slots)
        if self.ds.shuffle and rest:
            perm = np.random.default_rng([self.ds.seed, self.epoch, self.gid, 0xF1]).permutation(len(rest))
            rest = [rest[k] for k in perm]
        self.slots, self.flush_i, self.flushing = rest, 0, True

    def _drain(self) -> Iterator[dict[str, Any]]:
        """Emit the buffered rows in batches of B (a short last one unless ``drop_last``)."""
        B = self.B
        while self.flush_i < len(self.slots):
            take = min(B - len(self.pending), len(self.slots) - self.flush_i)
            self.pending += self.slots[self.flush_i : self.flush_i + take]
            self.flush_i += take
            if len(self.pending) == B or self.flush_i == len(self.slots):
                if len(self.pending) < B and self.ds.drop_last:
                    self.pending = []
                    break
                if self.flush_i == len(self.slots):
                    self.done = True
                batch = self._emit()
                if batch is not None:
                    yield batch

    def _emit_rest(self) -> Iterator[dict[str, Any]]:
        if self.pending and not self.ds.drop_last:
            self.done = True
            batch = self._emit()
            if batch is not None:
                yield batch


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

"""What a loader reads: parquet row groups, tars or ``datasets`` shards as *units*, and how
units are cut and balanced across ranks and workers."""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from laion_hf.errors import LoaderError, ShardError
from laion_hf.schema import pick_column
from laion_hf.sources import open_parquet

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


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

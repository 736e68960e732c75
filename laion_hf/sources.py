"""Resolve a metadata source (file, folder, glob, or fsspec URL) into a sorted file list."""

from __future__ import annotations

import glob
import os
from typing import Any, Iterator, Sequence

from laion_hf.errors import SourceError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
STREAM_BUFFER_SIZE = 1 << 20
_GLOB_CHARS = set("*?[")


PREBUFFER_MAX = 64 << 20  # remote files: row groups up to this (uncompressed) are fetched in one go


def open_parquet(source: Any, *, local: bool | None = None):
    """Open a parquet file for ``iter_batches`` with memory that follows the batch size, not
    the row group size (pyarrow's default pre-buffering reads all of a row group's column
    chunks at once, hundreds of MB in Spark-written LAION files).

    ``source`` is a local path, or an open file object (``local`` says whether it is on this
    machine; default: no). Local data is read through 1 MiB buffers per column as pages are
    decoded; remote data in one coalesced range read per row group when row groups are at
    most 64 MB uncompressed, else through 4 MiB buffered range reads.
    """
    import pyarrow.parquet as pq

    if isinstance(source, (str, os.PathLike)) or local:
        return pq.ParquetFile(source, pre_buffer=False, buffer_size=STREAM_BUFFER_SIZE)
    pf = pq.ParquetFile(source, pre_buffer=False, buffer_size=4 * STREAM_BUFFER_SIZE)
    meta = pf.metadata
    if max((meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)), default=0) <= PREBUFFER_MAX:
        return pq.ParquetFile(source, metadata=meta, pre_buffer=True)
    return pf


def memory_tables(data: Any, batch_size: int) -> Iterator[Any] | None:
    """Arrow tables of at most ``batch_size`` rows from an in-memory source (a ``pa.Table``,
    a ``pa.RecordBatch``, a ``datasets`` Dataset/IterableDataset), or None for anything else
    (files, folders, ...). Does not import ``datasets``."""
    import sys

    import pyarrow as pa

    if isinstance(data, pa.Table):
        return (pa.Table.from_batches([b]) for b in data.to_batches(max_chunksize=batch_size))
    if isinstance(data, pa.RecordBatch):
        return iter([pa.Table.from_batches([data])])
    datasets = sys.modules.get("datasets")  # a datasets object implies datasets is imported
    if datasets is not None and isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        return iter(data.with_format("arrow").iter(batch_size=batch_size))
    return None


def is_url(source: str) -> bool:
    """Whether ``source`` is a URL (``scheme://...``) rather than a path on this machine."""
    return "://" in source and not os.path.exists(source)


def _walk_visible(source: str):
    """``os.walk`` that skips hidden folders (a killed run's ``.laion-hf-staging-*`` among them)."""
    for root, dirs, names in os.walk(source):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield root, dirs, names


def _resolve_local(source: str) -> list[str]:
    if os.path.isdir(source):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in _walk_visible(source)
            for name in names
            if name.endswith(PARQUET_SUFFIXES) and not name.startswith((".", "_"))
        )
        if not files:
            raise SourceError(f"folder {source} holds no parquet files (*.parquet, *.pq, *.parq)")
        return files
    if _GLOB_CHARS & set(source):
        files = sorted(f for f in glob.glob(source, recursive=True) if os.path.isfile(f))
        if not files:
            raise SourceError(f"glob {source} matches no file")
        return files
    if os.path.isfile(source):
        return [source]
    raise SourceError(f"metadata source not found: {source} (give a parquet file, a folder, a glob or a URL)")


def _resolve_url(source: str, storage_options: dict | None) -> list[str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise SourceError(f"cannot open {source}: {e} (install the fsspec backend for this protocol)") from None
    protocol = source.split("://", 1)[0]

    def full(p: str) -> str:
        return p if "://" in p else f"{protocol}://{p}"

    if protocol in ("http", "https"):
        return [source]
    try:
        if _GLOB_CHARS & set(path):
            files = sorted(full(p) for p in fs.glob(path) if p.endswith(PARQUET_SUFFIXES))
            if not files:
                raise SourceError(f"glob {source} matches no parquet file")
            return files
        if fs.isdir(path):
            files = sorted(full(p) for p in fs.find(path) if p.endswith(PARQUET_SUFFIXES))
            if not files:
                raise SourceError(f"{source} holds no parquet files")
            return files
        if fs.exists(path):
            return [source]
    except SourceError:
        raise
    except Exception as e:  # fsspec backends raise their own types
        raise SourceError(f"cannot list {source}: {type(e).__name__}: {e}") from None
    raise SourceError(f"metadata source not found: {source}")


def resolve_source(
    source: str | os.PathLike | Sequence[str | os.PathLike], storage_options: dict | None = None
) -> list[str]:
    """Expand ``source`` into a sorted list of parquet files (local paths or URLs).

    Accepts a file, a folder (searched recursively), a glob, an fsspec URL (``hf://``,
    ``https://``, ``s3://``, ...) or a list of any of those.
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise SourceError("empty list of metadata sources")
        out: list[str] = []
        for s in source:
            out.extend(resolve_source(s, storage_options))
        return out
    source = os.fspath(source)
    return _resolve_url(source, storage_options) if is_url(source) else _resolve_local(source)

"""A ``datasets`` builder that streams LAION metadata in the canonical schema.

:class:`LaionBuilder` is modelled on ``datasets``' own Parquet builder: it shards by file
× row group (so DataLoader workers and ``split_dataset_by_node`` get real parallelism),
prunes row groups by their statistics when a filter can be pushed down to the source
columns, reads only the columns it needs, normalizes every batch with
:func:`laion_hf.schema.normalize_table`, then filters, applies blocklists and samples
vectorized on the Arrow batch. :func:`load_laion` is the one-call entry point.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.builder import Key

from laion_hf.blocklist import Blocklist
from laion_hf.errors import LaionHFError, SchemaError, SourceError
from laion_hf.filters import FilterSpec, apply_filter, combine_filters
from laion_hf.sampling import sample_mask
from laion_hf.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_SCHEMA,
    detect_release,
    normalize_table,
    output_schema,
    release_info,
    resolve_columns,
)
from laion_hf.sources import resolve_source

logger = logging.getLogger(__name__)


@dataclass
class ScanStats:
    """Counts of one scan. ``rows_in == rows_kept + removed_by_filter + removed_by_blocklist
    + removed_by_sample`` over the files that were read; skipped files are listed apart."""

    files: int = 0
    files_read: int = 0
    files_skipped: list[dict[str, str]] = field(default_factory=list)
    rows_in: int = 0
    rows_kept: int = 0
    removed_by_filter: int = 0
    removed_by_blocklist: int = 0
    removed_by_sample: int = 0
    row_groups_pruned: int = 0

    def add(self, other: "ScanStats") -> None:
        for name in ("files", "files_read", "rows_in", "rows_kept", "removed_by_filter",
                     "removed_by_blocklist", "removed_by_sample", "row_groups_pruned"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.files_skipped.extend(other.files_skipped)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files, "files_read": self.files_read, "files_skipped": list(self.files_skipped),
            "rows_in": self.rows_in, "rows_kept": self.rows_kept, "removed_by_filter": self.removed_by_filter,
            "removed_by_blocklist": self.removed_by_blocklist, "removed_by_sample": self.removed_by_sample,
            "row_groups_pruned": self.row_groups_pruned,
        }


@dataclass
class LaionConfig(datasets.BuilderConfig):
    """Configuration of :class:`LaionBuilder`.

    Args:
        release: release name (see :data:`laion_hf.schema.RELEASES`); detected from the
            columns of the first file when None.
        where: filter expression string(s) and/or pyarrow expressions, ANDed.
        preset: preset name(s) from :data:`laion_hf.filters.PRESETS`.
        filters: keyword filters (``min_similarity=0.28``, ``language=["en"]``, ...).
        columns: output columns (canonical or passthrough names); all when None.
        blocklist: a :class:`Blocklist` applied before anything else sees the rows.
        sample: keep this fraction of rows, chosen by a hash of ``key`` (same rows every run).
        sample_seed: change which rows ``sample`` picks.
        batch_size: rows per Arrow batch read from parquet.
        shard_by_row_group: one shard per (file, row group) instead of per file.
        on_error: "raise" (default) or "skip"/"warn": skip a bad file and count it.
        readahead: batches read, normalized and filtered ahead of the consumer in a
            background thread (0 = read in the consumer's thread).
    """

    release: str | None = None
    where: Any = None
    preset: Any = None
    filters: dict[str, Any] = field(default_factory=dict)
    columns: Sequence[str] | None = None
    blocklist: Blocklist | None = None
    sample: float | None = None
    sample_seed: int = 0
    batch_size: int = 65_536
    shard_by_row_group: bool = True
    on_error: Literal["raise", "skip", "warn"] = "raise"
    storage_options: dict | None = None
    readahead: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.on_error not in ("raise", "skip", "warn"):
            raise SourceError(f"on_error must be 'raise', 'skip' or 'warn', got {self.on_error!r}")
        if self.release is not None:
            release_info(self.release)


class _LocalPath:
    """Context manager yielding a local path as is: pyarrow reads it natively (no Python
    file object in between, which costs copies and memory)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        return None


_DONE = object()


def _readahead(gen: Iterator, depth: int) -> Iterator:
    """Run ``gen`` in a daemon thread, ``depth`` items ahead; exceptions re-raise here.

    Closing the consumer (break, garbage collection) stops the producer at its next item.
    """
    if depth <= 0:
        yield from gen
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            else:
                q.put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((_DONE, e))
        finally:
            if stop.is_set():
                gen.close()

    thread = threading.Thread(target=produce, name="laion-hf-readahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def _local_fs():
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def _open(file: str):
    """Open a data file: local paths natively, URLs through ``open`` (which ``datasets``
    extends to stream hf://, https://, s3:// ... in streaming mode)."""
    if "://" not in str(file) and os.path.exists(file):
        return _LocalPath(str(file))
    return open(file, "rb")


def _compatible(source_type: pa.DataType, target: pa.DataType) -> bool:
    """Whether comparing the source column gives the same answer as the canonical one."""
    if pa.types.is_integer(target):
        return pa.types.is_integer(source_type)
    if pa.types.is_floating(target):
        return pa.types.is_floating(source_type) or pa.types.is_integer(source_type)
    if pa.types.is_string(target):
        return pa.types.is_string(source_type) or pa.types.is_large_string(source_type)
    return False


class LaionBuilder(datasets.ArrowBasedBuilder):
    """Streams LAION metadata parquet in the canonical schema, filtered and sampled."""

    BUILDER_CONFIG_CLASS = LaionConfig
    config: LaionConfig

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="LAION metadata in laion-hf's canonical schema",
            features=None,
            homepage="https://laion.ai",
        )

    # -- planning ----------------------------------------------------------------------
    def _plan(self, first_schema: pa.Schema, first_file: str) -> None:
        cfg = self.config
        self.mapping = resolve_columns(first_schema.names, where=first_file)
        self.release = cfg.release or detect_release(first_schema.names)
        full = output_schema(first_schema, self.mapping)
        self.filter_spec: FilterSpec = combine_filters(cfg.where, cfg.preset, full.names, **(cfg.filters or {}))
        if cfg.columns is not None:
            missing = [c for c in cfg.columns if c not in full.names]
            if missing:
                raise SchemaError(
                    f"unknown column(s) {', '.join(map(repr, missing))}; known columns: {', '.join(full.names)}"
                )
            out_fields = [full.field(c) for c in cfg.columns]
        else:
            out_fields = list(full)
        self.out_schema = pa.schema(out_fields)
        needed = set(self.out_schema.names) | set(self.filter_spec.columns) | {"key"}
        if cfg.blocklist is not None:
            needed.add(cfg.blocklist.column)
        # source columns to read (None means all)
        read = []
        for name in full.names:
            if name not in needed:
                continue
            src = self.mapping.get(name, name) if name in CANONICAL_COLUMNS else name
            if src is not None:
                read.append(src)
        self.read_columns = read
        self.inner_names = [n for n in full.names if n in needed]
        self.passthrough_schema = pa.schema([f for f in full if f.name not in CANONICAL_COLUMNS and f.name in needed])
        self.info.features = datasets.Features.from_arrow_schema(self.out_schema)

    def _pushdown(self, schema: pa.Schema):
        """The filter over this file's own column names, when comparisons agree exactly."""
        rename = {}
        for canonical, src in self.mapping.items():
            if src is None or src not in schema.names:
                continue
            if _compatible(schema.field(src).type, CANONICAL_SCHEMA.field(canonical).type):
                rename[canonical] = src
        return self.filter_spec.pushdown(rename)

    def _split_generators(self, dl_manager):
        files = self.config.data_files["train"] if isinstance(self.config.data_files, dict) else self.config.data_files
        files = list(files)
        self.stats = ScanStats(files=len(files))
        first_error = None
        for file in files:
            try:
                with _open(file) as f:
                    schema = pq.read_schema(f)
                self._plan(schema, str(file))
                break
            except LaionHFError:
                raise
            except Exception as e:  # noqa: BLE001 - every reader error becomes a SourceError
                first_error = SourceError(f"{file}: not a readable parquet file ({type(e).__name__}: {e})")
                if self.config.on_error == "raise":
                    raise first_error from None
                self._skipped(file, first_error)
        else:
            raise first_error or SourceError("no metadata files")
        shards_files: list[str] = []
        shards_rgs: list[tuple[int, ...] | None] = []
        for file_idx, file in enumerate(files):
            if self.config.shard_by_row_group:
                try:
                    with _open(file) as f:
                        n_rg = pq.ParquetFile(f).metadata.num_row_groups
                except Exception:  # noqa: BLE001 - reported when the shard is read
                    n_rg = None
                if n_rg:
                    for rg in range(n_rg):
                        shards_files.append(f"{file_idx}\t{file}")
                        shards_rgs.append((rg,))
                    continue
            shards_files.append(f"{file_idx}\t{file}")
            shards_rgs.append(None)
        return [datasets.SplitGenerator(name="train", gen_kwargs={"files": shards_files, "row_groups_list": shards_rgs})]

    def _generate_shards(self, files, row_groups_list):
        for file, rgs in zip(files, row_groups_list):
            yield {"file": file.split("\t", 1)[1], "row_groups": rgs}

    def _skipped(self, file: str, error: Exception) -> None:
        stats = getattr(self, "stats", None)
        if stats is not None and not any(s["file"] == str(file) for s in stats.files_skipped):
            stats.files_skipped.append({"file": str(file), "error": str(error)})
        if self.config.on_error == "warn":
            logger.warning("skipping %s", error)

    # -- reading -----------------------------------------------------------------------
    def _generate_tables(self, files, row_groups_list) -> Iterator[tuple[Key, pa.Table]]:
        # Reading, normalizing and filtering run in a background thread (pyarrow releases
        # the GIL), one batch ahead of the consumer.
        yield from _readahead(self._generate_tables_sync(files, row_groups_list), depth=self.config.readahead)

    def _generate_tables_sync(self, files, row_groups_list) -> Iterator[tuple[Key, pa.Table]]:
        for shard_idx, (tagged, rgs) in enumerate(zip(files, row_groups_list)):
            file_idx_s, file = tagged.split("\t", 1)
            file_idx = int(file_idx_s)
            batch_idx = 0
            try:
                with _open(file) as f:
                    for table in self._scan_file(f, file, file_idx, rgs, self.stats):
                        yield Key(shard_idx, batch_idx), table
                        batch_idx += 1
            except LaionHFError as e:
                if self.config.on_error == "raise":
                    raise
                self._skipped(file, e)
            except Exception as e:  # noqa: BLE001 - name the file that broke
                err = SourceError(f"{file}: cannot read ({type(e).__name__}: {e})")
                if self.config.on_error == "raise":
                    raise err from e
                self._skipped(file, err)

    def _scan_file(self, f, file: str, file_idx: int, rgs: tuple[int, ...] | None,
                   stats: ScanStats) -> Iterator[pa.Table]:
        cfg = self.config
        pf = pq.ParquetFile(f)
        meta = pf.metadata
        mapping = resolve_columns(pf.schema_arrow.names, where=file)
        row_groups = list(rgs) if rgs is not None else list(range(meta.num_row_groups))
        if rgs is None or rgs[0] == 0:
            stats.files_read += 1
        starts = [0]
        for i in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(i).num_rows)
        keep_groups = set(row_groups)
        pushdown = self._pushdown(pf.schema_arrow)
        if pushdown is not None and row_groups:
            import pyarrow.dataset as pads

            fragment = pads.ParquetFileFormat().make_fragment(f, filesystem=_local_fs() if isinstance(f, str) else None)
            try:
                kept = {rg.id for rg in fragment.subset(row_group_ids=row_groups).subset(filter=pushdown).row_groups}
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                kept = keep_groups
            for rg in row_groups:
                if rg not in kept:
                    n = meta.row_group(rg).num_rows
                    stats.rows_in += n
                    stats.removed_by_filter += n
                    stats.row_groups_pruned += 1
            keep_groups = kept
        available = set(pf.schema_arrow.names)
        read = [c for c in self.read_columns if c in available]
        key_prefix = None if mapping.get("key") else f"{file_idx:05d}"
        for rg in row_groups:
            if rg not in keep_groups:
                continue
            offset = starts[rg]
            for batch in pf.iter_batches(batch_size=cfg.batch_size, row_groups=[rg], columns=read, use_threads=True):
                table = pa.Table.from_batches([batch])
                n = table.num_rows
                table = normalize_table(table, mapping=mapping, where=file, key_prefix=key_prefix, row_offset=offset)
                offset += n
                yield self._select(table, stats, file)

    def _select(self, table: pa.Table, stats: ScanStats, file: str) -> pa.Table:
        cfg = self.config
        n = table.num_rows
        stats.rows_in += n
        table = apply_filter(table, self.filter_spec.expression)
        stats.removed_by_filter += n - table.num_rows
        if cfg.blocklist is not None and table.num_rows:
            table, removed = cfg.blocklist.filter_table(table)
            stats.removed_by_blocklist += removed
        if cfg.sample is not None and table.num_rows:
            before = table.num_rows
            table = table.filter(sample_mask(table.column("key"), cfg.sample, cfg.sample_seed))
            stats.removed_by_sample += before - table.num_rows
        stats.rows_kept += table.num_rows
        return self._conform(table, file)

    def _conform(self, table: pa.Table, file: str) -> pa.Table:
        """Select and order the output columns; passthrough columns missing here are null."""
        arrays = []
        for fld in self.out_schema:
            if fld.name in table.column_names:
                col = table.column(fld.name)
                if col.type != fld.type:
                    try:
                        col = col.cast(fld.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                        raise SchemaError(f"{file}: column {fld.name!r} is {col.type}, expected {fld.type}: {e}") from None
                arrays.append(col)
            else:
                arrays.append(pa.nulls(table.num_rows, fld.type))
        return pa.Table.from_arrays(arrays, schema=self.out_schema)

    # -- direct use (no datasets machinery) ---------------------------------------------
    def iter_tables(self) -> Iterator[pa.Table]:
        """Yield filtered Arrow tables shard by shard, updating :attr:`stats`."""
        split = self._split_generators(None)[0]
        for _, table in self._generate_tables(**split.gen_kwargs):
            yield table


def load_laion(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    streaming: bool = True,
    release: str | None = None,
    where: Any = None,
    preset: str | Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    blocklist: Blocklist | str | Sequence[str] | None = None,
    blocklist_column: str = "url",
    sample: float | None = None,
    sample_seed: int = 0,
    batch_size: int = 65_536,
    on_error: Literal["raise", "skip", "warn"] = "raise",
    storage_options: dict | None = None,
    cache_dir: str | None = None,
    **filters: Any,
) -> datasets.IterableDataset | datasets.Dataset:
    """Load LAION metadata from ``source`` as a ``datasets`` dataset in the canonical schema.

    ``source`` is a parquet file, a folder, a glob, an fsspec URL (``hf://datasets/...``,
    ``https://...``, ``s3://...``) or a list of them. Filters are ANDed: ``preset`` names,
    ``where`` expression strings or pyarrow expressions, and keyword filters such as
    ``min_similarity=0.28`` or ``language=["en", "de"]``. ``blocklist`` is a
    :class:`Blocklist` or digest file path(s). Returns an ``IterableDataset`` when
    ``streaming`` (the default), else a ``Dataset``.
    """
    builder = make_builder(
        source, release=release, where=where, preset=preset, columns=columns, blocklist=blocklist,
        blocklist_column=blocklist_column, sample=sample, sample_seed=sample_seed, batch_size=batch_size,
        on_error=on_error, storage_options=storage_options, cache_dir=cache_dir, **filters,
    )
    if streaming:
        return builder.as_streaming_dataset(split="train")
    builder.download_and_prepare()
    return builder.as_dataset(split="train")


def make_builder(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    blocklist: Blocklist | str | Sequence[str] | None = None,
    blocklist_column: str = "url",
    cache_dir: str | None = None,
    storage_options: dict | None = None,
    **config: Any,
) -> LaionBuilder:
    """Build a :class:`LaionBuilder` for ``source`` (see :func:`load_laion` for the options)."""
    files = resolve_source(source, storage_options)
    if blocklist is not None and not isinstance(blocklist, Blocklist):
        blocklist = Blocklist.from_files(blocklist, column=blocklist_column)
    known = {f.name for f in LaionConfig.__dataclass_fields__.values()} if hasattr(LaionConfig, "__dataclass_fields__") else set()
    filters = {k: config.pop(k) for k in list(config) if k not in known}
    try:
        return LaionBuilder(
            cache_dir=cache_dir,
            data_files={"train": files},
            blocklist=blocklist,
            filters=filters,
            storage_options=storage_options,
            hash=_config_hash(files, config, filters),
            **config,
        )
    except FileNotFoundError as e:
        raise SourceError(f"metadata source not found: {e}") from None


def _config_hash(files: list[str], config: dict, filters: dict) -> str:
    import hashlib

    text = repr((files, sorted((k, repr(v)) for k, v in config.items()), sorted((k, repr(v)) for k, v in filters.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

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
from typing import Any, Iterable, Iterator, Literal, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.builder import Key
from datasets.iterable_dataset import ArrowExamplesIterable

from laion_hf._util.on_error import check_on_error
from laion_hf.blocklist import Blocklist
from laion_hf.errors import LaionHFError, SchemaError, SourceError
from laion_hf.filters import FilterSpec, combine_filters
from laion_hf.sampling import sample_mask
from laion_hf.schema import (
    CANONICAL_COLUMNS,
    CANONICAL_SCHEMA,
    detect_release,
    keys_for_rows,
    normalize_table,
    output_schema,
    release_info,
    resolve_columns,
)
from laion_hf.sources import open_parquet, resolve_source

logger = logging.getLogger(__name__)


@dataclass
class ScanStats:
    """Counts of one scan. ``rows_in == rows_kept + removed_by_filter + removed_by_blocklist
    + removed_by_sample`` over the rows that were read; the rows of skipped files that were not
    read (``on_error="skip"``) are ``rows_lost``, so the input files hold ``rows_in + rows_lost``
    rows. ``files_skipped`` lists each file that failed, read in part or not at all: ``file``,
    ``error``, ``rows`` (the file's rows), ``rows_read`` (counted in ``rows_in``; its kept rows
    were output) and ``rows_lost`` (the three are None when the file's footer is unreadable)."""

    files: int = 0
    files_read: int = 0
    files_skipped: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    rows_kept: int = 0
    removed_by_filter: int = 0
    removed_by_blocklist: int = 0
    removed_by_sample: int = 0
    row_groups_pruned: int = 0
    rows_lost: int = 0
    #: the current shard's rows and its file's rows, once its footer is read (not reported)
    shard_rows: int | None = field(default=None, repr=False, compare=False)
    file_rows: int | None = field(default=None, repr=False, compare=False)

    _COUNTS = ("files", "files_read", "rows_in", "rows_kept", "removed_by_filter", "removed_by_blocklist",
               "removed_by_sample", "row_groups_pruned", "rows_lost")  # fmt: skip

    def add(self, other: "ScanStats") -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for entry in other.files_skipped:
            self.skip(entry)

    def skip(self, entry: dict[str, Any]) -> None:
        """List a failed file, or merge a failure of another of its shards into its entry."""
        old = next((s for s in self.files_skipped if s["file"] == entry["file"]), None)
        if old is None:
            self.files_skipped.append(dict(entry))
            return
        if old["rows"] is None or entry["rows"] is None:
            old["rows"] = old["rows"] if entry["rows"] is None else entry["rows"]
            old["rows_lost"] = old["rows_lost"] if entry["rows_lost"] is None else entry["rows_lost"]
        else:
            old["rows_lost"] += entry["rows_lost"]
        old["rows_read"] = None if old["rows"] is None else old["rows"] - old["rows_lost"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "files_read": self.files_read,
            "files_skipped": list(self.files_skipped),
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "removed_by_filter": self.removed_by_filter,
            "removed_by_blocklist": self.removed_by_blocklist,
            "removed_by_sample": self.removed_by_sample,
            "row_groups_pruned": self.row_groups_pruned,
            "rows_lost": self.rows_lost,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanStats:
        """The stats :meth:`as_dict` wrote (``rows_lost`` 0 when absent: an older file)."""
        stats = cls(**{name: d.get(name, 0) for name in cls._COUNTS})
        for entry in d.get("files_skipped", ()):
            stats.skip({"rows": None, "rows_read": None, "rows_lost": None, **entry})
        return stats


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
        on_error: "raise" (default) stops at a bad file with an error naming it; "skip" skips it,
            counts its rows as ``rows_lost`` and logs a warning ("warn" is the deprecated spelling
            of "skip"; see :mod:`laion_hf._util.on_error`).
        threads: shards (row groups) read, normalized and filtered at once in a thread
            pool, ahead of the consumer and yielded in order (pyarrow releases the GIL);
            default one per core (at most 8); 0 or 1 reads in the consumer's thread.
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
    on_error: Literal["raise", "skip"] = "raise"
    storage_options: dict | None = None
    threads: int | None = None

    def __post_init__(self):
        super().__post_init__()
        self.on_error = check_on_error(self.on_error, ("raise", "skip"), "the metadata builder", SourceError)
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


_ROW = "__laion_hf_row__"


@dataclass
class _ShardPlan:
    """What reading one shard needs: its open file, column mapping and kept row groups."""

    file: str
    parquet: Any  # pq.ParquetFile, streamed batch by batch (never a whole row group decoded)
    mapping: dict[str, str | None]
    kept: list[int]
    starts: list[int]
    read: list[str]
    key_prefix: str | None
    late_keys: bool


def _is_local(file: str) -> bool:
    return "://" not in str(file) and os.path.exists(file)


def _ordered_streams(units: Iterable, stream, threads: int, depth: int = 2) -> Iterator[tuple[Any, Any]]:
    """Run the generator ``stream(unit)`` of up to ``threads`` units at once, each on its own
    thread and at most ``depth`` items ahead of the consumer; yield ``(unit, item)`` in unit
    order. Memory is bounded by ``threads * depth`` items, whatever a unit's size. An
    exception raised by a stream re-raises here, in order; closing the consumer stops all."""
    import queue
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    end = object()
    stop = threading.Event()

    def run(unit, q: queue.Queue) -> None:
        def put(entry) -> bool:
            while not stop.is_set():
                try:
                    q.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        items = stream(unit)
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((end, e))
        finally:
            items.close()

    units = iter(units)
    active: deque = deque()
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="laion-hf-read") as pool:

        def fill() -> None:
            while len(active) < max(1, threads):
                unit = next(units, end)
                if unit is end:
                    return
                q: queue.Queue = queue.Queue(maxsize=max(1, depth))
                active.append((unit, q, pool.submit(run, unit, q)))

        try:
            fill()
            while active:
                unit, q, _ = active[0]
                item, error = q.get()
                if item is end:
                    active.popleft()
                    if error is not None:
                        raise error
                    fill()
                    continue
                yield unit, item
        finally:
            stop.set()


def _local_fs():
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def _open(file: str):
    """Open a data file: local paths natively, URLs through ``open`` (which ``datasets``
    extends to stream hf://, https://, s3:// ... in streaming mode)."""
    if _is_local(file):
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


class _AllShardsArrowIterable(ArrowExamplesIterable):
    """``datasets``' Arrow iterable, but reading all remaining shards in one call of the
    builder's generator, so that the builder can scan row groups in parallel across shards
    (``datasets`` calls it once per shard, which serializes the reads). The state dict keeps
    ``datasets``' own meaning (shard index + rows seen in that shard), so resuming works as
    before; sharding/shuffling for workers and nodes keeps this class."""

    def _init_state_dict(self) -> dict:
        self._state_dict = {"shard_idx": 0, "shard_example_idx": 0, "type": ArrowExamplesIterable.__name__}
        return self._state_dict

    def _wrap(self, other: ArrowExamplesIterable) -> "_AllShardsArrowIterable":
        return _AllShardsArrowIterable(
            other.generate_tables_fn, other.kwargs, other.generate_more_kwargs_fn, other.sleep_on_threads_shutdown
        )

    def shuffle_data_sources(self, generator):
        return self._wrap(super().shuffle_data_sources(generator))

    def shard_data_sources(self, num_shards: int, index: int, contiguous=True):
        return self._wrap(super().shard_data_sources(num_shards, index, contiguous=contiguous))

    def reshard_data_sources(self):
        return self._wrap(super().reshard_data_sources())

    def _iter_arrow(self):
        start = self._state_dict["shard_idx"] if self._state_dict else 0
        skip = self._state_dict["shard_example_idx"] if self._state_dict else 0
        files, rgs = self.kwargs["files"][start:], self.kwargs["row_groups_list"][start:]
        current, seen = 0, 0  # shard position (relative to start) and rows seen in it
        for key, table in self.generate_tables_fn(files=files, row_groups_list=rgs):
            while current < key.original_shard_id:  # earlier shards are finished
                current, seen, skip = current + 1, 0, 0
                if self._state_dict:
                    self._state_dict["shard_idx"] += 1
                    self._state_dict["shard_example_idx"] = 0
            seen += len(table)
            if seen <= skip:
                continue
            if self._state_dict:
                self._state_dict["shard_example_idx"] += len(table)
            yield Key(start + key.original_shard_id, key.item_or_batch_id), table
        while self._state_dict and current < len(files):
            current += 1
            self._state_dict["shard_idx"] += 1
            self._state_dict["shard_example_idx"] = 0


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

    def _get_examples_iterable_for_split(self, split_generator):
        return _AllShardsArrowIterable(
            self._generate_tables,
            split_generator.gen_kwargs,
            getattr(self, "_generate_more_gen_kwargs", None),
            self.SLEEP_ON_THREADS_SHUTDOWNS,
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
        return [
            datasets.SplitGenerator(name="train", gen_kwargs={"files": shards_files, "row_groups_list": shards_rgs})
        ]

    def _generate_shards(self, files, row_groups_list):
        for file, rgs in zip(files, row_groups_list):
            yield {"file": file.split("\t", 1)[1], "row_groups": rgs}

    def _skipped(self, file: str, error: Exception, stats: ScanStats | None = None) -> None:
        """List ``file`` as skipped in ``stats`` (a failed shard's own stats, or the scan's when
        the file fails at planning): its rows not read are lost, counted in ``rows_lost``."""
        stats = stats if stats is not None else getattr(self, "stats", None)
        if stats is not None:
            lost = None if stats.shard_rows is None else stats.shard_rows - stats.rows_in
            rows = stats.file_rows
            stats.rows_lost += lost or 0
            stats.skip({"file": str(file), "error": str(error), "rows": rows,
                        "rows_read": None if rows is None else rows - lost, "rows_lost": lost})  # fmt: skip
        logger.warning("skipping %s", error)

    # -- reading -----------------------------------------------------------------------
    def _threads(self) -> int:
        return self.config.threads if self.config.threads is not None else min(os.cpu_count() or 1, 8)

    def _generate_tables(self, files, row_groups_list, threads: int | None = None) -> Iterator[tuple[Key, pa.Table]]:
        """Shards in order. With ``threads`` > 1, that many shards are read at once (decoded,
        normalized and filtered on their own threads, a couple of batches ahead): parallel
        reads for local files, hidden latency for remote ones, and memory that follows the
        batch size, never a row group's or a shard's size."""
        shards = list(enumerate(zip(files, row_groups_list)))
        threads = self._threads() if threads is None else threads
        if threads <= 1:
            outputs = ((shard, item) for shard in shards for item in self._shard_items(shard))
        else:
            # several shards decode at once, one thread each; a lone shard decodes its
            # columns in parallel instead
            decode_threads = len(shards) < threads
            outputs = _ordered_streams(shards, lambda shard: self._shard_items(shard, decode_threads), threads)
        batch_idx: dict[int, int] = {}
        try:
            for (shard_idx, _), (kind, payload) in outputs:
                if kind == "table":
                    i = batch_idx.get(shard_idx, 0)
                    batch_idx[shard_idx] = i + 1
                    yield Key(shard_idx, i), payload
                elif kind == "error":
                    file, error, stats = payload
                    self._shard_failed(file, error, stats)
                    self.stats.add(stats)
                else:
                    self.stats.add(payload)
        finally:  # stop the reader threads now, also when raising (a traceback keeps frames alive)
            outputs.close()

    def _shard_items(
        self, shard: tuple[int, tuple[str, Any]], decode_threads: bool = True
    ) -> Iterator[tuple[str, Any]]:
        """One shard (a file, or one row group of it), streamed: ``("table", table)`` items,
        then ``("end", stats)``, or ``("error", (file, exception, stats))`` when the file
        breaks (rows yielded before stay yielded, and are counted)."""
        _, (tagged, rgs) = shard
        file_idx_s, file = tagged.split("\t", 1)
        stats = ScanStats()
        try:
            with _open(file) as f:
                for table in self._scan_file(f, file, int(file_idx_s), rgs, stats, decode_threads):
                    yield "table", table
        except Exception as e:  # noqa: BLE001 - reported (or skipped) by the consumer, naming the file
            yield "error", (file, e, stats)
            return
        yield "end", stats

    def _shard_failed(self, file: str, e: Exception, stats: ScanStats) -> None:
        """Raise ``e`` as an error naming ``file`` (``on_error="raise"``), or count the file
        as skipped."""
        err = e if isinstance(e, LaionHFError) else SourceError(f"{file}: cannot read ({type(e).__name__}: {e})")
        if self.config.on_error == "raise":
            if err is e:
                raise e
            raise err from e
        self._skipped(file, err, stats)

    def _plan_shard(self, f, file: str, file_idx: int, rgs: tuple[int, ...] | None, stats: ScanStats) -> "_ShardPlan":
        """Open a shard's file for streaming, prune its row groups by statistics (counted as
        filtered)."""
        import pyarrow.dataset as pads

        pf = open_parquet(f)
        meta = pf.metadata
        row_groups = list(rgs) if rgs is not None else list(range(meta.num_row_groups))
        stats.file_rows = meta.num_rows  # from here on, a failure knows the rows it loses
        stats.shard_rows = sum(meta.row_group(rg).num_rows for rg in row_groups)
        mapping = resolve_columns(pf.schema_arrow.names, where=file)
        if rgs is None or rgs[0] == 0:
            stats.files_read += 1
        starts = [0]
        for i in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(i).num_rows)
        kept = list(row_groups)
        pushdown = self._pushdown(pf.schema_arrow)
        if pushdown is not None and row_groups:  # a fragment only to read statistics: rows stream from pf
            fragment = pads.ParquetFileFormat().make_fragment(f, filesystem=_local_fs() if isinstance(f, str) else None)
            try:
                ids = {rg.id for rg in fragment.subset(row_group_ids=row_groups).subset(filter=pushdown).row_groups}
                kept = [rg for rg in row_groups if rg in ids]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass
            for rg in row_groups:
                if rg not in kept:
                    n = meta.row_group(rg).num_rows
                    stats.rows_in += n
                    stats.removed_by_filter += n
                    stats.row_groups_pruned += 1
        available = set(pf.schema_arrow.names)
        key_prefix = None if mapping.get("key") else f"{file_idx:05d}"
        return _ShardPlan(
            file=file,
            parquet=pf,
            mapping=mapping,
            kept=kept,
            starts=starts,
            read=[c for c in self.read_columns if c in available],
            key_prefix=key_prefix,
            # keys made from row numbers are built after the filter, for the kept rows only
            late_keys=key_prefix is not None and "key" not in self.filter_spec.columns,
        )

    def _process_batch(self, plan: "_ShardPlan", batch: pa.RecordBatch, offset: int, stats: ScanStats) -> pa.Table:
        """Normalize, filter, blocklist and sample one batch whose first row is ``offset``."""
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        table = normalize_table(
            table,
            mapping=plan.mapping,
            where=plan.file,
            key_prefix=None if plan.late_keys else plan.key_prefix,
            row_offset=offset,
        )
        if plan.late_keys:
            table = table.append_column(_ROW, pa.array(np.arange(offset, offset + n, dtype=np.int64)))
        return self._select(table, stats, plan.file, plan.key_prefix if plan.late_keys else None)

    def _scan_file(
        self, f, file: str, file_idx: int, rgs: tuple[int, ...] | None, stats: ScanStats, decode_threads: bool = True
    ) -> Iterator[pa.Table]:
        plan = self._plan_shard(f, file, file_idx, rgs, stats)
        for batch, offset in self._stream(plan, decode_threads):
            yield self._process_batch(plan, batch, offset, stats)

    def _stream(self, plan: "_ShardPlan", decode_threads: bool = True) -> Iterator[tuple[pa.RecordBatch, int]]:
        """``(batch, first row)`` of a shard's kept row groups, decoded
        ``batch_size`` rows at a time: memory follows the batch size, not the row group size
        (pyarrow's dataset scanner decodes whole row groups, which is hundreds of MB per
        row group in Spark-written LAION files). ``decode_threads``: decode a batch's columns
        on pyarrow's thread pool (worth it when shards are not already read in parallel)."""
        for rg in plan.kept:
            offset = plan.starts[rg]
            for batch in plan.parquet.iter_batches(
                batch_size=self.config.batch_size, row_groups=[rg], columns=plan.read, use_threads=decode_threads
            ):
                yield batch, offset
                offset += batch.num_rows

    def _select(self, table: pa.Table, stats: ScanStats, file: str, key_prefix: str | None = None) -> pa.Table:
        """Filter, blocklist and sample a normalized batch; counted only once it is whole (a
        batch that fails here is lost, not half counted)."""
        cfg = self.config
        n = table.num_rows
        table = self.filter_spec.apply(table)
        filtered = n - table.num_rows
        if key_prefix is not None:
            keys = keys_for_rows(key_prefix, table.column(_ROW))
            table = table.drop_columns([_ROW]).set_column(CANONICAL_COLUMNS.index("key"), "key", keys)
        blocked = sampled = 0
        if cfg.blocklist is not None and table.num_rows:
            table, blocked = cfg.blocklist.filter_table(table)
        if cfg.sample is not None and table.num_rows:
            before = table.num_rows
            table = table.filter(sample_mask(table.column("key"), cfg.sample, cfg.sample_seed))
            sampled = before - table.num_rows
        table = self._conform(table, file)
        stats.rows_in += n
        stats.removed_by_filter += filtered
        stats.removed_by_blocklist += blocked
        stats.removed_by_sample += sampled
        stats.rows_kept += table.num_rows
        return table

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
                        raise SchemaError(
                            f"{file}: column {fld.name!r} is {col.type}, expected {fld.type}: {e}"
                        ) from None
                arrays.append(col)
            else:
                arrays.append(pa.nulls(table.num_rows, fld.type))
        return pa.Table.from_arrays(arrays, schema=self.out_schema)

    # -- direct use (no datasets machinery) ---------------------------------------------
    def shards(self) -> list[tuple[str, tuple[int, ...] | None]]:
        """Plan the scan (schema, filter, row-group pruning) and return its shards, ``(file,
        row groups)`` pairs in order, as opaque values for :meth:`read_shard`: what a
        scheduler (Ray tasks, ...) distributes."""
        kwargs = self._split_generators(None)[0].gen_kwargs
        return list(zip(kwargs["files"], kwargs["row_groups_list"]))

    def read_shard(
        self, shard: tuple[str, tuple[int, ...] | None], stats: ScanStats | None = None, decode_threads: bool = True
    ) -> Iterator[pa.Table]:
        """The kept rows of one shard from :meth:`shards`, read on this thread, counted in
        ``stats`` (default :attr:`stats`; pass a fresh one to read shards on several threads).
        A bad file raises a :class:`SourceError` naming it, or is skipped."""
        total = self.stats if stats is None else stats
        for kind, payload in self._shard_items((0, shard), decode_threads):
            if kind == "table":
                yield payload
            elif kind == "error":
                file, error, shard_stats = payload
                self._shard_failed(file, error, shard_stats)
                total.add(shard_stats)
            else:
                total.add(payload)

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
    threads: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    storage_options: dict | None = None,
    cache_dir: str | None = None,
    **filters: Any,
) -> datasets.IterableDataset | datasets.Dataset:
    """Load LAION metadata from ``source`` as a ``datasets`` dataset in the canonical schema.

    ``source`` is a parquet file, a folder, a glob, an fsspec URL (``hf://datasets/...``,
    ``https://...``, ``s3://...``) or a list of them. Filters are ANDed: ``preset`` names,
    ``where`` expression strings or pyarrow expressions, and keyword filters such as
    ``min_similarity=0.28`` or ``language=["en", "de"]``. ``blocklist`` is a
    :class:`Blocklist` or digest file path(s). ``batch_size`` rows are decoded at a time and
    ``threads`` shards are read at once (default: the cores, up to 8), so memory follows
    ``threads * batch_size``, not the files' row group size. Returns an ``IterableDataset``
    when ``streaming`` (the default), else a ``Dataset``.
    """
    builder = make_builder(
        source,
        release=release,
        where=where,
        preset=preset,
        columns=columns,
        blocklist=blocklist,
        blocklist_column=blocklist_column,
        sample=sample,
        sample_seed=sample_seed,
        batch_size=batch_size,
        threads=threads,
        on_error=on_error,
        storage_options=storage_options,
        cache_dir=cache_dir,
        **filters,
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
    known = set(LaionConfig.__dataclass_fields__)  # every config field, the rest are filters
    filters = {k: config.pop(k) for k in list(config) if k not in known}
    try:
        return LaionBuilder(
            cache_dir=cache_dir,
            data_files={"train": files},
            blocklist=blocklist,
            filters=filters,
            storage_options=storage_options,
            hash=_config_hash(files, {k: v for k, v in config.items() if k != "threads"}, filters),  # same rows
            **config,
        )
    except FileNotFoundError as e:
        raise SourceError(f"metadata source not found: {e}") from None


def _config_hash(files: list[str], config: dict, filters: dict) -> str:
    import hashlib

    text = repr(
        (files, sorted((k, repr(v)) for k, v in config.items()), sorted((k, repr(v)) for k, v in filters.items()))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]

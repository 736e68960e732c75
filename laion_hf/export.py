"""The metadata stage's export: filtered LAION metadata as parquet parts (``laion-hf filter``).

One driver, whatever runs it (:func:`filter_to_parquet` on this machine, or an engine of
:mod:`laion_hf.engines`):

``plan(source, out_dir, ...)``  plans the scan (schema, filter, row-group pruning) and returns
    a :class:`FilterPlan` whose ``orders`` are one :class:`FilterOrder` per shard (file × row
    group); the output folder is an :class:`~laion_hf._util.outdir.OutputDir` (staged, then
    committed; an output overlapping the inputs is refused).
``run_one(order)``  reads, normalizes and filters one shard and stages its kept rows; returns
    the shard's counts (picklable).
``finish(plan, results)``  sums the counts (:class:`~laion_hf.builder.ScanStats`), cuts the
    kept rows, in input order, into ``part-{i:05d}.parquet`` files of ``rows_per_file`` rows
    (:func:`cut_parts`, :func:`write_part`), and commits them with ``stats.json`` last.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import pyarrow as pa

from laion_hf._util.outdir import OutputDir
from laion_hf._util.workers import map_orders, raise_failures
from laion_hf.builder import ScanStats, make_builder
from laion_hf.errors import FilterError

__all__ = [
    "FilterOrder",
    "FilterPlan",
    "PartOrder",
    "filter_to_parquet",
    "plan",
    "run_one",
    "finish",
    "cut_parts",
    "write_part",
]

#: the stage's name (engines, error messages) and how the local engine runs its orders
NAME = "filter"
LOCAL_MODE = "threads"  # pyarrow decodes off the GIL; the builder is shared read-only

_BUILDER_FILE = "builder.pickle"
_STAGED_ROWS = 65_536  # rows per write when parts are assembled (row groups not too small)


@dataclass(frozen=True)
class FilterOrder:
    """One shard of the scan: ``file`` (as the builder tags it) × ``row_groups`` (None: all),
    the pickled builder to read it with, and where its kept rows are staged."""

    shard: int
    file: str
    row_groups: Optional[tuple[int, ...]]
    builder_path: str
    staged_path: str
    decode_threads: bool = True

    def describe(self) -> str:
        rgs = "" if self.row_groups is None else f" row groups {list(self.row_groups)}"
        return f"filter shard {self.shard} ({self.file.split(chr(9), 1)[-1]}{rgs})"


@dataclass(frozen=True)
class PartOrder:
    """One output part: ``pieces`` = (shard, first row, rows) slices of the staged shards."""

    part: int
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def name(self) -> str:
        return f"part-{self.part:05d}.parquet"


@dataclass
class FilterPlan:
    """A planned filter run (see the module docs); close it (or use ``with``) to remove the
    staging folder whatever happened."""

    out: OutputDir
    orders: list[FilterOrder]
    rows_per_file: int
    plan_stats: ScanStats
    schema: pa.Schema
    filters: list[str]
    release: Optional[str]
    started: float = field(default_factory=time.time)

    def __enter__(self) -> "FilterPlan":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        _builder.cache_clear()  # this process's unpickled builders (another plan's reloads)
        self.out.__exit__(None, None, None)


def plan(source: Any, out_dir: str, *, rows_per_file: int = 1_000_000, **load_kwargs: Any) -> FilterPlan:
    """Plan filtering ``source`` into ``out_dir`` (see :func:`filter_to_parquet`)."""
    if rows_per_file < 1:
        raise FilterError(f"rows_per_file must be at least 1, got {rows_per_file}")
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    started = time.time()
    out = OutputDir(out_dir, inputs=sources, kind="filter").__enter__()
    try:
        builder = make_builder(source, **load_kwargs)
        shards = builder.shards()  # plans: schema, filter, shards (file x row group)
        plan_stats, builder.stats = builder.stats, ScanStats()
        staging = out.path("_shards")
        os.makedirs(staging)
        builder_path = os.path.join(staging, _BUILDER_FILE)
        with open(builder_path, "wb") as f:
            pickle.dump(builder, f, protocol=pickle.HIGHEST_PROTOCOL)
        decode_threads = len(shards) < builder._threads()  # a few shards: decode their columns in parallel
        orders = [
            FilterOrder(
                i,
                f,
                tuple(r) if r is not None else None,
                builder_path,
                os.path.join(staging, f"{i:07d}.arrow"),
                decode_threads,
            )
            for i, (f, r) in enumerate(shards)
        ]
        return FilterPlan(
            out,
            orders,
            rows_per_file,
            plan_stats,
            builder.out_schema,
            builder.filter_spec.descriptions,
            builder.release,
            started,
        )
    except BaseException:
        out.__exit__(None, None, None)
        raise


@functools.lru_cache(maxsize=4)
def _builder(path: str) -> Any:
    """The plan's builder, unpickled once per process (its scan plan included)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def run_one(order: FilterOrder, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Read + normalize + filter one shard; stage its kept rows (Arrow IPC); return
    ``{"shard", "rows", "stats"}`` (the shard's :class:`ScanStats` as a dict)."""
    builder = _builder(order.builder_path)
    stats = ScanStats()
    tmp = f"{order.staged_path}.tmp-{os.getpid()}-{id(stats)}"
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    try:
        with (
            pa.OSFile(tmp, "wb") as sink,
            pa.ipc.new_file(sink, builder.out_schema, options=options) as w,
        ):
            for table in builder.read_shard((order.file, order.row_groups), stats, order.decode_threads):
                w.write_table(table)
        os.replace(tmp, order.staged_path)  # a retried order overwrites, never appends
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if progress is not None:
        progress(stats.rows_in, stats.rows_kept)
    return {"shard": order.shard, "rows": stats.rows_kept, "stats": stats.as_dict()}


def cut_parts(rows: Sequence[int], rows_per_file: int) -> list[PartOrder]:
    """Cut the concatenation of shards (``rows[i]`` kept rows each) into parts of
    ``rows_per_file`` rows; one empty part when nothing was kept (it carries the schema)."""
    parts: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    in_cur = 0
    for shard, n in enumerate(rows):
        start = 0
        while start < n:
            take = min(n - start, rows_per_file - in_cur)
            cur.append((shard, start, take))
            in_cur += take
            start += take
            if in_cur >= rows_per_file:
                parts.append(cur)
                cur, in_cur = [], 0
    if cur or not parts:
        parts.append(cur)
    return [PartOrder(i, tuple(p)) for i, p in enumerate(parts)]


def _slices(path: str, start: int, length: int) -> Iterable[pa.RecordBatch]:
    """Rows ``[start, start + length)`` of a staged shard, decompressing only their batches."""
    reader = pa.ipc.open_file(pa.memory_map(path))
    pos, end = 0, start + length
    for i in range(reader.num_record_batches):
        if pos >= end:
            return
        batch = reader.get_batch(i)
        lo, hi = max(start, pos), min(end, pos + batch.num_rows)
        if lo < hi:
            yield batch.slice(lo - pos, hi - lo)
        pos += batch.num_rows


def write_part(part: PartOrder, orders: Sequence[FilterOrder], out_path: str, schema: pa.Schema) -> str:
    """Write one part from its slices of the staged shards (through a temporary file)."""
    import pyarrow.parquet as pq

    tmp = f"{out_path}.tmp-{os.getpid()}"
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            buf: list[pa.RecordBatch] = []
            for shard, start, length in part.pieces:
                for batch in _slices(orders[shard].staged_path, start, length):
                    buf.append(batch)
                    if sum(b.num_rows for b in buf) >= _STAGED_ROWS:
                        w.write_table(pa.Table.from_batches(buf, schema))
                        buf = []
            if buf:
                w.write_table(pa.Table.from_batches(buf, schema))
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return part.name


def total_stats(p: FilterPlan, results: Sequence[dict[str, Any]]) -> ScanStats:
    """The scan's counts: the planning's (files, files skipped at planning) plus each shard's."""
    total = ScanStats.from_dict(p.plan_stats.as_dict())
    for r in results:
        shard = ScanStats.from_dict(r["stats"])
        shard.files = 0
        total.add(shard)
    return total


def finish(
    p: FilterPlan,
    results: Sequence[Any],
    *,
    map_parts: Optional[Callable[..., Iterable[Any]]] = None,
    **extra: Any,
) -> dict[str, Any]:
    """Raise the first failed shard's error; else cut and write the parts (``map_parts(fn,
    parts)``, default the builtin ``map``), commit them with ``stats.json`` (the counts,
    ``filters``, ``release``, ``output_files``, ``duration_s`` and ``extra``); return it."""
    raise_failures(results, NAME)
    total = total_stats(p, results)
    parts = cut_parts([r["rows"] for r in results], p.rows_per_file)
    write = functools.partial(_write_staged_part, orders=p.orders, staging=os.fspath(p.out.staging), schema=p.schema)
    names = list((map_parts or map)(write, parts))
    result = total.as_dict()
    result.update(
        filters=p.filters,
        release=p.release,
        output_files=names,
        duration_s=round(time.time() - p.started, 3),
        **extra,
    )
    p.out.commit(names, final={"stats.json": json.dumps(result, indent=2)})
    return result


def _write_staged_part(part: PartOrder, orders: Sequence[FilterOrder], staging: str, schema: pa.Schema) -> str:
    return write_part(part, orders, os.path.join(staging, part.name), schema)


def filter_to_parquet(
    source: Any,
    out_dir: str,
    *,
    rows_per_file: int = 1_000_000,
    progress: bool = True,
    **load_kwargs: Any,
) -> dict[str, Any]:
    """Filter ``source`` (see :func:`laion_hf.load_laion` for the options) into parquet parts
    ``out_dir/part-{i:05d}.parquet`` (canonical schema) plus ``out_dir/stats.json`` with the
    scan counts. Returns the stats dict.

    ``out_dir`` must not contain or overlap the inputs (:class:`~laion_hf.errors.OutputError`).
    The parts are written beside the previous run's output and swapped in at the end; a rerun
    replaces only files that laion-hf wrote there (its manifest), never a user's file.
    Shards are read ``threads`` at once (default: the cores, up to 8).
    """
    from tqdm.auto import tqdm

    with plan(source, out_dir, rows_per_file=rows_per_file, **load_kwargs) as p:
        bar = tqdm(unit=" rows", unit_scale=True, disable=not progress, desc="filter")
        counts = [0, 0]

        def on_progress(rows: int, kept: int) -> None:
            counts[0] += rows
            counts[1] += kept
            bar.set_postfix(kept=f"{counts[1] / max(counts[0], 1):.1%}", refresh=False)
            bar.update(rows)

        try:
            threads = _builder(p.orders[0].builder_path)._threads() if p.orders else 1
            results = map_orders(run_one, p.orders, workers=threads, mode=LOCAL_MODE, progress=on_progress)
        finally:
            bar.close()
        return finish(p, results)

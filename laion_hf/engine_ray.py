"""The pipeline stages on Ray Data: ``--engine ray`` for ``filter``, ``download`` and ``embed``.

The same stages as the local engine, scheduled by Ray Data (no scheduler of our own), with
the same output names, content, stats and resume rules, so a run can start on one engine and
resume on the other:

``filter``    one Ray task per (metadata file × row group) reads, normalizes and filters with
              the metadata stage's own reader (:class:`laion_hf.builder.LaionBuilder`) and
              stages its rows; then one task per output part writes ``part-{i:05d}.parquet``
              from the staged rows (global row order kept, so parts hold the same rows as the
              local engine's), and the driver writes ``stats.json`` from the tasks' counts.
``download``  metadata parquet files are cut into the local engine's input shards by one Ray
              task per file (the driver reads only footers; other inputs, such as a table, a
              ``datasets`` stream, csv/txt or ``retry_failed``, are split on the driver as the
              local engine does); a pool of Ray actors (``workers``, one CPU each) runs the
              image stage's shard worker on whole shards (our aiohttp fetcher, ``concurrency``
              fetches in flight per actor, the same writer). Each shard is
              written under temporary names and renamed, stats last: a shard whose actor died
              is redone by Ray on a restarted actor and never half-written or duplicated.
``embed``     CPU actors read each input shard and decode + preprocess its images into model
              batches (the CLIP stage's own decoder); GPU actors (``num_gpus``) run the model
              and score heads on those batches; the batches of each part are grouped and
              written (``img_emb/ text_emb/ metadata/ stats/``) by Ray tasks.

Fault tolerance is Ray's: tasks are retried when their worker dies, and actors are restarted
with their in-flight task retried (``max_restarts=-1, max_task_retries=-1``). Every write is a
temporary file renamed into place, so a retry overwrites, never appends.

On a cluster, ``out_dir`` (and the inputs) must be a path every node sees (a shared file
system); ``address`` is passed to :func:`ray.init` (``"auto"``, ``"ray://head:10001"``, or
None to start a local instance when none is connected). Needs ``pip install 'laion-hf[ray]'``.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pyarrow as pa

from laion_hf.errors import EngineError, LaionHFError
from laion_hf.sources import open_parquet

__all__ = [
    "init_ray",
    "filter_to_parquet_ray",
    "download_ray",
    "embed_shards_ray",
]

STAGING = "_laion_hf_ray_staging"


# ---------------------------------------------------------------------------- Ray set-up
def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise EngineError(
            f"the Ray engine needs Ray Data: pip install 'laion-hf[ray]' (or 'ray[data]>=2.40'); import failed: {e}"
        ) from None
    return ray


def init_ray(address: Optional[str] = None, **init_kwargs: Any) -> Any:
    """Connect to Ray (or start a local instance) unless already connected; returns ``ray``.

    ``address``: ``"auto"`` (the cluster this machine belongs to), ``"ray://head:10001"``
    (Ray Client), ``"host:6379"``, or None: start a local instance using this machine's cores.
    A connection made earlier (``ray.init(...)`` by the caller) is reused as is.
    """
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, **init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineError(f"cannot connect to Ray at {address!r}: {e}") from e
    return ray


def _configure(progress: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = bool(progress)


def _cluster_count(resource: str, default: int = 1) -> int:
    import ray

    return max(default, int(ray.cluster_resources().get(resource, 0)))


def _task_pool(n: Optional[int]) -> dict:
    """``map_batches`` kwargs for at most ``n`` concurrent tasks (all Ray versions >= 2.40)."""
    if n is None:
        return {}
    import ray.data

    if hasattr(ray.data, "TaskPoolStrategy"):
        try:
            return {"compute": ray.data.TaskPoolStrategy(size=int(n))}
        except TypeError:  # pragma: no cover - older Ray
            pass
    return {"concurrency": int(n)}  # pragma: no cover - older Ray


def _actor_pool(n: int) -> dict:
    import ray.data

    return {"compute": ray.data.ActorPoolStrategy(size=int(n))}


def _laion_error(e: BaseException) -> Optional[LaionHFError]:
    """The laion-hf error a Ray task raised, found in the exception chain Ray wraps it in."""
    seen: set[int] = set()
    todo: list[Any] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, LaionHFError):
            return x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def _error_text(e: BaseException) -> str:
    """An exception as data (Ray keeps only the traceback text of a failed Ray Data task):
    ``ClassName<TAB>message``, raised again on the driver by :func:`_raise_errors`."""
    return f"{type(e).__name__}\t{e}"


def _raise_errors(rows: list[dict], what: str) -> None:
    """Raise the first error a task returned as data, as its own laion-hf class."""
    from laion_hf import errors

    texts = [r["error"] for r in rows if r.get("error")]
    if not texts:
        return
    name, _, msg = texts[0].partition("\t")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, LaionHFError)):
        cls, msg = EngineError, f"{what}: {name}: {msg}"
    more = f" (and {len(texts) - 1} more failure(s))" if len(texts) > 1 else ""
    raise cls(msg + more)


def _collect(ds: Any) -> list[dict]:
    """Run a Ray dataset to completion; a laion-hf error raised in a task is re-raised as is."""
    try:
        return list(ds.iter_rows())
    except LaionHFError:
        raise
    except Exception as e:
        err = _laion_error(e)
        if err is not None:
            raise type(err)(*err.args) from e
        raise


def _items(ds_rows: list[dict]) -> Any:
    """A Ray dataset with one block per item (so each item can go to its own worker)."""
    import ray.data

    return ray.data.from_items(ds_rows, override_num_blocks=max(1, len(ds_rows)))


def _atomic_write_bytes(path: str, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------- filter
def _filter_shard(batch: pa.Table, builder_ref: Any, staging: str) -> pa.Table:
    """Ray task: read + normalize + filter one (file, row groups) shard with the metadata
    stage's builder; stage the kept rows as parquet; return the shard's counts."""
    import pyarrow.parquet as pq
    import ray

    from laion_hf.builder import ScanStats

    builder = ray.get(builder_ref)
    out = []
    for row in batch.to_pylist():
        idx, tagged = row["shard"], row["file"]
        rgs = tuple(row["row_groups"]) if row["row_groups"] is not None else None
        builder.stats = ScanStats()
        try:
            tables = list(builder.read_shard((tagged, rgs)))
        except LaionHFError as e:  # on_error="raise": the driver raises it, naming the file
            out.append({"shard": idx, "rows": 0, "stats": None, "error": _error_text(e)})
            continue
        table = pa.concat_tables(tables) if tables else builder.out_schema.empty_table()
        path = os.path.join(staging, f"{idx:07d}.parquet")
        _atomic_write_bytes(path, lambda p: pq.write_table(table, p, compression="zstd"))
        out.append({"shard": idx, "rows": table.num_rows, "stats": json.dumps(builder.stats.as_dict()), "error": None})
    return pa.Table.from_pylist(out, schema=pa.schema([("shard", pa.int64()), ("rows", pa.int64()),
                                                      ("stats", pa.string()), ("error", pa.string())]))  # fmt: skip


def _write_filter_part(batch: pa.Table, out_dir: str, staging: str, schema_bytes: bytes) -> pa.Table:
    """Ray task: write ``part-{k:05d}.parquet`` from slices of staged shards."""
    import pyarrow.parquet as pq

    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    done = []
    for row in batch.to_pylist():
        path = os.path.join(out_dir, f"part-{row['part']:05d}.parquet")

        def write(tmp: str) -> None:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
                for shard, start, length in zip(row["shards"], row["starts"], row["lengths"]):
                    t = pq.read_table(os.path.join(staging, f"{shard:07d}.parquet"), schema=schema)
                    w.write_table(t.slice(start, length))

        _atomic_write_bytes(path, write)
        done.append({"part": row["part"]})
    return pa.Table.from_pylist(done)


def _plan_parts(rows: list[int], rows_per_file: int) -> list[dict]:
    """Cut the concatenation of shards (``rows[i]`` kept rows each) into parts of
    ``rows_per_file`` rows, as the local engine's writer does."""
    parts: list[dict] = []
    cur: dict = {"shards": [], "starts": [], "lengths": [], "n": 0}
    for shard, n in enumerate(rows):
        start = 0
        while start < n:
            take = min(n - start, rows_per_file - cur["n"])
            cur["shards"].append(shard)
            cur["starts"].append(start)
            cur["lengths"].append(take)
            cur["n"] += take
            start += take
            if cur["n"] >= rows_per_file:
                parts.append(cur)
                cur = {"shards": [], "starts": [], "lengths": [], "n": 0}
    if cur["n"] or not parts:
        parts.append(cur)  # the tail, or one empty part with the schema when nothing is kept
    return [dict(part=i, shards=p["shards"], starts=p["starts"], lengths=p["lengths"]) for i, p in enumerate(parts)]


def filter_to_parquet_ray(
    source: Any,
    out_dir: str,
    *,
    rows_per_file: int = 1_000_000,
    progress: bool = True,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    **load_kwargs: Any,
) -> dict[str, Any]:
    """:func:`laion_hf.filters.filter_to_parquet` on Ray Data: the same parts and stats.

    Args:
        source, rows_per_file, progress, **load_kwargs: as the local engine.
        address: Ray address (see :func:`init_ray`).
        workers: at most this many tasks at once (default: as many as the cluster's CPUs).
    """
    from laion_hf._util.outdir import OutputDir

    if rows_per_file < 1:
        raise EngineError(f"rows_per_file must be at least 1, got {rows_per_file}")
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    with OutputDir(out_dir, inputs=sources, kind="filter") as out:
        result = _filter_ray_staged(source, out, rows_per_file, progress, address, workers, load_kwargs)
        out.commit(result["output_files"], final={"stats.json": json.dumps(result, indent=2)})
    return result


def _filter_ray_staged(source: Any, out: Any, rows_per_file: int, progress: bool, address: Optional[str],
                       workers: Optional[int], load_kwargs: dict) -> dict[str, Any]:
    """Run the Ray filter, writing parts into ``out``'s staging folder; return the stats."""
    from laion_hf.builder import ScanStats, make_builder

    ray = init_ray(address)
    _configure(progress)
    start = time.time()
    builder = make_builder(source, **load_kwargs)
    planned = builder.shards()  # plans: schema, filter, shards (file x row group)
    staging = out.path(STAGING)
    os.makedirs(staging)
    plan_stats = builder.stats
    builder.stats = ScanStats()
    builder_ref = ray.put(builder)
    shards = [{"shard": i, "file": f, "row_groups": list(r) if r is not None else None}
              for i, (f, r) in enumerate(planned)]
    ds = _items(shards).map_batches(
        _filter_shard, batch_size=1, batch_format="pyarrow", fn_kwargs={"builder_ref": builder_ref, "staging": staging},
        num_cpus=1, **_task_pool(min(workers, len(shards)) if workers else None),
    )  # fmt: skip
    results = sorted(_collect(ds), key=lambda r: r["shard"])
    if any(r["error"] for r in results):
        _raise_errors(results, "filter on Ray")
    if len(results) != len(shards):
        raise EngineError(f"filter on Ray: {len(results)} shard results for {len(shards)} shards")
    total = ScanStats(files=plan_stats.files)
    for entry in plan_stats.files_skipped:
        total.skip(entry)
    for r in results:  # the shards' counts and skipped files, merged as the local engine does
        shard_stats = ScanStats.from_dict(json.loads(r["stats"]))
        shard_stats.files = 0
        total.add(shard_stats)
    parts = _plan_parts([r["rows"] for r in results], rows_per_file)
    schema_bytes = builder.out_schema.serialize().to_pybytes()
    ds = _items(parts).map_batches(
        _write_filter_part, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"out_dir": os.fspath(out.staging), "staging": staging, "schema_bytes": schema_bytes},
        num_cpus=1, **_task_pool(min(workers, len(parts)) if workers else None),
    )  # fmt: skip
    written = _collect(ds)
    if len(written) != len(parts):
        raise EngineError(f"filter on Ray: {len(written)} parts written of {len(parts)}")
    result = total.as_dict()
    result.update(
        filters=builder.filter_spec.descriptions,
        release=builder.release,
        output_files=[f"part-{p['part']:05d}.parquet" for p in parts],
        duration_s=round(time.time() - start, 3),
        engine="ray",
    )
    return result


# ---------------------------------------------------------------------------- download
def _write_ipc(path: str, table: pa.Table) -> None:
    tmp = path + ".tmp"
    with pa.ipc.new_file(tmp, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, path)


def _split_file(batch: pa.Table, files: list, offsets: list, counts: list, shard_size: int, inputs: str,
                schema_bytes: bytes) -> pa.Table:
    """Ray task: cut one metadata parquet file into the download's input shards.

    Shard ``i`` holds the global rows ``[i * shard_size, (i + 1) * shard_size)`` of the files
    read in order, as the local engine's split writes them. Shards inside this file are
    written whole (``{i:05d}.arrow``); a shard that straddles a file boundary gets a piece
    from each file (``.piece-{i:05d}-{file:05d}.arrow``), joined by the driver.
    """
    from laion_hf.images.download import conform_input

    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    done = []
    for idx in batch.column("file").to_pylist():
        path, start, n = files[idx], offsets[idx], counts[idx]
        pf = open_parquet(path)
        buf: list[pa.Table] = []
        pos = start  # global index of the first buffered row
        buffered = 0

        def flush(upto: int) -> None:
            """Write the buffered rows up to global row ``upto`` (a shard boundary or the file's end)."""
            nonlocal buf, buffered, pos
            whole = pa.concat_tables(buf).combine_chunks()
            take = upto - pos
            part, rest = whole.slice(0, take), whole.slice(take)
            shard = pos // shard_size
            whole_shard = pos == shard * shard_size and (upto == (shard + 1) * shard_size or upto == offsets[-1] + counts[-1])
            name = f"{shard:05d}.arrow" if whole_shard else f".piece-{shard:05d}-{idx:05d}.arrow"
            _write_ipc(os.path.join(inputs, name), part)
            buf, buffered, pos = ([rest] if rest.num_rows else []), rest.num_rows, upto

        for b in pf.iter_batches(batch_size=min(shard_size, 65_536)):
            t = pa.Table.from_batches([b])
            t = conform_input(t, schema)
            buf.append(t)
            buffered += t.num_rows
            while buffered and pos + buffered >= (pos // shard_size + 1) * shard_size:
                flush((pos // shard_size + 1) * shard_size)
        if buffered:
            flush(start + n)
        done.append({"file": idx})
    return pa.Table.from_pylist(done)


def _split_parallel(source: Any, out: Path, inputs: Path, shard_size: int, url_column: Optional[str],
                    caption_column: Optional[str], hash_column: Optional[str], output_format: str,
                    workers: int) -> Optional[dict]:
    """The local engine's input split, one Ray task per metadata parquet file (the driver only
    reads footers). None when ``source`` is not a list of local parquet files (then the driver
    splits it as the local engine does)."""
    import pyarrow.parquet as pq

    from laion_hf.errors import FetchError
    from laion_hf.images import download as dl

    if not isinstance(source, (str, os.PathLike, list, tuple)):
        return None
    if isinstance(source, (list, tuple)) and not all(isinstance(x, (str, os.PathLike)) for x in source):
        return None
    files = dl.source_files(source)
    if not all(f.lower().endswith(".parquet") for f in files):
        return None
    counts, schemas = [], []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise FetchError(f"cannot read {f!r} as parquet: {e}") from e
        counts.append(pf.metadata.num_rows)
        schemas.append(pf.schema_arrow)
    keep = [i for i, c in enumerate(counts) if c > 0]
    if not keep:
        raise FetchError(f"no rows to download in {source!r}")
    files, counts, schemas = [files[i] for i in keep], [counts[i] for i in keep], [schemas[i] for i in keep]
    schema = schemas[0]
    cols = dl.input_columns(schema.names, url_column, caption_column, hash_column)
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    total = offsets[-1] + counts[-1]
    n_shards = -(-total // shard_size)
    inputs.mkdir(exist_ok=True)
    for old in glob.glob(str(inputs / ".piece-*")):
        os.unlink(old)
    ds = _items([{"file": i} for i in range(len(files))]).map_batches(
        _split_file, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"files": files, "offsets": offsets, "counts": counts, "shard_size": shard_size,
                   "inputs": str(inputs), "schema_bytes": schema.serialize().to_pybytes()},
        num_cpus=1, **_task_pool(min(workers, len(files))),
    )  # fmt: skip
    _collect(ds)
    for i in range(n_shards):  # shards straddling files: join their pieces in file order
        pieces = sorted(glob.glob(str(inputs / f".piece-{i:05d}-*.arrow")))
        if pieces:
            parts = [pa.ipc.open_file(p).read_all() for p in pieces]
            _write_ipc(str(inputs / f"{i:05d}.arrow"), pa.concat_tables(parts).combine_chunks())
            for p in pieces:
                os.unlink(p)
    rows = [min(shard_size, total - i * shard_size) for i in range(n_shards)]
    missing = [i for i in range(n_shards) if not (inputs / f"{i:05d}.arrow").exists()]
    if missing:
        raise EngineError(f"download on Ray: input shards {missing[:10]} were not written")
    return dl.write_manifest(out, inputs, rows, cols, shard_size, output_format)


_DOWNLOAD_ROW = pa.schema([("shard", pa.int64()), ("count", pa.int64()), ("successes", pa.int64()),
                           ("cpu_s", pa.float64()), ("pid", pa.int64()), ("error", pa.string())])  # fmt: skip


class _ShardDownloader:
    """Ray actor: downloads whole shards with the image stage's shard worker (our aiohttp
    fetcher, ``concurrency`` fetches in flight). A shard already finished (its stats file
    exists: a retry after the actor died between the last rename and its reply) is not redone."""

    def __init__(self, template: Any) -> None:
        self.template = template

    def __call__(self, batch: pa.Table) -> pa.Table:
        from laion_hf.images.download import run_shard

        out = []
        for shard_id in batch.column("shard").to_pylist():
            t = self.template
            job = replace(t, shard_id=shard_id, input_path=os.path.join(os.path.dirname(t.input_path), f"{shard_id:05d}.arrow"))
            stats_path = os.path.join(job.out_dir, f"{shard_id:05d}_stats.json")
            cpu0 = time.process_time()  # this worker process, all its threads
            try:
                if os.path.exists(stats_path):
                    with open(stats_path) as f:
                        stats = json.load(f)
                else:
                    stats = run_shard(job)
            except Exception as e:  # reported like the local engine's failed shard; the others go on
                out.append({"shard": shard_id, "count": 0, "successes": 0, "cpu_s": time.process_time() - cpu0,
                            "pid": os.getpid(), "error": f"shard {shard_id:05d} failed: {type(e).__name__}: {e}"})
                continue
            out.append({"shard": shard_id, "count": stats["count"], "successes": stats["successes"],
                        "cpu_s": time.process_time() - cpu0, "pid": os.getpid(), "error": None})  # fmt: skip
        return pa.Table.from_pylist(out, schema=_DOWNLOAD_ROW)


def download_ray(
    source: Any,
    out_dir: str | os.PathLike,
    *,
    output_format: str = "webdataset",
    shard_size: int = 10_000,
    url_column: Optional[str] = None,
    caption_column: Optional[str] = None,
    hash_column: Optional[str] = None,
    hash_type: str = "sha256",
    retry_failed: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_max_bytes: int = 20 * 2**30,
    progress: bool = True,
    fetch: Any = None,
    resize: Any = None,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    processes: Optional[int] = None,
    **options: Any,
) -> dict:
    """:func:`laion_hf.images.download.download` on Ray Data: the same shards, stats and resume.

    ``workers`` (or ``processes``) download actors, one CPU each, default one per CPU of the
    cluster; every other argument is the local engine's. Returns the local engine's run stats
    plus ``engine="ray"``, ``workers``, ``worker_pids`` (distinct worker processes that finished
    shards) and ``worker_cpu_seconds`` (CPU time the workers spent on this run's shards).
    """
    from laion_hf.errors import FetchError, ShardError
    from laion_hf.images import download as dl
    from laion_hf.images.fetch import make_configs

    fetch_cfg, resize_cfg = make_configs(fetch, resize, **options)
    init_ray(address)
    _configure(progress)
    n_workers = int(workers or processes or _cluster_count("CPU"))
    if n_workers < 1:
        raise FetchError(f"workers must be >= 1, got {n_workers}")

    def split(src: Any, out: Path, inputs: Path) -> Optional[dict]:  # parquet files: one Ray task per file
        return _split_parallel(src, out, inputs, shard_size, url_column, caption_column, hash_column,
                               output_format, n_workers)

    run = dl.plan_download(source, out_dir, output_format=output_format, shard_size=shard_size,
                           url_column=url_column, caption_column=caption_column, hash_column=hash_column,
                           retry_failed=retry_failed, split=split)
    out, pending, todo_rows = run.out, run.pending, run.todo_rows
    template = run.job(0, hash_type, fetch_cfg, resize_cfg, cache_dir, cache_max_bytes)
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo_rows, unit="img", desc="download (ray)", dynamic_ncols=True)
    done: list[dict] = []
    try:
        if pending:
            ds = _items([{"shard": i} for i in pending]).map_batches(
                _ShardDownloader, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs={"template": template},
                num_cpus=1, **_actor_pool(min(n_workers, len(pending))),
            )  # fmt: skip
            try:
                for row in ds.iter_rows():
                    done.append(row)
                    if bar is not None and not row["error"]:
                        bar.update(row["count"])
            except LaionHFError:
                raise
            except Exception as e:
                err = _laion_error(e)
                raise ShardError(f"download on Ray failed: {err or e} (rerun the same command to redo the "
                                 "unfinished shards)") from e
    finally:
        if bar is not None:
            bar.close()
    failures = sorted({r["error"] for r in done if r["error"]})
    if failures:
        raise ShardError("; ".join(failures) + " (rerun the same command to redo the unfinished shards)")
    missing = sorted(set(pending) - {r["shard"] for r in done})
    if missing or any(not (out / f"{i:05d}_stats.json").exists() for i in pending):
        raise ShardError(f"download on Ray: shards {missing[:10]} not finished (rerun the same command)")
    return run.finish(engine="ray", workers=n_workers, worker_pids=len({r["pid"] for r in done}),
                      worker_cpu_seconds=sum(r["cpu_s"] for r in done))


# ---------------------------------------------------------------------------- embed
def _build_embedder(spec: dict, device: str, precision: Optional[str] = None) -> Any:
    from laion_hf.clip.model import ClipEmbedder

    return ClipEmbedder(
        spec["model"], spec["pretrained"], device=device, precision=precision or spec["precision"],
        batch_size=spec["batch_size"], allow_download=False, cache_dir=spec["cache_dir"],
    )  # fmt: skip


class _PartDecoder:
    """Ray CPU actor: reads input shards and decodes + preprocesses their images into model
    batches (uint8 HWC, the CLIP stage's decoder), tokenizes their captions. Yields one row per
    model batch: ``part``, ``batch``, ``payload`` (pickled arrays + the batch's table)."""

    def __init__(self, spec: dict) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from laion_hf.clip.stream import ClipPipeline

        self.spec = spec
        self.embedder = _build_embedder(spec, "cpu", "fp32")  # only its transforms and tokenizer are used
        self.pipe = ClipPipeline(self.embedder, (), embedding_dtype="float32", num_workers=spec["decode_threads"])
        self.pool = ThreadPoolExecutor(self.pipe.num_workers, thread_name_prefix="laion-hf-ray-decode")

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for part, path in zip(batch.column("part").to_pylist(), batch.column("path").to_pylist()):
            n_batches = 0
            try:
                for out in self._part(part, path):
                    yield out
                    n_batches += 1
            except LaionHFError as e:  # a shard that cannot be read: the driver raises it, naming the file
                yield pa.table({"part": [part], "batch": [-2], "payload": pa.array([_error_text(e).encode()], pa.binary())})
                continue
            if n_batches == 0:  # an empty shard still becomes a (empty) part
                yield pa.table({"part": [part], "batch": [-1], "payload": pa.array([b""], pa.binary())})

    def _part(self, part: int, path: str) -> Iterator[pa.Table]:
        """The model batches of one shard (the CLIP stage's slicing and decoding: the same
        batches as the local engine), decoded here, embedded by the GPU actors."""
        from laion_hf.clip.embed import read_shards

        pipe = self.pipe
        n_batches = 0
        for t in pipe.batches(read_shards(path, batch_rows=max(self.embedder.batch_size, 256))):
            d = pipe.decode_batch(t, self.pool)
            meta = t.drop_columns([pipe.image_column]) if pipe.image_column in t.column_names else t
            payload = pickle.dumps({
                "table": _ipc(meta), "cand_rows": d.cand_rows, "pre_errors": d.pre_errors,
                "pixels": d.pixels.numpy(), "slot_errors": d.slot_errors, "text_valid": d.text_valid,
                "tokens": d.tokens.numpy() if d.tokens is not None else None,
            }, protocol=5)  # fmt: skip
            yield pa.table({"part": [part], "batch": [n_batches], "payload": pa.array([payload], pa.binary())})
            n_batches += 1


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class _BatchEmbedder:
    """Ray GPU actor (``num_gpus``; CPU when the cluster has none): runs the model and score
    heads on decoded batches (the CLIP stage's own batch step), returns the output table."""

    def __init__(self, spec: dict) -> None:
        from laion_hf.clip.stream import ClipPipeline

        self.embedder = _build_embedder(spec, spec["device"])
        self.pipe = ClipPipeline(self.embedder, spec["heads"], embedding_dtype="float32", num_workers=1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from laion_hf.clip.stream import DecodedBatch

        outs = []
        for part, b, payload in zip(batch.column("part").to_pylist(), batch.column("batch").to_pylist(),
                                    batch.column("payload").to_pylist()):  # fmt: skip
            if b < 0:  # -1: an empty shard, -2: an unreadable one (payload = the error)
                outs.append({"part": part, "batch": b, "result": payload})
                continue
            p = pickle.loads(payload)
            pixels = torch.from_numpy(p["pixels"].copy())
            if self.embedder.pin_memory and pixels.numel():
                pixels = pixels.pin_memory()
            tokens = torch.from_numpy(p["tokens"]) if p["tokens"] is not None else None
            decoded = DecodedBatch(_from_ipc(p["table"]), p["cand_rows"], p["pre_errors"], pixels,
                                   p["slot_errors"], tokens, p["text_valid"])
            outs.append({"part": part, "batch": b, "result": _ipc(self.pipe.embed_decoded(decoded))})
        return pa.Table.from_pylist(outs, schema=pa.schema([("part", pa.int64()), ("batch", pa.int64()),
                                                            ("result", pa.binary())]))  # fmt: skip


def _write_embed_part(group: pa.Table, out_dir: str, paths: list, spec: dict) -> pa.Table:
    """Ray task: write one part (``img_emb_N.npy``, ``text_emb_N.npy``, ``stats_N.json``,
    ``metadata_N.parquet`` last) from its embedded batches, as the local engine writes it."""
    import numpy as np

    from laion_hf.clip.embed import PartAccumulator

    batches = group.column("batch").to_numpy()
    schema = pa.schema([("part", pa.int64()), ("count", pa.int64()), ("embedded", pa.int64()),
                        ("failed", pa.int64()), ("status_dict", pa.string()), ("error", pa.string())])  # fmt: skip
    if (batches == -2).any():  # the shard could not be read: no part is written, the driver raises
        err = group.column("result")[int(np.flatnonzero(batches == -2)[0])].as_py().decode()
        return pa.Table.from_pylist([{"part": int(group.column("part")[0].as_py()), "count": 0, "embedded": 0,
                                      "failed": 0, "status_dict": "{}", "error": err}], schema=schema)  # fmt: skip
    order = np.argsort(batches, kind="stable")
    # a decode task retried after its worker died re-emits the same (deterministic) batches:
    # keep one copy of each batch index
    order = [i for j, i in enumerate(order) if j == 0 or batches[i] != batches[order[j - 1]]]
    n = int(group.column("part")[0].as_py())
    np_dtype = np.float16 if spec["dtype"] == "float16" else np.float32
    acc = PartAccumulator(spec["embed_dim"], np_dtype)
    results = group.column("result").to_pylist()
    for i in order:
        if results[i]:
            acc.add(_from_ipc(results[i]))
    stats = acc.write(Path(out_dir), n, paths[n], spec["model"], spec["pretrained"])
    count, embedded, status_dict = stats["count"], stats["embedded"], stats["status_dict"]
    return pa.Table.from_pylist([{"part": n, "count": count, "embedded": embedded, "failed": count - embedded,
                                  "status_dict": json.dumps(status_dict), "error": None}], schema=schema)  # fmt: skip


def embed_shards_ray(
    sources: Sequence[str] | str,
    out_dir: str | os.PathLike,
    *,
    model: Optional[str] = None,
    pretrained: Optional[str] = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: Optional[int] = None,
    heads: Sequence[str] = (),
    dtype: str = "float16",
    num_workers: Optional[int] = None,
    allow_download: bool = False,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    decode_workers: Optional[int] = None,
    num_gpus: Optional[float] = None,
) -> dict[str, Any]:
    """:func:`laion_hf.clip.embed.embed_shards` on Ray Data: the same parts, config and resume.

    Args:
        workers: model actors (default: one per GPU of the cluster, else 1).
        decode_workers: CPU actors reading and decoding shards (default: the cluster's CPUs
            left over by the model actors, at least 1).
        num_gpus: GPUs per model actor (default 1 when the cluster has GPUs and ``device`` is
            not ``"cpu"``, else 0: the model runs on a CPU actor).
        num_workers: decode threads per decode actor; the rest as the local engine.
    """
    from laion_hf.clip.embed import part_done, resolve_inputs
    from laion_hf.clip.heads import load_head
    from laion_hf.clip.model import TINY_MODEL
    from laion_hf.errors import ShardError

    if isinstance(sources, (str, os.PathLike)):
        sources = [str(sources)]
    if dtype not in ("float16", "float32"):
        raise ShardError(f"dtype={dtype!r}: use float16 (clip-retrieval's default) or float32")
    if allow_download:
        raise EngineError("--allow-download is not supported with --engine ray: fetch the weights into the HF cache "
                          "(or a file) every node reads, then run offline")
    inputs = resolve_inputs(list(sources))
    model = model or TINY_MODEL
    ray = init_ray(address)
    _configure(progress)
    gpus = _cluster_count("GPU", default=0)
    if str(device).startswith("cuda") and not gpus:
        raise EngineError(f"device={device!r} but the Ray cluster has no GPU (resources: {ray.cluster_resources()}); "
                          "add GPU nodes or use --device auto/cpu")
    if num_gpus is None:
        num_gpus = 1.0 if gpus and device != "cpu" else 0.0
    model_device = "cuda" if num_gpus else "cpu"
    if device not in ("auto", "cpu", "cuda") and num_gpus:
        model_device = "cuda"  # an actor sees only its own GPU(s): cuda:N means nothing there
    n_model = int(workers or (max(1, int(gpus // num_gpus)) if num_gpus else 1))
    cpus = _cluster_count("CPU")
    n_decode = int(decode_workers or max(1, cpus - (0 if num_gpus else n_model)))
    bs = int(batch_size or (256 if model_device == "cuda" else 32))
    # the driver builds the model once (CPU) for the run config, like the local engine
    probe = _build_embedder({"model": model, "pretrained": pretrained, "precision": precision, "batch_size": bs,
                             "cache_dir": cache_dir}, "cpu", "fp32")  # fmt: skip
    head_names = [load_head(h, probe.embed_dim, probe.model_name).name for h in heads]
    config = {"model": probe.model_name, "pretrained": probe.pretrained, "embed_dim": probe.embed_dim,
              "dtype": dtype, "heads": head_names, "inputs": inputs}  # fmt: skip
    out = Path(out_dir)
    from laion_hf.clip.embed import prepare_output

    prepare_output(out, config)
    todo = [(n, p) for n, p in enumerate(inputs) if not part_done(out, n)]
    spec = {"model": model, "pretrained": pretrained, "precision": precision, "batch_size": bs,
            "cache_dir": cache_dir, "heads": list(heads), "device": model_device, "dtype": dtype,
            "embed_dim": probe.embed_dim, "decode_threads": num_workers}  # fmt: skip
    del probe
    totals: dict[str, Any] = {"parts": len(inputs), "parts_skipped": len(inputs) - len(todo), "count": 0,
                              "embedded": 0, "failed": 0, "status_dict": {}}  # fmt: skip
    t0 = time.perf_counter()
    if todo:
        ds = (
            _items([{"part": n, "path": p} for n, p in todo])
            .map_batches(_PartDecoder, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs={"spec": spec},
                         num_cpus=1, **_actor_pool(min(n_decode, len(todo))))
            .map_batches(_BatchEmbedder, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs={"spec": spec},
                         num_gpus=num_gpus, num_cpus=0 if num_gpus else 1, **_actor_pool(n_model))
            .groupby("part", num_partitions=max(1, min(len(todo), cpus)))
            .map_groups(_write_embed_part, batch_format="pyarrow",
                        fn_kwargs={"out_dir": str(out.resolve()), "paths": inputs, "spec": spec}, num_cpus=1)
        )  # fmt: skip
        rows = _collect(ds)
        _raise_errors(rows, "embed on Ray")  # e.g. a ShardError naming an unreadable shard
        for r in rows:
            totals["count"] += r["count"]
            totals["embedded"] += r["embedded"]
            totals["failed"] += r["failed"]
            for s, c in json.loads(r["status_dict"]).items():
                totals["status_dict"][s] = totals["status_dict"].get(s, 0) + c
        not_done = [n for n, _ in todo if not part_done(out, n)]
        if not_done:
            raise ShardError(f"embed on Ray: parts {not_done[:10]} not written (rerun the same command to resume)")
    secs = time.perf_counter() - t0
    totals["seconds"] = secs
    totals["images_per_second"] = totals["count"] / secs if secs > 0 else 0.0
    totals["engine"] = "ray"
    return totals


# ---------------------------------------------------------------------------- CLI glue

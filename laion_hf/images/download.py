"""``laion-hf download``: img2dataset-compatible image shards from LAION metadata.

Output per shard (``{shard}`` = 5 digits), the layout img2dataset users know:

* ``--format webdataset`` (default): ``{shard}.tar`` holding ``{key}.jpg``, ``{key}.txt`` (the
  caption) and ``{key}.json`` (the row's metadata) for each success;
* ``--format parquet``: the images embedded in ``{shard}.parquet`` (an ``image`` column that
  ``datasets`` reads as ``Image()``), one row per input row;
* always ``{shard}.parquet`` with one row per input row, failures included (input columns +
  ``key, status, error_message, width, height, original_width, original_height, sha256``) and
  ``{shard}_stats.json`` (``count, successes, failed_to_download, failed_to_resize, duration,
  start_time, end_time, status_dict``).

Keys are the shard id then the row's index in the shard (``000010005``). A shard is done
when its stats file exists; files are written under temporary names and renamed, the stats
file last, so a killed run leaves no half shard that looks finished: rerunning redoes it.
``retry_failed=PREVIOUS_OUT`` downloads again only the rows of a previous output whose
status is not ``success``, keeping their keys. Every fetch is bounded by its timeouts, so
the run ends; a crashed worker process is reported, never waited for.
"""

from __future__ import annotations

import asyncio
import glob
import io
import json
import math
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from laion_hf._util.atomic import atomic_write_json
from laion_hf._util.workers import exit_with_parent, failures_of, map_orders  # noqa: F401 - exit_with_parent: old home
from laion_hf.errors import FetchError, ShardError
from laion_hf.images import status as st
from laion_hf.images.cache import ImageCache
from laion_hf.images.fetch import FetchConfig, ImageFetcher, make_configs
from laion_hf.images.resize import ImageResult, ResizeConfig
from laion_hf.sources import is_url, memory_tables, open_parquet

RESULT_COLUMNS = ("key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256")
_RESULT_TYPES = (pa.string(), pa.string(), pa.string(), pa.int32(), pa.int32(), pa.int32(), pa.int32(), pa.string())
_URL_NAMES = ("url", "URL", "Url", "image_url")
_CAPTION_NAMES = ("caption", "TEXT", "text", "Caption")
MANIFEST = "_laion_hf_download.json"
INPUT_DIR = "_laion_hf_inputs"


@dataclass
class DownloadOrder:
    """The work order of one shard (picklable: it travels to worker processes / Ray tasks)."""

    shard_id: int
    input_path: str
    out_dir: str
    output_format: str
    url_column: str
    caption_column: Optional[str]
    hash_column: Optional[str]
    hash_type: str
    fetch: FetchConfig
    resize: ResizeConfig
    cache_dir: Optional[str]
    cache_max_bytes: int
    key_digits: tuple[int, int]
    image_schema_metadata: Optional[dict]

    def describe(self) -> str:
        return f"shard {self.shard_id:05d}"


_Job = DownloadOrder  # the old private name


# ---------------------------------------------------------------------- input
def _read_source(source: Any, batch_rows: int) -> Iterator[pa.Table]:
    """Arrow tables of ``source``: a table, a datasets dataset, or metadata files."""
    tables = memory_tables(source, batch_rows)
    if tables is not None:
        yield from tables
        return
    paths = source_files(source)
    for path in paths:
        low = path.lower()
        if low.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
            import pyarrow.csv as pcsv

            delim = "\t" if ".tsv" in low else ","
            reader = pcsv.open_csv(
                path,
                parse_options=pcsv.ParseOptions(delimiter=delim),
                read_options=pcsv.ReadOptions(block_size=1 << 24),
            )
            for b in reader:
                yield pa.Table.from_batches([b])
        elif low.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                urls = [line.strip() for line in f if line.strip()]
            yield pa.table({"url": pa.array(urls, pa.string())})
        else:
            try:
                pf = open_parquet(path)
            except Exception as e:
                raise FetchError(f"cannot read {path!r} as parquet: {e}") from e
            for b in pf.iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([b])


def source_files(source: Any) -> list[str]:
    """The local metadata files of ``source`` (file, folder, glob or a list of them)."""
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in source_files(s)]
    src = os.fspath(source)
    if os.path.isdir(src):
        files = sorted(
            p
            for ext in ("parquet", "csv", "tsv", "txt")
            for p in glob.glob(os.path.join(src, "**", f"*.{ext}"), recursive=True)
        )
        files = [p for p in files if "_laion_hf_inputs" not in p]
    elif any(ch in src for ch in "*?["):
        files = sorted(glob.glob(src, recursive=True))
    else:
        files = [src] if os.path.exists(src) else []
    if not files:
        raise FetchError(f"no metadata file found at {src!r} (give a parquet/csv/tsv/txt file, folder or glob)")
    return files


def metadata_stream(source: Any) -> Any:
    """``source`` as is, or, for URLs (``hf://``, ``https://``, ``s3://``, ...), the
    :func:`laion_hf.load_laion` stream of that parquet metadata (canonical schema): files that
    are not on this machine are read by range requests, never copied whole."""
    items = source if isinstance(source, (list, tuple)) else [source]
    if not items or not all(isinstance(s, (str, os.PathLike)) for s in items):
        return source
    remote = [is_url(os.fspath(s)) for s in items]
    if not any(remote):
        return source
    if not all(remote):
        raise FetchError(f"give either local metadata files or URLs, not both: {[os.fspath(s) for s in items]}")
    from laion_hf.builder import make_builder

    return make_builder([os.fspath(s) for s in items]).as_streaming_dataset(split="train")


def _pick(
    columns: Sequence[str], wanted: Optional[str], names: Sequence[str], what: str, required: bool
) -> Optional[str]:
    if wanted:
        if wanted not in columns:
            raise FetchError(f"{what} column {wanted!r} not found; columns are {list(columns)}")
        return wanted
    for n in names:
        if n in columns:
            return n
    if required:
        raise FetchError(f"no {what} column found among {list(columns)}; pass --{what}-col / {what}_column=")
    return None


def _retry_source(previous_out: Union[str, os.PathLike]) -> Iterator[pa.Table]:
    """The failed rows of a previous output folder (key kept, result columns dropped)."""
    files = sorted(glob.glob(os.path.join(os.fspath(previous_out), "*.parquet")))
    if not files:
        raise FetchError(f"--retry-failed: no shard parquet in {os.fspath(previous_out)!r}")
    for f in files:
        t = pq.read_table(f)
        if "status" not in t.column_names or "key" not in t.column_names:
            raise FetchError(f"--retry-failed: {f!r} has no key/status columns: not a download output")
        t = t.filter(pc.not_equal(t.column("status"), st.SUCCESS))
        drop = [c for c in RESULT_COLUMNS[1:] + ("image", "exif", "error") if c in t.column_names]
        if t.num_rows:
            yield t.drop_columns(drop)


# ---------------------------------------------------------------------- shard worker
class _TarSink:
    def __init__(self, path: str) -> None:
        self.tmp = path + f".tmp-{os.getpid()}"
        self.path = path
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)
        self.mtime = int(time.time())

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o444
        info.uname = info.gname = "laion-hf"
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.tar.close()
        finally:
            _unlink(self.tmp)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _json_safe(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _result_arrays(keys: list[str], results: Sequence[ImageResult]) -> list[pa.Array]:
    from laion_hf.images.stream import result_columns

    return [pa.array(keys, pa.string()), *result_columns(results)]


def _with_results(
    table: pa.Table, keys: list[str], results: Sequence[ImageResult], image: bool, ext: str = "jpg"
) -> pa.Table:
    inputs = table.drop_columns([c for c in RESULT_COLUMNS + ("image",) if c in table.column_names])
    arrays = _result_arrays(keys, results)
    names = list(RESULT_COLUMNS)
    if image:
        from laion_hf.images.stream import IMAGE_STRUCT

        ok = [r.status == st.SUCCESS for r in results]
        arrays.append(
            pa.StructArray.from_arrays(
                [
                    pa.array([r.data if o else None for r, o in zip(results, ok)], pa.binary()),
                    pa.array([f"{k}.{ext}" if o else None for k, o in zip(keys, ok)], pa.string()),
                ],
                fields=list(IMAGE_STRUCT),
                mask=pa.array([not o for o in ok], pa.bool_()),
            )
        )
        names.append("image")
    for n, a in zip(names, arrays):
        inputs = inputs.append_column(n, a)
    return inputs


class _ShardRun:
    """One shard's download: fetch every row, stream successes into the tar (or rows into the
    parquet), then write the shard's parquet and stats; temporary files until :meth:`finish`."""

    def __init__(self, job: DownloadOrder, progress: Callable[[int, int], None]) -> None:
        self.job, self.progress, self.start = job, progress, time.time()
        self.table = ipc.open_file(job.input_path).read_all()
        self.n = n = self.table.num_rows
        self.keys = self._keys()
        self.urls = self.table.column(job.url_column).to_pylist()
        self.hashes = self.table.column(job.hash_column).to_pylist() if job.hash_column else [None] * n
        self.captions = self.table.column(job.caption_column).to_pylist() if job.caption_column else None
        self.ext = job.resize.encode_format
        self.base = os.path.join(job.out_dir, f"{job.shard_id:05d}")
        self.results: list[Optional[ImageResult]] = [None] * n
        self.tar = _TarSink(self.base + ".tar") if job.output_format == "webdataset" else None
        self.pq_tmp = self.base + f".parquet.tmp-{os.getpid()}"
        self.writer: Optional[pq.ParquetWriter] = None
        self.pending_rows: list[int] = []
        self.cols = {c: self.table.column(c) for c in self.table.column_names}
        self.done = self.ok = 0
        self.last_report = [0, 0, time.monotonic()]

    def _keys(self) -> list[str]:
        if "key" in self.table.column_names:  # --retry-failed keeps the original keys
            return [str(k) for k in self.table.column("key").to_pylist()]
        sd, idd = self.job.key_digits
        return [f"{self.job.shard_id:0{sd}d}{i:0{idd}d}" for i in range(self.n)]

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_report[2] > 0.25:
            self.progress(self.done - self.last_report[0], self.ok - self.last_report[1])
            self.last_report[:] = [self.done, self.ok, now]

    def flush_parquet(self, force: bool = False) -> None:
        rows = self.pending_rows
        if not rows or (len(rows) < 256 and not force):
            return
        sub = _with_results(
            self.table.take(pa.array(rows, pa.int64())),
            [self.keys[i] for i in rows],
            [self.results[i] for i in rows],
            image=True,
            ext=self.ext,
        )  # type: ignore[misc]
        for i in rows:  # the bytes are on disk now
            if self.results[i] is not None:
                self.results[i].data = None  # type: ignore[union-attr]
        if self.writer is None:
            schema = sub.schema
            if self.job.image_schema_metadata is not None:
                schema = schema.with_metadata(self.job.image_schema_metadata)
            self.writer = pq.ParquetWriter(self.pq_tmp, schema)
        self.writer.write_table(sub.cast(self.writer.schema) if sub.schema != self.writer.schema else sub)
        self.pending_rows = []

    def _add_to_tar(self, i: int, r: ImageResult) -> None:
        key = self.keys[i]
        meta = {c: _json_safe(self.cols[c][i].as_py()) for c in self.cols if c not in RESULT_COLUMNS}
        meta.update(
            key=key,
            status=r.status,
            error_message=None,
            width=r.width,
            height=r.height,
            original_width=r.original_width,
            original_height=r.original_height,
            sha256=r.sha256,
        )
        self.tar.add(f"{key}.{self.ext}", r.data or b"")  # type: ignore[union-attr]
        if self.captions is not None:
            self.tar.add(f"{key}.txt", (self.captions[i] or "").encode("utf-8"))  # type: ignore[union-attr]
        self.tar.add(f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))  # type: ignore[union-attr]
        r.data = None

    def sink(self, i: int, r: ImageResult) -> None:
        """Record row ``i``'s result: into the tar now, or into the parquet in batches."""
        self.results[i] = r
        self.done += 1
        if r.status == st.SUCCESS:
            self.ok += 1
            if self.tar is not None:
                self._add_to_tar(i, r)
        if self.tar is None:
            self.pending_rows.append(i)
            self.flush_parquet()
        self.report()

    async def fetch_all(self, cache: Optional[ImageCache]) -> None:
        """Fetch every row, ``concurrency`` at a time."""
        async with ImageFetcher(self.job.fetch, self.job.resize, cache) as fetcher:
            it = iter(range(self.n))

            async def worker() -> None:
                for i in it:
                    try:
                        r = await fetcher.process(self.urls[i], self.hashes[i], self.job.hash_type)
                    except Exception as e:  # pragma: no cover - process never raises; belt and braces
                        r = ImageResult(st.INTERNAL_ERROR, f"{type(e).__name__}: {e}")
                    self.sink(i, r)

            await asyncio.gather(*(worker() for _ in range(min(self.n, self.job.fetch.concurrency) or 1)))
        self.report(force=True)

    def _write_parquet(self) -> None:
        if self.tar is not None:
            self.tar.close()
            meta = _with_results(self.table, self.keys, self.results, image=False)  # type: ignore[arg-type]
            pq.write_table(meta, self.pq_tmp)
            return
        self.flush_parquet(force=True)
        if self.writer is None:  # empty shard
            pq.write_table(_with_results(self.table, self.keys, [], image=True), self.pq_tmp)
        else:
            self.writer.close()

    def finish(self) -> dict:
        """Write the shard's parquet, check the counts, then rename the files into place with
        the stats file last (a shard is done when its stats file exists)."""
        self._write_parquet()
        stats = st.summarize(pa.array([r.status for r in self.results if r is not None], pa.string()))
        if stats["count"] != self.n:
            raise ShardError(f"shard {self.job.shard_id}: {stats['count']} results for {self.n} rows")
        end = time.time()
        stats.update(duration=end - self.start, start_time=self.start, end_time=end, shard=f"{self.job.shard_id:05d}")
        if self.tar is not None:
            self.tar.commit()
        os.replace(self.pq_tmp, self.base + ".parquet")
        atomic_write_json(self.base + "_stats.json", stats, indent=2)
        return stats

    def abort(self) -> None:
        """Remove the temporary files of a failed or interrupted shard."""
        if self.tar is not None:
            self.tar.abort()
        if self.writer is not None:
            self.writer.close()
        _unlink(self.pq_tmp)


async def _run_shard_async(job: DownloadOrder, progress: Callable[[int, int], None]) -> dict:
    run = _ShardRun(job, progress)
    try:
        cache = ImageCache(job.cache_dir, job.cache_max_bytes) if job.cache_dir else None
        await run.fetch_all(cache)
        return run.finish()
    except BaseException:
        run.abort()
        raise


def run_shard(job: DownloadOrder, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Download one shard (a :meth:`DownloadRun.job`) on a new event loop; ``progress(rows,
    successes)`` is called as rows finish. Returns the shard's stats (also in its stats file)."""
    return asyncio.run(_run_shard_async(job, progress or (lambda d, s: None)))


# ---------------------------------------------------------------------- driver
def _parquet_image_metadata(schema: pa.Schema) -> dict:
    """Schema metadata that makes ``datasets`` read the ``image`` column as ``Image()``."""
    import datasets

    feats = datasets.Features.from_arrow_schema(schema)
    feats["image"] = datasets.Image()
    return dict(feats.arrow_schema.metadata or {})


def download(
    source: Any,
    out_dir: Union[str, os.PathLike],
    *,
    output_format: str = "webdataset",
    processes: int = 1,
    shard_size: int = 10_000,
    url_column: Optional[str] = None,
    caption_column: Optional[str] = None,
    hash_column: Optional[str] = None,
    hash_type: str = "sha256",
    retry_failed: Union[str, os.PathLike, None] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    cache_max_bytes: int = 20 * 2**30,
    progress: bool = True,
    fetch: Optional[FetchConfig] = None,
    resize: Optional[ResizeConfig] = None,
    **options: Any,
) -> dict:
    """Download the images of ``source`` into img2dataset-compatible shards in ``out_dir``.

    Args:
        source: metadata parquet/csv/tsv/txt file, folder or glob (or a list), a parquet
            URL or glob (``hf://datasets/...``, ``https://...``, ``s3://...``; read in the
            canonical schema), a ``pyarrow.Table``, or a ``datasets`` Dataset/IterableDataset.
        out_dir: the output folder (resumed when it holds a previous run of the same input).
        output_format: ``webdataset`` (tar shards) or ``parquet`` (images embedded).
        processes: worker processes; each runs ``concurrency`` fetches at once.
        shard_size: rows per shard.
        url_column / caption_column: default ``url``/``URL`` and ``caption``/``TEXT``.
        retry_failed: a previous output folder: only its failed rows are downloaded again.
        cache_dir: an image cache shared by the processes (a rerun makes no request for
            cached rows).
        **options: any FetchConfig/ResizeConfig field, e.g. ``image_size=256,
            resize_mode="center_crop", concurrency=64, timeout=10, allow_private_networks=True``.

    Returns:
        Run stats: ``count, successes, failed_to_download, failed_to_resize, status_dict``
        over all shards in ``out_dir``, plus ``shards, shards_done_now, duration,
        samples_per_s`` for this run.
    """
    if processes < 1:
        raise FetchError(f"processes must be >= 1, got {processes}")
    run = plan(source, out_dir, output_format=output_format, shard_size=shard_size, url_column=url_column,
               caption_column=caption_column, hash_column=hash_column, hash_type=hash_type,
               retry_failed=retry_failed, cache_dir=cache_dir, cache_max_bytes=cache_max_bytes, fetch=fetch,
               resize=resize, **options)  # fmt: skip
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.todo_rows, unit="img", desc="download", dynamic_ncols=True, file=sys.stderr)
    totals = [0, 0]

    def on_progress(d: int, s: int) -> None:
        totals[0] += d
        totals[1] += s
        if bar is not None:
            bar.update(d)
            bar.set_postfix_str(f"success {totals[1] / max(1, totals[0]):.1%}", refresh=False)

    try:
        results = map_orders(run_one, run.orders, workers=processes, mode=LOCAL_MODE, progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    stats = finish(run, results)
    from laion_hf.provenance import write_download_provenance  # the card's record: source's + fetch + robots

    write_download_provenance(out_dir, stats, run.fetch, source=retry_failed if retry_failed is not None else source)
    return stats


@dataclass
class DownloadRun:
    """A planned download (:func:`plan`): the output folder, its manifest (the input split
    into shards), the shards still to do and their :class:`DownloadOrder` s. Every engine runs
    the orders with :func:`run_one` and calls :func:`finish`."""

    out: Path
    manifest: dict
    pending: list[int]
    started: float
    orders: list[DownloadOrder] = field(default_factory=list)
    fetch: Optional[FetchConfig] = None

    def __enter__(self) -> "DownloadRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Nothing to clean up: every shard is written under temporary names, stats last."""

    @property
    def todo_rows(self) -> int:
        return sum(self.manifest["rows"][i] for i in self.pending)

    def job(
        self,
        shard: int,
        hash_type: str,
        fetch: FetchConfig,
        resize: ResizeConfig,
        cache_dir: Union[str, os.PathLike, None],
        cache_max_bytes: int,
    ) -> DownloadOrder:
        """The work order of one shard (picklable: it travels to worker processes/actors)."""
        m = self.manifest
        key_digits = (max(5, len(str(max(0, m["shards"] - 1)))), len(str(max(1, m["shard_size"] - 1))))
        return DownloadOrder(shard, str((self.out / INPUT_DIR / f"{shard:05d}.arrow").resolve()),
                             str(self.out.resolve()), m["format"], m["url_column"], m["caption_column"],
                             m["hash_column"], hash_type, fetch, resize,
                             os.fspath(cache_dir) if cache_dir is not None else None, cache_max_bytes, key_digits,
                             m.get("image_metadata"))  # fmt: skip

    def totals(self, **extra: Any) -> dict:
        """Stats over every shard of the folder plus this run's (``shards, shards_done_now,
        duration, samples_per_s, out_dir`` and ``extra``), also written to
        ``_laion_hf_stats.json``."""
        for stale in glob.glob(str(self.out / "*.tmp-*")):  # a killed worker's; its shard was redone
            _unlink(stale)
        stats = collect_stats(self.out)
        elapsed = time.time() - self.started
        stats.update(
            shards=self.manifest["shards"],
            shards_done_now=len(self.pending),
            duration=elapsed,
            samples_per_s=(self.todo_rows / elapsed if elapsed > 0 else 0.0),
            out_dir=str(self.out),
            **extra,
        )
        atomic_write_json(self.out / "_laion_hf_stats.json", stats, indent=2)
        return stats


#: the stage's name (engines, error messages) and how the local engine runs its orders
NAME = "download"
LOCAL_MODE = "processes"  # one event loop per process; processes die with their parent


def plan(
    source: Any,
    out_dir: Union[str, os.PathLike],
    *,
    output_format: str = "webdataset",
    shard_size: int = 10_000,
    url_column: Optional[str] = None,
    caption_column: Optional[str] = None,
    hash_column: Optional[str] = None,
    hash_type: str = "sha256",
    retry_failed: Union[str, os.PathLike, None] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    cache_max_bytes: int = 20 * 2**30,
    fetch: Optional[FetchConfig] = None,
    resize: Optional[ResizeConfig] = None,
    map_split: Optional[Callable[..., Iterable[Any]]] = None,
    **options: Any,
) -> DownloadRun:
    """Plan a download (see :func:`download` for the arguments): split the input into shards
    (or resume a previous split) and return the run with one :class:`DownloadOrder` per shard
    still to do. ``map_split(fn, orders)`` runs the split of local parquet files, one
    :class:`SplitOrder` per file (an engine's map; default: the local split, in one pass)."""
    fetch_cfg, resize_cfg = make_configs(fetch, resize, **options)
    split = None
    if map_split is not None:

        def split(src: Any, out: Path, inputs: Path) -> Optional[dict]:
            return split_files(
                src, out, inputs, shard_size, url_column, caption_column, hash_column, output_format, map_split
            )

    run = plan_download(source, out_dir, output_format=output_format, shard_size=shard_size, url_column=url_column,
                        caption_column=caption_column, hash_column=hash_column, retry_failed=retry_failed,
                        split=split)  # fmt: skip
    run.orders = [run.job(i, hash_type, fetch_cfg, resize_cfg, cache_dir, cache_max_bytes) for i in run.pending]
    run.fetch = fetch_cfg
    return run


def run_one(order: DownloadOrder, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Download one shard; its stats. A shard already finished (its stats file exists: an order
    retried after its worker died between the last rename and its reply) is not redone."""
    stats_path = os.path.join(order.out_dir, f"{order.shard_id:05d}_stats.json")
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            return json.load(f)
    return run_shard(order, progress)


def finish(run: DownloadRun, results: Sequence[Any], **extra: Any) -> dict:
    """Report failed shards (a :class:`ShardError` naming each: rerunning redoes them), else
    the run's stats over every shard of the folder (:meth:`DownloadRun.totals`, with ``extra``)."""
    failed = failures_of(results)
    if failed:
        raise ShardError(
            "; ".join(f"shard {f.order.shard_id:05d} failed: {type(f.error).__name__}: {f.error}" for f in failed)
            + " (rerun the same command to redo the unfinished shards)"
        )
    missing = [o.shard_id for o in run.orders if not (run.out / f"{o.shard_id:05d}_stats.json").exists()]
    if missing:
        raise ShardError(f"download: shards {missing[:10]} not finished (rerun the same command)")
    return run.totals(**extra)


def plan_download(
    source: Any,
    out_dir: Union[str, os.PathLike],
    *,
    output_format: str = "webdataset",
    shard_size: int = 10_000,
    url_column: Optional[str] = None,
    caption_column: Optional[str] = None,
    hash_column: Optional[str] = None,
    retry_failed: Union[str, os.PathLike, None] = None,
    split: Optional[Callable[[Any, Path, Path], Optional[dict]]] = None,
) -> DownloadRun:
    """Check the settings, prepare ``out_dir`` (removing a killed run's temporary files) and
    split the input into shards, or resume the split of a previous run with the same settings.

    ``split(source, out, inputs)`` may split the input another way (the Ray engine: one task
    per metadata file); it returns the manifest, or None to use the local split.
    """
    if output_format not in ("webdataset", "parquet"):
        raise FetchError(f"output_format must be 'webdataset' or 'parquet', got {output_format!r}")
    if shard_size < 1:
        raise FetchError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    if retry_failed is not None and out.resolve() == Path(retry_failed).resolve():
        raise FetchError(f"--retry-failed {os.fspath(retry_failed)!r} needs a new --out folder, not the same one")
    out.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(str(out / "*.tmp-*")):  # left by a killed run: never a finished shard
        _unlink(stale)
    started = time.time()
    manifest_path, inputs = out / MANIFEST, out / INPUT_DIR
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is not None and (manifest.get("shard_size") != shard_size or manifest.get("format") != output_format):
        raise FetchError(
            f"{str(out)!r} holds a run with shard_size={manifest.get('shard_size')} and "
            f"format={manifest.get('format')}; resume with the same settings or use a new --out"
        )
    if manifest is None or not all(
        (inputs / f"{i:05d}.arrow").exists() or (out / f"{i:05d}_stats.json").exists()
        for i in range(manifest["shards"])
    ):
        manifest = None
        if retry_failed is None:
            source = metadata_stream(source)
            if split is not None:
                manifest = split(source, out, inputs)
        if manifest is None:
            manifest = _split_input(
                retry_failed if retry_failed is not None else source,
                retry_failed is not None,
                out,
                inputs,
                shard_size,
                url_column,
                caption_column,
                hash_column,
                output_format,
            )
    pending = [i for i in range(manifest["shards"]) if not (out / f"{i:05d}_stats.json").exists()]
    return DownloadRun(out, manifest, pending, started)


def conform_input(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast an input table to the first input file's schema (a :class:`FetchError` naming both
    schemas when the files disagree)."""
    if table.schema == schema:
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, ValueError, TypeError) as e:
        raise FetchError(f"input files disagree on their columns ({table.schema} vs {schema}): {e}") from e


def _split_input(
    source: Any,
    is_retry: bool,
    out: Path,
    inputs: Path,
    shard_size: int,
    url_column: Optional[str],
    caption_column: Optional[str],
    hash_column: Optional[str],
    output_format: str,
) -> dict:
    """Write the input rows as Arrow IPC shards of ``shard_size`` rows (memory stays flat)."""
    inputs.mkdir(exist_ok=True)
    tables = _retry_source(source) if is_retry else _read_source(source, min(shard_size, 65_536))
    rows: list[int] = []
    buf: list[pa.Table] = []
    buffered = 0
    schema: Optional[pa.Schema] = None
    cols: dict = {}

    def write(t: pa.Table) -> None:
        path = inputs / f"{len(rows):05d}.arrow"
        tmp = str(path) + ".tmp"
        with ipc.new_file(tmp, t.schema) as w:
            w.write_table(t)
        os.replace(tmp, path)
        rows.append(t.num_rows)

    for t in tables:
        if schema is None:
            schema = t.schema
            cols = input_columns(t.column_names, url_column, caption_column, hash_column)
        else:
            t = conform_input(t, schema)
        buf.append(t)
        buffered += t.num_rows
        while buffered >= shard_size:
            whole = pa.concat_tables(buf).combine_chunks()
            write(whole.slice(0, shard_size))
            rest = whole.slice(shard_size)
            buf, buffered = ([rest] if rest.num_rows else []), rest.num_rows
    if buffered:
        write(pa.concat_tables(buf).combine_chunks())
    if schema is None:
        raise FetchError(f"no rows to download in {source!r}" + (" (no failed rows)" if is_retry else ""))
    return write_manifest(out, inputs, rows, cols, shard_size, output_format, os.fspath(source) if is_retry else None)


def input_columns(
    names: Sequence[str], url_column: Optional[str], caption_column: Optional[str], hash_column: Optional[str]
) -> dict[str, Optional[str]]:
    """The input's url (required), caption and hash columns: the given names, else the usual
    ones (``url``/``URL``, ``caption``/``TEXT``...); a missing one is a :class:`FetchError`."""
    return {
        "url": _pick(names, url_column, _URL_NAMES, "url", True),
        "caption": _pick(names, caption_column, _CAPTION_NAMES, "caption", False),
        "hash": _pick(names, hash_column, (), "hash", False) if hash_column else None,
    }


def write_manifest(
    out: Path,
    inputs: Path,
    rows: list[int],
    cols: dict,
    shard_size: int,
    output_format: str,
    retry_of: Optional[str] = None,
) -> dict:
    """Write (atomically) and return the manifest of a split input: shard sizes, input
    columns, and for parquet output the image column's schema metadata."""
    image_metadata = None
    if output_format == "parquet":
        sample = ipc.open_file(str(inputs / "00000.arrow")).read_all().slice(0, 0)
        probe = _with_results(sample, [], [], image=True)
        image_metadata = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in _parquet_image_metadata(probe.schema).items()
        }
    manifest = {
        "shard_size": shard_size,
        "format": output_format,
        "shards": len(rows),
        "rows": rows,
        "url_column": cols["url"],
        "caption_column": cols["caption"],
        "hash_column": cols["hash"],
        "retry_of": retry_of,
        "image_metadata": image_metadata,
    }
    atomic_write_json(out / MANIFEST, manifest, indent=2)
    return manifest


def collect_stats(out_dir: Union[str, os.PathLike]) -> dict:
    """Sum the ``*_stats.json`` of every shard in ``out_dir``."""
    total = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0, "status_dict": {}}
    for f in sorted(glob.glob(os.path.join(os.fspath(out_dir), "[0-9]*_stats.json"))):
        with open(f) as fh:
            s = json.load(fh)
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            total[k] += s[k]
        for k, v in s["status_dict"].items():
            total["status_dict"][k] = total["status_dict"].get(k, 0) + v
    total["status_dict"] = dict(sorted(total["status_dict"].items(), key=lambda kv: (-kv[1], kv[0])))
    return total


# ---------------------------------------------------------------------- split, one order per file
@dataclass(frozen=True)
class SplitOrder:
    """Cut one metadata parquet file (global rows ``[offset, offset + rows)`` of the input) into
    the download's input shards of ``shard_size`` rows, under ``inputs``."""

    index: int
    path: str
    offset: int
    rows: int
    total_rows: int
    shard_size: int
    inputs: str
    schema: bytes  # the first file's Arrow schema, serialized

    def describe(self) -> str:
        return f"split of {self.path}"


def _write_ipc(path: str, table: pa.Table) -> None:
    tmp = path + ".tmp"
    with ipc.new_file(tmp, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, path)


def split_file(order: SplitOrder, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write the shards of one file: shards inside it whole (``{i:05d}.arrow``); a shard that
    straddles a file boundary as a piece per file (``.piece-{i:05d}-{file:05d}.arrow``),
    joined by :func:`split_files` in file order."""
    schema = ipc.read_schema(pa.py_buffer(order.schema))
    size, start = order.shard_size, order.offset
    buf: list[pa.Table] = []
    pos, buffered = start, 0  # global index of the first buffered row; rows buffered

    def flush(upto: int) -> None:
        nonlocal buf, buffered, pos
        whole = pa.concat_tables(buf).combine_chunks()
        part, rest = whole.slice(0, upto - pos), whole.slice(upto - pos)
        shard = pos // size
        whole_shard = pos == shard * size and upto in ((shard + 1) * size, order.total_rows)
        name = f"{shard:05d}.arrow" if whole_shard else f".piece-{shard:05d}-{order.index:05d}.arrow"
        _write_ipc(os.path.join(order.inputs, name), part)
        buf, buffered, pos = ([rest] if rest.num_rows else []), rest.num_rows, upto

    for b in open_parquet(order.path).iter_batches(batch_size=min(size, 65_536)):
        t = conform_input(pa.Table.from_batches([b]), schema)
        buf.append(t)
        buffered += t.num_rows
        while buffered and pos + buffered >= (pos // size + 1) * size:
            flush((pos // size + 1) * size)
    if buffered:
        flush(start + order.rows)
    return {"file": order.index}


def _split_orders(source: Any, inputs: Path, shard_size: int) -> Optional[tuple[list[SplitOrder], pa.Schema]]:
    """One :class:`SplitOrder` per non-empty local parquet file of ``source`` (footers read
    here), or None when ``source`` is something else (a table, a stream, csv/txt...)."""
    if not isinstance(source, (str, os.PathLike, list, tuple)):
        return None
    if isinstance(source, (list, tuple)) and not all(isinstance(x, (str, os.PathLike)) for x in source):
        return None
    files = source_files(source)
    if not all(f.lower().endswith(".parquet") for f in files):
        return None
    metas = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise FetchError(f"cannot read {f!r} as parquet: {e}") from e
        if pf.metadata.num_rows > 0:
            metas.append((f, pf.metadata.num_rows, pf.schema_arrow))
    if not metas:
        raise FetchError(f"no rows to download in {source!r}")
    schema = metas[0][2]
    total, offset, orders = sum(m[1] for m in metas), 0, []
    for i, (f, n, _) in enumerate(metas):
        orders.append(SplitOrder(i, f, offset, n, total, shard_size, str(inputs), schema.serialize().to_pybytes()))
        offset += n
    return orders, schema


def split_files(
    source: Any,
    out: Path,
    inputs: Path,
    shard_size: int,
    url_column: Optional[str],
    caption_column: Optional[str],
    hash_column: Optional[str],
    output_format: str,
    map_split: Callable[..., Iterable[Any]],
) -> Optional[dict]:
    """The input split of local parquet files, one :func:`split_file` order per file run by
    ``map_split(fn, orders)``; the same shards as the one-pass split. Returns the manifest, or
    None when ``source`` is not a list of local parquet files (then the one-pass split runs)."""
    planned = _split_orders(source, inputs, shard_size)
    if planned is None:
        return None
    orders, schema = planned
    cols = input_columns(schema.names, url_column, caption_column, hash_column)
    total = orders[-1].offset + orders[-1].rows
    n_shards = -(-total // shard_size)
    inputs.mkdir(exist_ok=True)
    for old in glob.glob(str(inputs / ".piece-*")):
        os.unlink(old)
    results = list(map_split(split_file, orders))
    failed = failures_of(results)
    if failed:
        raise FetchError(f"download: {failed[0].describe()}")
    for i in range(n_shards):  # shards straddling files: join their pieces in file order
        pieces = sorted(glob.glob(str(inputs / f".piece-{i:05d}-*.arrow")))
        if pieces:
            tables = [ipc.open_file(p).read_all() for p in pieces]
            _write_ipc(str(inputs / f"{i:05d}.arrow"), pa.concat_tables(tables).combine_chunks())
            for p in pieces:
                os.unlink(p)
    missing = [i for i in range(n_shards) if not (inputs / f"{i:05d}.arrow").exists()]
    if missing:
        raise FetchError(f"download: input shards {missing[:10]} were not written")
    rows = [min(shard_size, total - i * shard_size) for i in range(n_shards)]
    return write_manifest(out, inputs, rows, cols, shard_size, output_format)


# ---------------------------------------------------------------------- CLI

"""``with_images``: a lazy image column on a (streaming) dataset.

The fetch of batch N+1 runs in a background event loop while the consumer uses batch N
(``prefetch`` batches ahead). Each process (each DataLoader worker) builds its own event
loop, connection pool and decode threads when it starts iterating; nothing network-related
is pickled. Data stays in Arrow tables; the image column is a ``datasets.Image()`` feature
(``struct<bytes: binary, path: string>``), decoded only when a row is read in Python format.

Columns added (replaced when the input already has them; the metadata's ``width``/``height``
become the fetched image's, the size the host served is ``original_width/height``):

``image`` (Image, null when the row failed), ``status`` (see :mod:`laion_hf.images.status`),
``error`` (message or null), ``width``, ``height``, ``original_width``, ``original_height``
(int32), ``sha256`` (hex of the stored image bytes).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.cache import ImageCache
from laion_hf.images.fetch import FetchConfig, ImageFetcher, make_configs
from laion_hf.images.resize import ImageResult, ResizeConfig
from laion_hf.schema import IMAGE_STRUCT  # re-exported: the image column type

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "status", "error", "width", "height", "original_width", "original_height", "sha256")
IMAGE_SCHEMA = pa.schema(
    [
        ("image", IMAGE_STRUCT),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
    ]
)


def image_features() -> dict:
    """The ``datasets`` features of the columns :func:`with_images` adds."""
    import datasets

    return {
        "image": datasets.Image(),
        "status": datasets.Value("string"),
        "error": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "original_width": datasets.Value("int32"),
        "original_height": datasets.Value("int32"),
        "sha256": datasets.Value("string"),
    }


def results_to_arrays(results: Sequence[ImageResult]) -> list[pa.Array]:
    """The image columns (in :data:`IMAGE_COLUMNS` order) of ``results``."""
    ok = [r.status == st.SUCCESS for r in results]
    data = [r.data if o else None for r, o in zip(results, ok)]
    image = pa.StructArray.from_arrays(
        [pa.array(data, pa.binary()), pa.nulls(len(results), pa.string())],
        fields=list(IMAGE_STRUCT),
        mask=pa.array([not o for o in ok], pa.bool_()),
    )
    return [image, *result_columns(results)]


def result_columns(results: Sequence[Any]) -> list[pa.Array]:
    """``status, error, width, height, original_width, original_height, sha256`` of fetch results."""
    return [
        pa.array([r.status for r in results], pa.string()),
        pa.array([r.error for r in results], pa.string()),
        pa.array([r.width for r in results], pa.int32()),
        pa.array([r.height for r in results], pa.int32()),
        pa.array([r.original_width for r in results], pa.int32()),
        pa.array([r.original_height for r in results], pa.int32()),
        pa.array([r.sha256 for r in results], pa.string()),
    ]


def attach_results(table: pa.Table, results: Sequence[ImageResult]) -> pa.Table:
    """``table`` with the image columns of ``results`` replaced or appended."""
    if len(results) != table.num_rows:
        raise FetchError(f"internal: {len(results)} results for {table.num_rows} rows")
    for name, arr in zip(IMAGE_COLUMNS, results_to_arrays(results)):
        i = table.schema.get_field_index(name)
        field = IMAGE_SCHEMA.field(name)
        table = table.set_column(i, field, arr) if i >= 0 else table.append_column(field, arr)
    return table


@dataclass
class _Settings:
    url_column: str
    hash_column: Optional[str]
    hash_type: str
    batch_size: int
    prefetch: int
    drop_failed: bool
    fetch: FetchConfig
    resize: ResizeConfig
    cache_dir: Optional[str]
    cache_max_bytes: int
    negative_ttl: float


class _Runner:
    """An event loop in a daemon thread holding one ImageFetcher (one per process)."""

    def __init__(self, s: _Settings) -> None:
        self.s = s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="laion-hf-fetch", daemon=True)
        self.thread.start()
        cache = ImageCache(s.cache_dir, s.cache_max_bytes, s.negative_ttl) if s.cache_dir else None
        self.fetcher = ImageFetcher(s.fetch, s.resize, cache)
        asyncio.run_coroutine_threadsafe(self.fetcher.__aenter__(), self.loop).result()
        self.pid = os.getpid()
        atexit.register(self.close)  # an abandoned iterator still closes its connections

    def submit(self, table: pa.Table) -> "Future[list[ImageResult]]":
        s = self.s
        if s.url_column not in table.column_names:
            raise FetchError(
                f"column {s.url_column!r} not found; columns are {table.column_names} (pass url_column=...)"
            )
        urls = table.column(s.url_column).to_pylist()
        hashes = None
        if s.hash_column:
            if s.hash_column not in table.column_names:
                raise FetchError(f"hash column {s.hash_column!r} not found; columns are {table.column_names}")
            hashes = table.column(s.hash_column).to_pylist()
        return asyncio.run_coroutine_threadsafe(self.fetcher.process_many(urls, hashes, s.hash_type), self.loop)

    def close(self) -> None:
        atexit.unregister(self.close)
        if not self.thread.is_alive() or self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.fetcher.__aexit__(None, None, None), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


def _finish(table: pa.Table, results: list[ImageResult], s: _Settings, counts: Optional[dict]) -> pa.Table:
    out = attach_results(table, results)
    if counts is not None:
        for k, v in st.summarize(out.column("status"))["status_dict"].items():
            counts[k] = counts.get(k, 0) + v
    if s.drop_failed:
        n = out.num_rows
        out = out.filter(pc.equal(out.column("status"), st.SUCCESS))
        if n != out.num_rows:
            logger.info("with_images dropped %d failed rows of %d", n - out.num_rows, n)
    return out


def _pipeline(tables: Iterator[pa.Table], s: _Settings, counts: Optional[dict] = None) -> Iterator[pa.Table]:
    """Fetch ``tables`` with ``s.prefetch`` batches in flight ahead of the consumer."""
    runner = _Runner(s)
    pending: deque = deque()
    try:
        for t in tables:
            if t.num_rows == 0:
                continue
            pending.append((t, runner.submit(t)))
            while len(pending) > s.prefetch:
                t0, fut = pending.popleft()
                yield _finish(t0, fut.result(), s, counts)
        while pending:
            t0, fut = pending.popleft()
            yield _finish(t0, fut.result(), s, counts)
    finally:
        for _, fut in pending:
            fut.cancel()
        runner.close()


def _generate_tables(shard_ids: list, source: Any, num_source_shards: int, settings: _Settings):
    """ArrowExamplesIterable generator: one source shard after another, fetched ahead."""
    from datasets.builder import Key

    def tables() -> Iterator[pa.Table]:
        for sid in shard_ids:
            part = (
                source.shard(num_shards=num_source_shards, index=sid, contiguous=True)
                if num_source_shards > 1
                else source
            )
            yield from part.with_format("arrow").iter(batch_size=settings.batch_size)

    for i, table in enumerate(_pipeline(tables(), settings, _COUNTS)):
        yield Key(shard_ids[0] if shard_ids else 0, i), table


#: Status counts of every batch fetched by with_images in this process (including dropped rows).
_COUNTS: dict = {}


def fetch_counts() -> dict:
    """Status counts of what :func:`with_images` fetched in this process so far (a copy)."""
    return dict(_COUNTS)


def _output_features(features: Any) -> Any:
    import datasets

    out = datasets.Features({k: v for k, v in features.items()})
    for k, v in image_features().items():
        out[k] = v
    return out


def with_images(
    ds: Any,
    url_column: str = "url",
    *,
    batch_size: int = 64,
    prefetch: int = 1,
    drop_failed: bool = False,
    hash_column: Optional[str] = None,
    hash_type: str = "sha256",
    cache_dir: Union[str, os.PathLike, None] = None,
    cache_max_bytes: int = 20 * 2**30,
    negative_ttl: float = 7 * 24 * 3600,
    fetch: Optional[FetchConfig] = None,
    resize: Optional[ResizeConfig] = None,
    **options: Any,
) -> Any:
    """Add the fetched image and its status columns to ``ds``.

    Args:
        ds: a ``datasets.IterableDataset`` (lazy: images are fetched while you iterate,
            ``prefetch`` batches ahead, in each DataLoader worker separately) or a
            ``datasets.Dataset`` (fetched now, with ``Dataset.map``).
        url_column: the column holding the URLs.
        batch_size: rows fetched together (the unit of prefetching).
        prefetch: batches fetched ahead of the one being consumed.
        drop_failed: drop rows whose status is not ``success`` (they are still counted,
            see :func:`fetch_counts`); by default they are kept with their status.
        hash_column / hash_type: verify the downloaded bytes against this column (``hash_mismatch``).
        cache_dir: an on-disk cache (see :class:`~laion_hf.images.cache.ImageCache`); a second
            pass over the same rows makes no network request for cached rows.
        fetch / resize: base configs; ``**options`` override any of their fields, e.g.
            ``image_size=256, resize_mode="center_crop", concurrency=128,
            allow_private_networks=True``.

    Returns:
        A dataset of the same kind with the columns of :data:`IMAGE_COLUMNS`.
    """
    import datasets

    fetch_cfg, resize_cfg = make_configs(fetch, resize, **options)
    if batch_size < 1 or prefetch < 0:
        raise FetchError(f"batch_size must be >= 1 and prefetch >= 0, got {batch_size} and {prefetch}")
    settings = _Settings(
        url_column,
        hash_column,
        hash_type,
        batch_size,
        prefetch,
        drop_failed,
        fetch_cfg,
        resize_cfg,
        os.fspath(cache_dir) if cache_dir is not None else None,
        cache_max_bytes,
        negative_ttl,
    )
    if isinstance(ds, datasets.IterableDataset):
        from datasets.iterable_dataset import ArrowExamplesIterable

        features = ds.features
        if features is None:  # peek at one batch's schema
            first = next(iter(ds.with_format("arrow").iter(batch_size=1)), None)
            if first is None:
                raise FetchError("with_images got an empty dataset with unknown features")
            features = datasets.Features.from_arrow_schema(first.schema)
        if url_column not in features:
            raise FetchError(f"column {url_column!r} not found; columns are {list(features)} (pass url_column=...)")
        n = max(1, ds.num_shards)
        ex = ArrowExamplesIterable(
            _generate_tables,
            {"shard_ids": list(range(n)), "source": ds, "num_source_shards": n, "settings": settings},
        )
        info = datasets.DatasetInfo(features=_output_features(features))
        return datasets.IterableDataset(ex, info=info, split=ds.split)
    if isinstance(ds, datasets.Dataset):
        if url_column not in ds.column_names:
            raise FetchError(f"column {url_column!r} not found; columns are {ds.column_names} (pass url_column=...)")
        state: dict = {}

        def fn(table: pa.Table) -> pa.Table:
            runner = state.get(os.getpid())
            if runner is None:
                runner = state[os.getpid()] = _Runner(settings)
            return _finish(table, runner.submit(table).result(), settings, _COUNTS)

        try:
            out = ds.with_format("arrow").map(
                fn, batched=True, batch_size=batch_size, features=_output_features(ds.features), desc="fetching images"
            )
        finally:
            for r in state.values():
                r.close()
        return out.with_format(ds.format["type"], columns=None)
    raise FetchError(
        f"with_images takes a datasets.IterableDataset or Dataset, got {type(ds).__name__} "
        "(use fetch_table for a pyarrow.Table)"
    )


def fetch_table(table: pa.Table, url_column: str = "url", *, batch_size: int = 256, **kwargs: Any) -> pa.Table:
    """Fetch the images of a ``pyarrow.Table`` now; same options and columns as :func:`with_images`."""
    drop_failed = kwargs.pop("drop_failed", False)
    hash_column = kwargs.pop("hash_column", None)
    hash_type = kwargs.pop("hash_type", "sha256")
    cache_dir = kwargs.pop("cache_dir", None)
    cache_max_bytes = kwargs.pop("cache_max_bytes", 20 * 2**30)
    negative_ttl = kwargs.pop("negative_ttl", 7 * 24 * 3600)
    fetch_cfg, resize_cfg = make_configs(kwargs.pop("fetch", None), kwargs.pop("resize", None), **kwargs)
    s = _Settings(
        url_column,
        hash_column,
        hash_type,
        batch_size,
        1,
        drop_failed,
        fetch_cfg,
        resize_cfg,
        os.fspath(cache_dir) if cache_dir is not None else None,
        cache_max_bytes,
        negative_ttl,
    )
    if url_column not in table.column_names:
        raise FetchError(f"column {url_column!r} not found; columns are {table.column_names} (pass url_column=...)")
    batches = (pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=batch_size))
    tables = list(_pipeline(batches, s)) if table.num_rows else []
    if not tables:
        return attach_results(table.slice(0, 0), [])
    return pa.concat_tables(tables)

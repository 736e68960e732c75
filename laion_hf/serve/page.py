"""The explorer page of ``laion-hf serve``: ``/``, its static files and the page's own routes.

:func:`add_page` adds to the search service's aiohttp app (which serves clip back's API:
``/knn-service``, ``/metadata``, ``/indices-list``, ``/config.json``):

* ``GET /`` and ``GET /static/{file}``: the page (``laion_hf/serve/static``, shipped in the
  package: no CDN, works offline);
* ``GET /image/{index}/{id}``: row ``id``'s image bytes from the subset's shards (images are
  never hotlinked: LAION links rot);
* ``POST /export`` ``{indice_name, ids, similarities?, format}``: the rows as a parquet subset
  (``load_laion`` reads it; ready for ``download``/``shards``/``push``), JSON or a URL list;
* ``GET /overview?indice_name=``: counts and score histograms, the dataset card's figures;
* a strict Content-Security-Policy (no inline script or style) on every response.

Row ``i`` of an index is row ``i`` of its metadata (the index folder's ``metadata_files`` in
order); images come from the folder's ``images.arrow`` or else the shards' own image column.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import io
import itertools
import json
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiohttp import web

from laion_hf.errors import LaionHFError
from laion_hf.shards.columns import HISTOGRAM_RANGES, Histogram, is_embedding_type

STATIC_DIR = Path(__file__).with_name("static")
#: nothing but this origin's own files; images also from data: URLs (base64 in /knn-service)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
EXPORT_FORMATS = {
    "parquet": ("application/vnd.apache.parquet", "parquet"),
    "json": ("application/json", "json"),
    "urls": ("text/plain; charset=utf-8", "txt"),
}
MAX_EXPORT_ROWS = 100_000
QUERY_SIMILARITY = "query_similarity"
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
)


class PageError(LaionHFError):
    """A request to the page's routes is invalid (answered with a 400)."""


class ShardImages:
    """Image bytes of rows of local parquet shards (row ``i`` = ``i``-th row over ``files``),
    read one row group's image column at a time; the last few are kept, so a page of
    thumbnails decodes each row group once."""

    def __init__(self, files: Sequence[str], column: str):
        self.files, self.column = list(files), column
        self._groups = [
            (i, g, md.row_group(g).num_rows)
            for i, f in enumerate(self.files)
            for md in [pq.ParquetFile(f).metadata]
            for g in range(md.num_row_groups)
        ]
        self._starts = list(itertools.accumulate((n for _, _, n in self._groups), initial=0))
        self._lock = threading.Lock()
        self._group_column = functools.lru_cache(maxsize=8)(self._read_group_column)

    @classmethod
    def of(cls, files: Sequence[str]) -> ShardImages | None:
        """The images of ``files`` when they are local parquet files with an image column."""
        if not files or not all(os.path.isfile(f) for f in files):
            return None
        column = next((f.name for f in pq.read_schema(files[0]) if _is_image_type(f.type)), None)
        return cls(files, column) if column else None

    def _read_group_column(self, group: int) -> pa.ChunkedArray:
        file_index, row_group, _ = self._groups[group]
        return pq.ParquetFile(self.files[file_index]).read_row_group(row_group, columns=[self.column]).column(0)

    def get(self, row: int) -> Any:
        """Row ``row``'s image value (``{bytes, path}`` or ``None``)."""
        group = bisect.bisect_right(self._starts, row) - 1
        with self._lock:
            column = self._group_column(group)
        return column[row - self._starts[group]].as_py()


class MetadataSource:
    """What the page reads of one index: its metadata rows (row ``i`` = index id ``i``), their
    images (the index folder's image column, else the shards' bytes) and the overview figures
    (the shard folder's ``stats.json`` when there is one, as the dataset card)."""

    def __init__(
        self,
        name: str,
        metadata: pa.Table,
        *,
        images: Any = None,
        shard_images: ShardImages | None = None,
        stats_dir: str | os.PathLike | None = None,
    ):
        self.name, self.metadata = name, metadata
        self.num_rows = metadata.num_rows
        self.plain_columns = _plain_columns(metadata.schema)
        self._images, self._shard_images = images, shard_images
        self.stats_dir = Path(stats_dir) if stats_dir else None
        self._overview: dict[str, Any] | None = None

    @classmethod
    def from_files(cls, name: str, files: Sequence[str], **kwargs: Any) -> MetadataSource:
        """Metadata parquet ``files`` in row order (images from their image column, if any)."""
        tables = [pq.read_table(f, columns=_plain_columns(pq.read_schema(f))) for f in files]
        table = pa.concat_tables(tables, promote_options="permissive")
        return cls(name, table, shard_images=ShardImages.of(files), **kwargs)

    @classmethod
    def from_index(cls, name: str, folder: Any) -> MetadataSource:
        """The page's view of a served :class:`laion_hf.index.query.IndexFolder`."""
        files = list(folder.infos.get("metadata_files") or [])
        source = folder.infos.get("source")
        stats_dir = source if isinstance(source, str) and os.path.isfile(os.path.join(source, "stats.json")) else None
        return cls(
            name,
            folder.metadata,
            images=folder.images,
            shard_images=None if folder.images is not None else ShardImages.of(files),
            stats_dir=stats_dir,
        )

    def take(self, ids: Sequence[int]) -> pa.Table:
        """Rows ``ids`` (in that order) without image bytes or embeddings."""
        return self.metadata.select(self.plain_columns).take(pa.array(ids, pa.int64()))

    def image_bytes(self, row: int) -> bytes | None:
        """Row ``row``'s image bytes, ``None`` when the row has no image in the subset."""
        if not 0 <= row < self.num_rows:
            return None
        if self._images is not None:
            value = self._images[row].as_py()
        elif self._shard_images is not None:
            value = self._shard_images.get(row)
        else:
            return None
        if isinstance(value, dict):
            value = value.get("bytes")
        return value or None

    def overview(self) -> dict[str, Any]:
        """Counts and score histograms: the shard folder's ``stats.json`` when there is one (the
        dataset card's figures), else the same histograms computed over the metadata."""
        if self._overview is None:
            if self.stats_dir is not None:
                stats = json.loads((self.stats_dir / "stats.json").read_text())
                self._overview = {
                    **_overview_from_stats(self.name, stats),
                    "languages": self._counts("language"),
                }
            else:
                self._overview = self._computed_overview()
        return self._overview

    def _counts(self, column: str) -> dict[str, int]:
        """Value counts of ``column`` (most common first); empty when there is no such column."""
        if column not in self.plain_columns:
            return {}
        items = pc.value_counts(pc.fill_null(self.metadata.column(column).combine_chunks(), "(null)")).to_pylist()
        return {str(i["values"]): i["counts"] for i in sorted(items, key=lambda i: -i["counts"])}

    def _computed_overview(self) -> dict[str, Any]:
        hists = {}
        for name in self.plain_columns:
            typ = self.metadata.schema.field(name).type
            if name in HISTOGRAM_RANGES and (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
                hists[name] = Histogram(*HISTOGRAM_RANGES[name])
                hists[name].update(self.metadata.column(name))
        counts: list[list[Any]] = [["rows", self.num_rows]]
        counts += [[f"status {k}", v] for k, v in self._counts("status").items()]
        return {
            "name": self.name,
            "source": "metadata",
            "counts": counts,
            "histograms": {n: h.to_dict() for n, h in hists.items()},
            "languages": self._counts("language"),
        }


def _plain_columns(schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` that are neither images nor embeddings."""
    return [f.name for f in schema if not _is_image_type(f.type) and not is_embedding_type(f.type)]


def _is_image_type(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _overview_from_stats(name: str, stats: dict[str, Any]) -> dict[str, Any]:
    configs = stats.get("configs") or {}
    first = next(iter(configs.values()), {})
    counts: list[list[Any]] = [
        ["rows", sum(c.get("rows", 0) for c in configs.values())],
        ["rows written", sum(c.get("rows_written", 0) for c in configs.values())],
        ["shards", sum(c.get("num_shards", 0) for c in configs.values())],
    ]
    status: dict[str, int] = {}
    for c in configs.values():
        for k, v in (c.get("status") or {}).items():
            status[k] = status.get(k, 0) + v
    counts += [[f"status {k}", v] for k, v in sorted(status.items(), key=lambda kv: -kv[1])]
    return {
        "name": name,
        "source": "stats.json",
        "counts": counts,
        "histograms": dict(first.get("histograms") or {}),
        "languages": {},
    }


# ---- request parsing --------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise PageError(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise PageError("the request body must be a JSON object")
    return body


def _ids(value: Any, num_rows: int, name: str = "ids") -> list[int]:
    if not isinstance(value, list) or not value:
        raise PageError(f"'{name}' must be a non-empty list of row ids")
    if len(value) > MAX_EXPORT_ROWS:
        raise PageError(f"'{name}' has {len(value):,} ids; at most {MAX_EXPORT_ROWS:,} per request")
    bad = next((v for v in value if type(v) is not int or not 0 <= v < num_rows), None)
    if bad is not None or any(type(v) is not int for v in value):
        raise PageError(f"'{name}' holds {bad!r}, not a row id of this index (0..{num_rows - 1})")
    return value


def _similarities(value: Any, n: int) -> list[float | None] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise PageError(f"'similarities' must be a list as long as 'ids' ({n})")
    if any(v is not None and (type(v) not in (int, float) or not math.isfinite(v)) for v in value):
        raise PageError("'similarities' must hold numbers")
    return [None if v is None else float(v) for v in value]


class Page:
    """The page's handlers over ``sources`` (index name -> :class:`MetadataSource`); by default
    the indices of the app's :class:`~laion_hf.serve.app.KnnService`, in its order."""

    def __init__(self, app: web.Application, sources: Mapping[str, MetadataSource] | None = None):
        self._app, self._sources = app, dict(sources) if sources is not None else None
        self._lock = threading.Lock()

    @property
    def sources(self) -> Mapping[str, MetadataSource]:
        with self._lock:
            if self._sources is None:
                from laion_hf.serve.app import SERVICE

                indices = self._app[SERVICE].indices
                self._sources = {n: MetadataSource.from_index(n, f) for n, f in indices.items()}
            return self._sources

    def source(self, name: Any) -> MetadataSource:
        sources = self.sources
        if name is None or name == "":
            if not sources:
                raise PageError("this server has no index")
            return next(iter(sources.values()))
        if not isinstance(name, str) or name not in sources:
            raise PageError(f"unknown index {name!r}; indices: {', '.join(sources)}")
        return sources[name]

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def image(self, request: web.Request) -> web.StreamResponse:
        src = self.source(request.match_info["index"])
        try:
            row = int(request.match_info["id"])
        except ValueError:
            raise PageError(f"row id {request.match_info['id']!r} is not a number") from None
        if not 0 <= row < src.num_rows:
            raise web.HTTPNotFound(text=f"row {row} is not in index {src.name!r} ({src.num_rows} rows)")
        data = await asyncio.to_thread(src.image_bytes, row)
        mime = _sniff(data)
        if mime is None:
            raise web.HTTPNotFound(text=f"row {row} has no image in this subset")
        return web.Response(body=data, content_type=mime, headers={"Cache-Control": "max-age=3600"})

    async def export(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        src = self.source(body.get("indice_name"))
        fmt = body.get("format", "parquet")
        if fmt not in EXPORT_FORMATS:
            raise PageError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
        ids = _ids(body.get("ids"), src.num_rows)
        sims = _similarities(body.get("similarities"), len(ids))
        table = await asyncio.to_thread(src.take, ids)
        if sims is not None:
            table = table.append_column(QUERY_SIMILARITY, pa.array(sims, pa.float64()))
        mime, ext = EXPORT_FORMATS[fmt]
        headers = {"Content-Disposition": f'attachment; filename="laion-hf-export-{len(ids)}.{ext}"'}
        return web.Response(
            body=export_bytes(table, fmt),
            content_type=mime.split(";")[0],
            charset="utf-8" if "charset" in mime else None,
            headers=headers,
        )

    async def overview(self, request: web.Request) -> web.StreamResponse:
        src = self.source(request.query.get("indice_name"))
        return web.json_response(await asyncio.to_thread(src.overview))


def export_bytes(table: pa.Table, fmt: str) -> bytes:
    """``table`` as a parquet file, a JSON array of rows, or one URL per line."""
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    if fmt == "json":
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in table.to_pylist()]
        return json.dumps(rows, ensure_ascii=False, allow_nan=False).encode()
    if "url" not in table.column_names:
        raise PageError("this index's metadata has no 'url' column: export parquet or JSON instead")
    return "".join(f"{u}\n" for u in table.column("url").to_pylist() if u).encode()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (list, dict, str, int, float, bool)) or v is None:
        return v
    return str(v)


def _sniff(data: bytes | None) -> str | None:
    if not data:
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)


def add_page(app: web.Application, sources: Mapping[str, MetadataSource] | None = None) -> Page:
    """Add the explorer page's routes and security headers to ``app`` (before it starts): the
    app of :func:`laion_hf.serve.make_app`, or any app with clip back's routes and ``sources``."""
    page = Page(app, sources)
    app.router.add_get("/", page.index)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False, append_version=False)
    app.router.add_post("/export", _wrap(page.export))
    app.router.add_get("/overview", _wrap(page.overview))
    app.router.add_get("/image/{index}/{id}", _wrap(page.image))
    app.on_response_prepare.append(_security_headers)
    return page


def _wrap(handler: Callable) -> Callable:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except LaionHFError as e:  # a PageError, or metadata that cannot be read for this request
            raise web.HTTPBadRequest(text=str(e)) from None

    wrapped.__doc__ = handler.__doc__
    return wrapped

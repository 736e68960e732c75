"""Write a stream of Arrow batches into Hub-ready shards with per-shard and total stats.

Layout of the output folder (one Hub repo)::

    DIR/data/{config}/train-00000-of-00003.parquet   (or .tar for webdataset)
    DIR/stats.json                                    per config: shards, counts, histograms
    (DIR/README.md + DIR/assets/*.png are added by laion_hf.hub.render_card)

Shards are written under a temporary name and renamed to ``train-{i:05d}-of-{n:05d}`` once
``n`` is known, so a reader never sees a half-written shard; ``stats.json`` is written last and
marks the folder complete. Memory is bounded by one row group (parquet) or one batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from laion_hf._util.atomic import atomic_write_json
from laion_hf.errors import ShardError
from laion_hf.provenance import read_provenance
from laion_hf.shards.columns import (
    ERROR_COLUMNS,
    HISTOGRAM_RANGES,
    STATUS_COLUMN,
    SUCCESS,
    Histogram,
    build_features,
    features_of,
    is_embedding_type,
    iter_tables,
    to_fixed_list,
    to_image_struct,
)

STATS_FILENAME = "stats.json"
DEFAULT_MAX_SHARD_BYTES = 500 * 1000 * 1000
FORMATS = ("parquet", "webdataset")
_CONFIG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")


def parse_size(text: str | int) -> int:
    """``"500MB"``, ``"1.5GB"``, ``"64KiB"`` or ``1000`` -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)?\s*", str(text), re.I)
    if m is None:
        raise ShardError(f"cannot parse size {text!r}: use e.g. 500MB, 1GB, 64KiB or a byte count")
    unit = (m.group(2) or "").upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[
        unit
    ]
    return int(float(m.group(1)) * mult)


def sanitize(value: Any) -> Any:
    """Replace local filesystem paths in provenance values by their file name (no local path
    may reach a published repo); URLs and hf:// paths are kept."""
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        if value.startswith("file://"):
            value = value[len("file://") :]
        if value.startswith(("/", "~", "./", "../")) or re.match(r"^[A-Za-z]:[\\/]", value):
            return os.path.basename(value.rstrip("/\\")) or value
        return value
    return value


class _ShardSink:
    """One open shard (temporary file); subclasses implement the format."""

    ext = ""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _ParquetSink(_ShardSink):
    ext = ".parquet"

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int, compression: str):
        super().__init__(path)
        import pyarrow.parquet as pq

        self._file = open(path, "wb")
        # no min/max statistics for binary and list columns: they would store image bytes again per row group
        stats_cols = [
            f.name
            for f in schema
            if not (
                pa.types.is_binary(f.type)
                or pa.types.is_large_binary(f.type)
                or pa.types.is_struct(f.type)
                or pa.types.is_list(f.type)
                or pa.types.is_fixed_size_list(f.type)
            )
        ]
        self._writer = pq.ParquetWriter(self._file, schema, compression=compression, write_statistics=stats_cols)
        self._row_group_rows = row_group_rows
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._buffered_bytes = 0

    def write(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._buffered += table.num_rows
        self._buffered_bytes += table.nbytes
        self.rows += table.num_rows
        if self._buffered >= self._row_group_rows:
            self._flush()

    def _flush(self, final: bool = False) -> None:
        """Write whole row groups of ``row_group_rows`` rows (row groups are the readers' unit
        of sharding and shuffling); the remainder waits for more rows, or the end of the shard."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        rg = max(self._row_group_rows, 1)
        n = table.num_rows if final else (table.num_rows // rg) * rg
        if n:
            self._writer.write_table(table.slice(0, n), row_group_size=rg)
        rest = table.slice(n)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows
        self._buffered_bytes = rest.nbytes if rest.num_rows else 0

    def size(self) -> int:
        return self._file.tell() + self._buffered_bytes

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()
        self._file.close()


class _TarSink(_ShardSink):
    """WebDataset tar: ``{key}.jpg``, ``.txt`` (caption), ``.json`` (metadata), ``.npy`` (image
    embedding) and ``.{name}.npy`` for other embeddings. Rows without an image (failed fetches)
    cannot be samples; they are counted in the shard's ``skipped`` stats instead."""

    ext = ".tar"

    def __init__(self, path: Path, image_column: str, embedding_columns: list[str], caption_column: str):
        super().__init__(path)
        import webdataset as wds  # imported lazily: webdataset imports torch

        self._file = open(path, "wb")
        self._tar = wds.TarWriter(self._file)
        self._image = image_column
        self._emb = embedding_columns
        self._caption = caption_column
        self._seen_keys: set[str] = set()
        self.rows_written = 0

    def write(self, table: pa.Table) -> None:
        import numpy as np

        self.rows += table.num_rows
        img = table.column(self._image).combine_chunks() if self._image in table.column_names else None
        if img is not None:  # struct_field honours a null image (field() alone would not)
            data = pc.struct_field(img, "bytes")
            ok = pc.fill_null(pc.greater(pc.binary_length(data), 0), False)
        else:
            ok = pa.array([False] * table.num_rows)
        for name in self._emb:
            ok = pc.and_(ok, pc.is_valid(table.column(name).combine_chunks()))
        ok_np = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
        meta_cols = [c for c in table.column_names if c != self._image and c not in self._emb]
        skipped = table.filter(pc.invert(ok))
        if skipped.num_rows:
            reason = (
                skipped.column(STATUS_COLUMN)
                if STATUS_COLUMN in skipped.column_names
                else pa.array(["no_image"] * skipped.num_rows)
            )
            for k, v in Counter(str(x) if x is not None else "no_image" for x in reason.to_pylist()).items():
                self.skipped[k] += v
        if not ok_np.any():
            return
        kept = table.filter(ok)
        meta = kept.select(meta_cols).to_pylist()  # tar members are per sample: one dict per row here
        images = kept.column(self._image).combine_chunks().field("bytes").to_pylist()
        embs = {n: kept.column(n).combine_chunks() for n in self._emb}
        emb_np = {
            n: np.asarray(a.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(a), -1)
            for n, a in embs.items()
        }
        for i, row in enumerate(meta):
            key = _sample_key(row.get("key"), self.path.name, self.rows_written)
            if key in self._seen_keys:
                key = f"{key}_{self.rows_written}"
            self._seen_keys.add(key)
            sample: dict[str, Any] = {"__key__": key, "jpg": images[i], "json": _jsonable(row)}
            cap = row.get(self._caption)
            sample["txt"] = "" if cap is None else str(cap)
            for j, n in enumerate(self._emb):
                field = "npy" if j == 0 else f"{n}.npy"
                sample[field] = emb_np[n][i]
            self._tar.write(sample)
            self.rows_written += 1

    def size(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._tar.close()
        if not self._file.closed:
            self._file.close()


def _sample_key(key: Any, shard_name: str, index: int) -> str:
    if key is None or str(key) == "":
        return f"{abs(hash(shard_name)) % 100000:05d}{index:06d}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(key))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, bytes):
            continue
        if isinstance(v, float) and v != v:
            v = None
        out[k] = v
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Load ``DIR/stats.json``; a clear :class:`ShardError` if the folder is not a finished shard folder."""
    path = Path(out_dir) / STATS_FILENAME
    if not Path(out_dir).is_dir():
        raise ShardError(f"shard folder {Path(out_dir).name!r} does not exist")
    if not path.exists():
        raise ShardError(
            f"shard folder {Path(out_dir).name!r} has no {STATS_FILENAME}: it was not written by "
            "laion_hf.write_shards (`laion-hf shards`) or the write did not finish; re-run it"
        )
    try:
        stats = json.loads(path.read_text())
    except ValueError as e:
        raise ShardError(
            f"{STATS_FILENAME} in {Path(out_dir).name!r} is not valid JSON ({e}); re-run the write"
        ) from None
    if not isinstance(stats, dict) or not isinstance(stats.get("configs"), dict) or not stats["configs"]:
        raise ShardError(f"{STATS_FILENAME} in {Path(out_dir).name!r} has no 'configs'; re-run the write")
    return stats


def _count(counter: Counter[str], col: pa.ChunkedArray | None) -> None:
    if col is None:
        return
    vc = pc.value_counts(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        if v is not None:
            counter[str(v)] += int(n)


def _check_args(format: str, config: str, split: str, max_shard_bytes: int | str, max_shard_rows: int | None) -> int:
    """Validate ``write_shards``' arguments; return ``max_shard_bytes`` in bytes."""
    if format not in FORMATS:
        raise ShardError(f"unknown shard format {format!r}: use one of {', '.join(FORMATS)}")
    if not _CONFIG_RE.match(config):
        raise ShardError(f"invalid config name {config!r}: use letters, digits, '_', '-', '.'")
    if not _SPLIT_RE.match(split):
        raise ShardError(f"invalid split name {split!r}: use letters, digits and '_'")
    max_bytes = parse_size(max_shard_bytes)
    if max_bytes <= 0:
        raise ShardError(f"max_shard_bytes must be positive, got {max_shard_bytes!r}")
    if max_shard_rows is not None and max_shard_rows <= 0:
        raise ShardError(f"max_shard_rows must be positive, got {max_shard_rows!r}")
    return max_bytes


def _existing_stats(out: Path, format: str) -> dict[str, Any] | None:
    """The folder's ``stats.json`` (other configs already written), or None; refuse a format mix."""
    if not (out / STATS_FILENAME).exists():
        return None
    existing = read_stats(out)
    if existing.get("format") != format:
        raise ShardError(
            f"{out.name!r} already holds {existing.get('format')} shards; one Hub repo cannot mix parquet "
            "and webdataset (datasets infers one builder per repo): write to another folder"
        )
    return existing


def _clear_split(out: Path, config: str, split: str, overwrite: bool) -> Path:
    """Remove leftover temporaries (and, with ``overwrite``, old shards) of ``split``; return the shard folder."""
    shard_dir = out / "data" / config
    if shard_dir.exists():
        old = [p for p in shard_dir.iterdir() if p.name.startswith(f"{split}-") or p.name.startswith(".tmp-")]
        if any(not p.name.startswith(".tmp-") for p in old) and not overwrite:
            raise ShardError(
                f"config {config!r} split {split!r} already has shards in {out.name}/data/{config}; "
                "pass overwrite=True (--overwrite) to replace them or pick another config"
            )
        for p in old:
            p.unlink()
    shard_dir.mkdir(parents=True, exist_ok=True)
    return shard_dir


class _StreamSchema:
    """The shard schema, fixed by the first batch: image and embedding columns, features,
    histograms; :meth:`prepare` converts every batch to it."""

    def __init__(
        self,
        image_column: str,
        embedding_columns: list[str] | None,
        embedding_dims: dict[str, int] | None,
        base_features: datasets.Features | None,
    ):
        self.image_column = image_column
        self.base_features = base_features
        self.image_cols: list[str] = []
        self.emb_cols: list[str] | None = list(embedding_columns) if embedding_columns is not None else None
        self.dims: dict[str, int] = dict(embedding_dims or {})
        self.schema: pa.Schema | None = None
        self.feats: datasets.Features | None = None
        self.hists: dict[str, Histogram] = {}

    def prepare(self, table: pa.Table) -> pa.Table:
        """``table`` with images as ``Image()`` structs, embeddings as fixed lists, cast to the schema."""
        if self.schema is None:
            self._pick_columns(table)
        t = self._convert(table)
        if self.schema is None:
            self._fix_schema(t)
        if t.schema.names != self.schema.names:
            missing = [n for n in self.schema.names if n not in t.schema.names]
            extra = [n for n in t.schema.names if n not in self.schema.names]
            raise ShardError(f"the stream's columns changed mid-stream (missing {missing}, new {extra})")
        try:
            return t.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ShardError(f"a batch does not match the shard schema: {e}") from None

    def _pick_columns(self, table: pa.Table) -> None:
        declared_img = [n for n, f in (self.base_features or {}).items() if isinstance(f, datasets.Image)]
        self.image_cols = [c for c in table.column_names if c == self.image_column or c in declared_img]
        if self.emb_cols is None:
            self.emb_cols = [
                f.name for f in table.schema if is_embedding_type(f.type) and f.name not in self.image_cols
            ]
        missing = [c for c in self.emb_cols if c not in table.column_names]
        if missing:
            raise ShardError(f"embedding column(s) {missing} not in the stream (columns: {table.column_names})")

    def _convert(self, table: pa.Table) -> pa.Table:
        cols, fields = [], []
        for field in table.schema:
            col = self._convert_column(field.name, table.column(field.name))
            cols.append(col)
            fields.append(pa.field(field.name, col.type))
        return pa.Table.from_arrays(cols, schema=pa.schema(fields))

    def _convert_column(self, name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
        if name in self.image_cols:
            return to_image_struct(col, name)
        if name in (self.emb_cols or []):
            col, self.dims[name] = to_fixed_list(col, name, self.dims.get(name))
            return col
        schema = self.schema
        if schema is not None and name in schema.names and col.type != schema.field(name).type:
            try:
                return col.cast(schema.field(name).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ShardError(
                    f"column {name!r} changed type mid-stream ({schema.field(name).type} -> {col.type}) and "
                    f"cannot be cast: {e}"
                ) from None
        return col

    def _fix_schema(self, t: pa.Table) -> None:
        self.feats = build_features(t.schema, self.image_cols, self.base_features)
        self.schema = self.feats.arrow_schema
        for name in self.schema.names:
            typ = self.schema.field(name).type
            if name in HISTOGRAM_RANGES and (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
                self.hists[name] = Histogram(*HISTOGRAM_RANGES[name])


class _ShardCutter:
    """Cuts prepared batches into temporary shards of at most ``max_bytes`` / ``max_rows`` and
    keeps each closed shard's counts (``shards``) and the tar sinks' ``skipped`` total."""

    def __init__(
        self,
        shard_dir: Path,
        split: str,
        format: str,
        columns: _StreamSchema,
        *,
        max_bytes: int,
        max_rows: int | None,
        row_group_rows: int | None,
        compression: str,
        caption_column: str,
    ):
        self.shard_dir, self.split, self.format, self.columns = shard_dir, split, format, columns
        self.ext = ".parquet" if format == "parquet" else ".tar"
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self.row_group_rows, self.compression, self.caption_column = row_group_rows, compression, caption_column
        self.shards: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self.sink: _ShardSink | None = None

    def write(self, table: pa.Table) -> None:
        """Append a prepared batch, closing shards as they fill."""
        err_col = next((c for c in ERROR_COLUMNS if c in table.column_names), None)
        while table.num_rows:
            if self.sink is None:
                self.sink = self._open()
            take = self._rows_that_fit(table, self.sink)
            piece, table = table.slice(0, take), table.slice(take)
            self._write_piece(self.sink, piece, err_col)
            if self._full(self.sink):
                self.close()

    def _rows_that_fit(self, table: pa.Table, sink: _ShardSink) -> int:
        take = table.num_rows
        if self.max_rows is not None:
            take = min(take, self.max_rows - sink.rows)
        per_row = max(1, table.nbytes // max(table.num_rows, 1))
        room = self.max_bytes - sink.size()
        return max(1, min(take, room // per_row if room > 0 else 1))

    def _full(self, sink: _ShardSink) -> bool:
        return sink.size() >= self.max_bytes or (self.max_rows is not None and sink.rows >= self.max_rows)

    @staticmethod
    def _write_piece(sink: _ShardSink, piece: pa.Table, err_col: str | None) -> None:
        sink.write(piece)
        _count(sink.status, piece.column(STATUS_COLUMN) if STATUS_COLUMN in piece.column_names else None)
        if err_col:
            _count(sink.errors, piece.column(err_col))
        elif STATUS_COLUMN in piece.column_names:  # error classes = the non-success statuses
            st = piece.column(STATUS_COLUMN)
            _count(sink.errors, pc.filter(st, pc.not_equal(st, SUCCESS)))

    def _open(self) -> _ShardSink:
        tmp = self.shard_dir / f".tmp-{self.split}-{len(self.shards):05d}{self.ext}"
        cols = self.columns
        if self.format == "parquet":
            rg = self.row_group_rows or (100 if cols.image_cols else 10_000)
            return _ParquetSink(tmp, cols.schema, rg, self.compression)
        caption = self.caption_column if self.caption_column in cols.schema.names else ""
        return _TarSink(tmp, cols.image_cols[0] if cols.image_cols else cols.image_column, cols.emb_cols or [], caption)

    def close(self) -> None:
        """Close the open shard, if any, and record its counts."""
        s = self.sink
        if s is None:
            return
        s.close()
        info = {"tmp": s.path, "rows": s.rows, "status": dict(s.status), "errors": dict(s.errors)}
        if isinstance(s, _TarSink):
            info["rows_written"] = s.rows_written
            info["skipped"] = dict(s.skipped)
            self.skipped.update(s.skipped)
        else:
            info["rows_written"] = s.rows
        self.shards.append(info)
        self.sink = None

    def write_empty_if_none(self) -> None:
        """Only empty batches: one empty shard keeps the schema loadable."""
        if not self.shards:
            self.sink = self._open()
            self.close()

    def abort(self) -> None:
        """Close the open shard and remove every temporary shard."""
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception:
                pass
        for p in self.shard_dir.glob(".tmp-*"):
            p.unlink()


def _write_stream(
    data: Any, columns: _StreamSchema, cutter: _ShardCutter, *, batch_size: int, config: str, progress: bool
) -> int:
    """Prepare and cut every batch of ``data``; return the input row count. Temporaries go on error."""
    from tqdm.auto import tqdm

    rows_in = 0
    bar = tqdm(desc=f"shards {config}", unit=" rows", disable=not progress)
    try:
        for table in iter_tables(data, batch_size=batch_size):
            if table.num_rows == 0 and columns.schema is not None:
                continue
            table = columns.prepare(table)
            rows_in += table.num_rows
            bar.update(table.num_rows)
            for name, h in columns.hists.items():
                h.update(table.column(name))
            cutter.write(table)
        cutter.close()
    except BaseException:
        bar.close()
        cutter.abort()
        raise
    bar.close()
    return rows_in


def _publish_shards(cutter: _ShardCutter, out: Path, totals: dict[str, Counter]) -> list[dict[str, Any]]:
    """Rename the temporary shards to ``{split}-{i:05d}-of-{n:05d}``; return their stats, adding to ``totals``."""
    n = len(cutter.shards)
    shard_stats = []
    for i, info in enumerate(cutter.shards):
        final = cutter.shard_dir / f"{cutter.split}-{i:05d}-of-{n:05d}{cutter.ext}"
        os.replace(info["tmp"], final)
        entry = {
            "path": final.relative_to(out).as_posix(),
            "rows": info["rows"],
            "rows_written": info["rows_written"],
            "bytes": final.stat().st_size,
            "sha256": file_sha256(final),
            "status": info["status"],
            "errors": info["errors"],
        }
        if "skipped" in info:
            entry["skipped"] = info["skipped"]
        shard_stats.append(entry)
        totals["status"].update(info["status"])
        totals["errors"].update(info["errors"])
    return shard_stats


def _config_stats(
    cutter: _ShardCutter, out: Path, config: str, rows_in: int, data: Any, provenance: dict[str, Any] | None, t0: float
) -> dict[str, Any]:
    """Publish the shards and build this config's entry of ``stats.json``."""
    totals = {"status": Counter(), "errors": Counter()}
    shard_stats = _publish_shards(cutter, out, totals)
    cols, emb_cols = cutter.columns, list(cutter.columns.emb_cols or [])
    cfg_stats: dict[str, Any] = {
        "config": config,
        "split": cutter.split,
        "format": cutter.format,
        "data_files": f"data/{config}/{cutter.split}-*{cutter.ext}",
        "rows": rows_in,
        "rows_written": sum(s["rows_written"] for s in shard_stats),
        "bytes": sum(s["bytes"] for s in shard_stats),
        "num_shards": len(shard_stats),
        "status": dict(totals["status"]),
        "errors": dict(totals["errors"]),
        "skipped": dict(cutter.skipped),
        "image_columns": cols.image_cols,
        "embedding_columns": emb_cols,
        "embedding_dims": {k: v for k, v in cols.dims.items() if k in emb_cols},
        "features": cols.feats.to_dict() if cols.feats is not None else {},
        "histograms": {k: h.to_dict() for k, h in cols.hists.items()},
        "shards": shard_stats,
        "provenance": sanitize({**read_provenance(data), **(provenance or {})}),
        "seconds": round(time.time() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sum(s["rows"] for s in shard_stats) != rows_in:  # pragma: no cover - invariant
        raise ShardError(f"internal error: shard rows {sum(s['rows'] for s in shard_stats)} != input rows {rows_in}")
    return cfg_stats


def _write_stats_file(
    out: Path, existing: dict[str, Any] | None, format: str, config: str, cfg_stats: dict[str, Any]
) -> None:
    """Add ``config`` to ``stats.json`` (temp file, then rename: written last, it marks the folder complete)."""
    from laion_hf import __version__

    stats = existing or {"format": format, "configs": {}}
    stats["laion_hf_version"] = __version__
    stats["format"] = format
    stats["configs"][config] = cfg_stats
    atomic_write_json(out / STATS_FILENAME, stats, indent=1, sort_keys=False)


def write_shards(
    data: Any,
    out_dir: str | os.PathLike,
    *,
    format: str = "parquet",
    config: str = "default",
    split: str = "train",
    max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
    max_shard_rows: int | None = None,
    row_group_rows: int | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    embedding_columns: list[str] | None = None,
    embedding_dims: dict[str, int] | None = None,
    features: datasets.Features | None = None,
    provenance: dict[str, Any] | None = None,
    compression: str = "zstd",
    batch_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``data`` (a Dataset/IterableDataset, pa.Table, parquet path(s), a ``laion-hf download``
    folder, or an iterable of pa.Table) as shards of ``config`` in ``out_dir`` and return this config's stats.

    Parquet (default) keeps every row and column: images as ``Image()`` (``struct<bytes, path>``
    with the features declared in the schema metadata), embeddings (list-of-float columns, or
    ``embedding_columns``) as fixed-length float32 lists. ``format="webdataset"`` writes ``.tar``
    samples (``jpg``, ``txt``, ``json``, ``npy``) for rows with an image; the others are counted
    under ``skipped``. A shard is closed at ``max_shard_bytes`` (default 500 MB, e.g. ``"64MB"``)
    or ``max_shard_rows``. ``provenance`` (source, preset, filters, blocklists, robots policy,
    input/fetch counts, CLIP model...) is stored, without local paths, for the dataset card,
    over the provenance record the earlier stages wrote beside ``data`` (a path: see
    :mod:`laion_hf.provenance`); a key given in ``provenance`` replaces the record's.
    """
    max_bytes = _check_args(format, config, split, max_shard_bytes, max_shard_rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = _existing_stats(out, format)
    shard_dir = _clear_split(out, config, split, overwrite)
    columns = _StreamSchema(image_column, embedding_columns, embedding_dims, features or features_of(data))
    t0 = time.time()
    cutter = _ShardCutter(
        shard_dir,
        split,
        format,
        columns,
        max_bytes=max_bytes,
        max_rows=max_shard_rows,
        row_group_rows=row_group_rows,
        compression=compression,
        caption_column=caption_column,
    )
    rows_in = _write_stream(data, columns, cutter, batch_size=batch_size, config=config, progress=progress)
    if columns.schema is None:
        raise ShardError("the input stream has no rows: nothing to write (check the filters / preset upstream)")
    cutter.write_empty_if_none()
    cfg_stats = _config_stats(cutter, out, config, rows_in, data, provenance, t0)
    _write_stats_file(out, existing, format, config, cfg_stats)
    return cfg_stats

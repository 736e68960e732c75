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
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
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
            value = value[len("file://"):]
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
        stats_cols = [f.name for f in schema if not (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
                                                     or pa.types.is_struct(f.type) or pa.types.is_list(f.type)
                                                     or pa.types.is_fixed_size_list(f.type))]
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
            reason = (skipped.column(STATUS_COLUMN) if STATUS_COLUMN in skipped.column_names else
                      pa.array(["no_image"] * skipped.num_rows))
            for k, v in Counter(str(x) if x is not None else "no_image" for x in reason.to_pylist()).items():
                self.skipped[k] += v
        if not ok_np.any():
            return
        kept = table.filter(ok)
        meta = kept.select(meta_cols).to_pylist()  # tar members are per sample: one dict per row here
        images = kept.column(self._image).combine_chunks().field("bytes").to_pylist()
        embs = {n: kept.column(n).combine_chunks() for n in self._emb}
        emb_np = {n: np.asarray(a.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(a), -1)
                  for n, a in embs.items()}
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
        raise ShardError(f"{STATS_FILENAME} in {Path(out_dir).name!r} is not valid JSON ({e}); re-run the write") from None
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
    out = Path(out_dir)
    ext = ".parquet" if format == "parquet" else ".tar"
    out.mkdir(parents=True, exist_ok=True)
    existing: dict[str, Any] | None = None
    if (out / STATS_FILENAME).exists():
        existing = read_stats(out)
        if existing.get("format") != format:
            raise ShardError(
                f"{out.name!r} already holds {existing.get('format')} shards; one Hub repo cannot mix parquet "
                "and webdataset (datasets infers one builder per repo): write to another folder"
            )
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

    base_features = features or features_of(data)
    image_cols: list[str] = []
    emb_cols: list[str] | None = list(embedding_columns) if embedding_columns is not None else None
    dims: dict[str, int] = dict(embedding_dims or {})
    schema: pa.Schema | None = None
    feats: datasets.Features | None = None
    hists: dict[str, Histogram] = {}
    totals = {"status": Counter(), "errors": Counter(), "skipped": Counter()}
    shards: list[dict[str, Any]] = []
    sink: _ShardSink | None = None
    rows_in = 0
    t0 = time.time()

    from tqdm.auto import tqdm

    bar = tqdm(desc=f"shards {config}", unit=" rows", disable=not progress)

    def prepare(table: pa.Table) -> pa.Table:
        nonlocal schema, feats, emb_cols, image_cols
        if schema is None:
            declared_img = [n for n, f in (base_features or {}).items() if isinstance(f, datasets.Image)]
            image_cols = [c for c in table.column_names if c == image_column or c in declared_img]
            if emb_cols is None:
                emb_cols = [f.name for f in table.schema if is_embedding_type(f.type) and f.name not in image_cols]
            missing = [c for c in emb_cols if c not in table.column_names]
            if missing:
                raise ShardError(f"embedding column(s) {missing} not in the stream (columns: {table.column_names})")
        cols, fields = [], []
        for field in table.schema:
            name, col = field.name, table.column(field.name)
            if name in image_cols:
                col = to_image_struct(col, name)
            elif name in (emb_cols or []):
                col, dims[name] = to_fixed_list(col, name, dims.get(name))
            elif schema is not None and name in schema.names and col.type != schema.field(name).type:
                try:
                    col = col.cast(schema.field(name).type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise ShardError(
                        f"column {name!r} changed type mid-stream ({schema.field(name).type} -> {col.type}) and "
                        f"cannot be cast: {e}"
                    ) from None
            cols.append(col)
            fields.append(pa.field(name, col.type))
        t = pa.Table.from_arrays(cols, schema=pa.schema(fields))
        if schema is None:
            feats = build_features(t.schema, image_cols, base_features)
            schema = feats.arrow_schema
            for name in schema.names:
                if name in HISTOGRAM_RANGES and pa.types.is_floating(schema.field(name).type) or (
                    name in HISTOGRAM_RANGES and pa.types.is_integer(schema.field(name).type)
                ):
                    hists[name] = Histogram(*HISTOGRAM_RANGES[name])
        if t.schema.names != schema.names:
            missing = [n for n in schema.names if n not in t.schema.names]
            extra = [n for n in t.schema.names if n not in schema.names]
            raise ShardError(f"the stream's columns changed mid-stream (missing {missing}, new {extra})")
        try:
            return t.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ShardError(f"a batch does not match the shard schema: {e}") from None

    def open_sink() -> _ShardSink:
        tmp = shard_dir / f".tmp-{split}-{len(shards):05d}{ext}"
        if format == "parquet":
            rg = row_group_rows or (100 if image_cols else 10_000)
            return _ParquetSink(tmp, schema, rg, compression)
        caption = caption_column if caption_column in schema.names else ""
        return _TarSink(tmp, image_cols[0] if image_cols else image_column, emb_cols or [], caption)

    def close_sink(s: _ShardSink) -> None:
        s.close()
        info = {"tmp": s.path, "rows": s.rows, "status": dict(s.status), "errors": dict(s.errors)}
        if isinstance(s, _TarSink):
            info["rows_written"] = s.rows_written
            info["skipped"] = dict(s.skipped)
            totals["skipped"].update(s.skipped)
        else:
            info["rows_written"] = s.rows
        shards.append(info)

    try:
        for table in iter_tables(data, batch_size=batch_size):
            if table.num_rows == 0 and schema is not None:
                continue
            table = prepare(table)
            rows_in += table.num_rows
            bar.update(table.num_rows)
            for name, h in hists.items():
                h.update(table.column(name))
            err_col = next((c for c in ERROR_COLUMNS if c in table.column_names), None)
            while table.num_rows:
                if sink is None:
                    sink = open_sink()
                take = table.num_rows
                if max_shard_rows is not None:
                    take = min(take, max_shard_rows - sink.rows)
                per_row = max(1, table.nbytes // max(table.num_rows, 1))
                room = max_bytes - sink.size()
                take = max(1, min(take, room // per_row if room > 0 else 1))
                piece, table = table.slice(0, take), table.slice(take)
                sink.write(piece)
                _count(sink.status, piece.column(STATUS_COLUMN) if STATUS_COLUMN in piece.column_names else None)
                if err_col:
                    _count(sink.errors, piece.column(err_col))
                elif STATUS_COLUMN in piece.column_names:  # error classes = the non-success statuses
                    st = piece.column(STATUS_COLUMN)
                    _count(sink.errors, pc.filter(st, pc.not_equal(st, SUCCESS)))
                if sink.size() >= max_bytes or (max_shard_rows is not None and sink.rows >= max_shard_rows):
                    close_sink(sink)
                    sink = None
        if sink is not None:
            close_sink(sink)
            sink = None
    except BaseException:
        bar.close()
        if sink is not None:
            try:
                sink.close()
            except Exception:
                pass
        for p in shard_dir.glob(".tmp-*"):
            p.unlink()
        raise
    bar.close()

    if schema is None:
        raise ShardError("the input stream has no rows: nothing to write (check the filters / preset upstream)")
    if not shards:  # only empty batches: one empty shard keeps the schema loadable
        sink = open_sink()
        close_sink(sink)

    n = len(shards)
    shard_stats = []
    for i, info in enumerate(shards):
        final = shard_dir / f"{split}-{i:05d}-of-{n:05d}{ext}"
        os.replace(info["tmp"], final)
        entry = {"path": final.relative_to(out).as_posix(), "rows": info["rows"],
                 "rows_written": info["rows_written"], "bytes": final.stat().st_size,
                 "sha256": file_sha256(final), "status": info["status"], "errors": info["errors"]}
        if "skipped" in info:
            entry["skipped"] = info["skipped"]
        shard_stats.append(entry)
        totals["status"].update(info["status"])
        totals["errors"].update(info["errors"])

    cfg_stats: dict[str, Any] = {
        "config": config,
        "split": split,
        "format": format,
        "data_files": f"data/{config}/{split}-*{ext}",
        "rows": rows_in,
        "rows_written": sum(s["rows_written"] for s in shard_stats),
        "bytes": sum(s["bytes"] for s in shard_stats),
        "num_shards": n,
        "status": dict(totals["status"]),
        "errors": dict(totals["errors"]),
        "skipped": dict(totals["skipped"]),
        "image_columns": image_cols,
        "embedding_columns": list(emb_cols or []),
        "embedding_dims": {k: v for k, v in dims.items() if k in (emb_cols or [])},
        "features": feats.to_dict() if feats is not None else {},
        "histograms": {k: h.to_dict() for k, h in hists.items()},
        "shards": shard_stats,
        "provenance": sanitize({**read_provenance(data), **(provenance or {})}),
        "seconds": round(time.time() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sum(s["rows"] for s in shard_stats) != rows_in:  # pragma: no cover - invariant
        raise ShardError(f"internal error: shard rows {sum(s['rows'] for s in shard_stats)} != input rows {rows_in}")
    from laion_hf import __version__

    stats = existing or {"format": format, "configs": {}}
    stats["laion_hf_version"] = __version__
    stats["format"] = format
    stats["configs"][config] = cfg_stats
    tmp = out / f".{STATS_FILENAME}.tmp"
    tmp.write_text(json.dumps(stats, indent=1, sort_keys=False))
    os.replace(tmp, out / STATS_FILENAME)
    return cfg_stats

"""Embedding sources of ``laion-hf index``, read in row ranges with flat memory.

Two layouts, local or remote (any fsspec URL, e.g. ``hf://datasets/org/name``):

* ``embed``: our ``laion-hf embed`` output (clip-retrieval's layout) ``img_emb/img_emb_{N}.npy``,
  ``text_emb/text_emb_{N}.npy``, ``metadata/metadata_{N}.parquet``; parts ordered by ``N``
  *numerically* (``metadata_10`` after ``metadata_9``), each ``.npy`` row-aligned with its
  metadata file. ``.npy`` rows are read by byte range, never loaded whole.
* ``shards``: parquet files (``laion-hf shards`` output, any folder/glob of parquet) with
  ``image_embedding`` / ``text_embedding`` columns; the files are the metadata.

Global row ``i`` is row ``i`` of the metadata files concatenated in that order: the index
stores vectors under exactly these row numbers. A missing vector (null embedding, or the zero
vector ``embed`` writes for a missing caption) is read as zeros and never returned by a search.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.errors import KnnIndexError, SourceError

KINDS = ("image", "text")
#: embedding columns of parquet shards (laion_hf.clip.stream's names), per kind
SHARD_COLUMNS = {"image": "image_embedding", "text": "text_embedding"}
_NPY_DIRS = {"image": ("img_emb", "img_emb_"), "text": ("text_emb", "text_emb_")}
#: columns that identify a row, hashed into the metadata fingerprint (the first present)
_ID_COLUMNS = ("key", "url", "caption")
#: columns never served as metadata (vectors, image bytes)
HEAVY_COLUMNS = ("image", "image_embedding", "text_embedding")


@dataclass(frozen=True)
class Part:
    """One row-aligned part: a metadata file and where its vectors are, per kind (an ``.npy``
    path in the embed layout, the metadata file's own column for shards)."""

    metadata: str
    rows: int
    vectors: dict = field(default_factory=dict)
    row_groups: tuple = ()


@dataclass(frozen=True)
class EmbeddingSource:
    """Row-aligned vectors and metadata of ``laion-hf embed`` output or of parquet shards."""

    root: str
    layout: str
    parts: tuple
    dim: int
    kinds: tuple
    model: str | None = None
    pretrained: str | None = None
    storage_options: dict | None = field(default=None, compare=False)
    images: bool = False

    @property
    def rows(self) -> int:
        """Total rows (= vectors per kind)."""
        return sum(p.rows for p in self.parts)

    def offsets(self) -> list[int]:
        """Global row number of each part's first row."""
        return [int(x) for x in np.cumsum([0] + [p.rows for p in self.parts])[:-1]]

    def chunks(self, batch_rows: int) -> list[tuple[int, int, int, int]]:
        """``(part, start, stop, global_start)`` ranges of at most ``batch_rows`` rows (parquet:
        one row group each, its natural read unit)."""
        out = []
        for (i, part), off in zip(enumerate(self.parts), self.offsets()):
            if part.row_groups:
                bounds = np.cumsum((0,) + tuple(part.row_groups)).tolist()
            else:
                bounds = list(range(0, part.rows, max(1, batch_rows))) + [part.rows]
            out += [(i, a, b, off + a) for a, b in itertools.pairwise(bounds) if b > a]
        return out

    def read(self, kind: str, part: int, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of part ``part``'s ``kind`` vectors, float32, zeros where missing."""
        p = self.parts[part]
        if self.layout == "embed":
            return _read_npy_rows(p.vectors[kind], start, stop, self.storage_options)
        return _read_parquet_rows(p.metadata, p.vectors[kind], p.row_groups, start, stop,
                                  self.dim, self.storage_options)  # fmt: skip

    def read_images(self, part: int, start: int, stop: int) -> pa.Array:
        """Encoded image bytes of rows ``[start, stop)`` of a shard part (null where none)."""
        p = self.parts[part]
        pf = _parquet_file(p.metadata, _so_key(self.storage_options))
        bounds = np.cumsum((0, *p.row_groups))
        pieces = []
        for g in range(len(p.row_groups)):
            a, b = max(start, bounds[g]), min(stop, bounds[g + 1])
            if b > a:
                col = pf.read_row_group(g, columns=["image"])["image"].combine_chunks()
                col = col.slice(a - bounds[g], b - a)
                pieces.append(col.field("bytes") if pa.types.is_struct(col.type) else col)
        return pa.concat_arrays([x.cast(pa.binary()) for x in pieces])

    def read_positions(self, kind: str, positions: np.ndarray, batch_rows: int = 65536) -> np.ndarray:
        """The vectors at sorted global ``positions`` (a sample), reading chunk by chunk."""
        out = np.zeros((len(positions), self.dim), np.float32)
        for part, a, b, g in self.chunks(batch_rows):
            lo, hi = np.searchsorted(positions, [g, g + b - a])
            if hi > lo:
                out[lo:hi] = self.read(kind, part, a, b)[positions[lo:hi] - g]
        return out

    def metadata_files(self) -> list[str]:
        """The metadata files, in row order."""
        return [p.metadata for p in self.parts]


# ---------------------------------------------------------------------------- opening
def _fs(path: str, storage_options: dict | None) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise SourceError(f"cannot open {path}: {e} (install the fsspec backend for this protocol)") from None


def _full(root_url: str, path: str) -> str:
    """A path listed by fsspec as the URL to open again (keeps ``hf://`` and friends)."""
    if "://" in root_url and "://" not in path:
        return f"{root_url.split('://', 1)[0]}://{path}"
    return path


def _numbered(fs: Any, folder: str, prefix: str, ext: str) -> dict[int, str]:
    found = {}
    for p in fs.glob(f"{folder}/{prefix}*{ext}"):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)" + re.escape(ext), os.path.basename(p))
        if m:
            found[int(m.group(1))] = p
    return found


def is_embed_layout(src: str, storage_options: dict | None = None) -> bool:
    """Whether ``src`` is a folder in ``laion-hf embed``'s layout (``metadata/`` + ``img_emb/``)."""
    fs, root = _fs(src, storage_options)
    try:
        return fs.isdir(f"{root}/metadata") and (fs.isdir(f"{root}/img_emb") or fs.isdir(f"{root}/text_emb"))
    except (OSError, ValueError):
        return False


def open_source(
    src: str | os.PathLike,
    storage_options: dict | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
) -> EmbeddingSource:
    """Open ``src`` (embed output folder, or parquet shards with embedding columns).
    ``clip_model`` / ``clip_pretrained`` name the CLIP model of the embeddings where the source
    does not (or override what it records)."""
    src = os.fspath(src)
    if "://" not in src:
        src = os.path.abspath(src)
    if is_embed_layout(src, storage_options):
        source = _open_embed(src, storage_options)
    else:
        source = _open_shards(src, storage_options)
    if clip_model:
        source = dataclasses.replace(source, model=clip_model, pretrained=clip_pretrained)
    elif clip_pretrained:
        if not source.model:
            raise KnnIndexError(f"{src} records no CLIP model: give clip_model with clip_pretrained")
        source = dataclasses.replace(source, pretrained=clip_pretrained)
    return source


def _open_embed(src: str, so: dict | None) -> EmbeddingSource:
    fs, root = _fs(src, so)
    metas = _numbered(fs, f"{root}/metadata", "metadata_", ".parquet")
    if not metas:
        raise KnnIndexError(f"{src}/metadata holds no metadata_N.parquet: is `laion-hf embed` finished?")
    npys = {k: _numbered(fs, f"{root}/{d}", pre, ".npy") for k, (d, pre) in _NPY_DIRS.items()}
    kinds = tuple(k for k in KINDS if npys[k])
    if not kinds:
        raise KnnIndexError(f"{src}: no img_emb/*.npy nor text_emb/*.npy beside the metadata")
    parts, dim = [], None
    for n in sorted(metas):
        vecs = {}
        for k in kinds:
            if n not in npys[k]:
                raise KnnIndexError(f"{src}: metadata_{n}.parquet has no {_NPY_DIRS[k][1]}{n}.npy beside it")
            vecs[k] = _full(src, npys[k][n])
        shapes = {k: _npy_shape(vecs[k], so) for k in kinds}
        rows = _parquet_file(_full(src, metas[n]), _so_key(so)).metadata.num_rows
        for k, shape in shapes.items():
            if shape[0] != rows or (dim is not None and shape[1] != dim):
                raise KnnIndexError(
                    f"{vecs[k]}: shape {shape} does not match metadata_{n}.parquet "
                    f"({rows} rows, dim {dim}): the part is misaligned or half-written"
                )
            dim = shape[1]
        parts.append(Part(_full(src, metas[n]), rows, vecs))
    model, pretrained = _embed_model(fs, root)
    return EmbeddingSource(src, "embed", tuple(parts), int(dim), kinds, model, pretrained, so)


def _embed_model(fs: Any, root: str) -> tuple[str | None, str | None]:
    try:
        with fs.open(f"{root}/embed_config.json", "rb") as f:
            cfg = json.load(f)
        return cfg.get("model"), cfg.get("pretrained")
    except (OSError, ValueError):
        return None, None


def _open_shards(src: str, so: dict | None) -> EmbeddingSource:
    from laion_hf.sources import resolve_source

    files = resolve_source(src, so)
    parts, kinds, dim, images = [], None, None, True
    for path in files:
        pf = _parquet_file(path, _so_key(so))
        schema = pf.schema_arrow
        have = tuple(k for k in KINDS if SHARD_COLUMNS[k] in schema.names)
        if not have:
            raise KnnIndexError(
                f"{path}: no image_embedding/text_embedding column (have {schema.names[:12]}): "
                "index `laion-hf embed` output, or shards written with CLIP features"
            )
        if kinds is not None and have != kinds:
            raise KnnIndexError(f"{path}: embedding columns {have} differ from the other files' {kinds}")
        kinds = have
        d = _list_size(schema.field(SHARD_COLUMNS[have[0]]).type, pf, SHARD_COLUMNS[have[0]])
        if dim is not None and d != dim:
            raise KnnIndexError(f"{path}: embeddings of dim {d}, other files have {dim}")
        dim = d
        meta = pf.metadata
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        parts.append(Part(path, meta.num_rows, {k: SHARD_COLUMNS[k] for k in have}, groups))
        images = images and "image" in schema.names
    model, pretrained = _shards_model(src, files, so)
    return EmbeddingSource(src, "shards", tuple(parts), int(dim), kinds, model, pretrained, so, images)


def _shards_model(src: str, files: Sequence[str], so: dict | None) -> tuple[str | None, str | None]:
    """The CLIP model recorded in the shards' ``stats.json`` (``laion-hf shards`` writes it under
    ``configs.<config>.provenance.clip``), found in SRC or above the files (``OUT/data/<config>/``)."""
    fs, root = _fs(src, so)
    first = _fs(files[0], so)[1] if files else root
    folders = [root.rstrip("/"), posixpath.dirname(first)]
    folders += [posixpath.dirname(folders[-1]), posixpath.dirname(posixpath.dirname(folders[-1]))]
    for folder in dict.fromkeys(f for f in folders if f):
        try:
            with fs.open(f"{folder}/stats.json", "rb") as f:
                stats = json.load(f)
        except (OSError, ValueError):
            continue
        found = _clip_of_stats(stats, first)
        if found[0]:
            return found
    return None, None


def _clip_of_stats(stats: Any, first_file: str) -> tuple[str | None, str | None]:
    """``(model, pretrained)`` of a ``stats.json``: the config whose ``data/<config>/`` holds
    ``first_file``, else the one model every config that names one agrees on."""
    if not isinstance(stats, dict):
        return None, None
    configs = stats.get("configs") if isinstance(stats.get("configs"), dict) else {}
    candidates = {name: cfg for name, cfg in configs.items() if isinstance(cfg, dict)}
    found = {}
    for name, cfg in [("", stats), *candidates.items()]:
        prov = cfg.get("provenance")
        clip = prov.get("clip") if isinstance(prov, dict) else None
        if isinstance(clip, dict) and clip.get("model"):
            found[name] = (clip["model"], clip.get("pretrained"))
    mine = [name for name in found if name and f"/data/{name}/" in first_file]
    if mine:
        return found[mine[0]]
    if len(set(found.values())) == 1:
        return next(iter(found.values()))
    return None, None


def _list_size(typ: pa.DataType, pf: Any, column: str) -> int:
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        for i in range(pf.metadata.num_row_groups):
            col = pf.read_row_group(i, columns=[column])[column].drop_null()
            if len(col):
                return len(col[0].as_py())
    raise KnnIndexError(f"column {column} of type {typ} holds no float vectors")


# ---------------------------------------------------------------------------- reading
def _so_key(so: dict | None) -> str:
    return json.dumps(so or {}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=64)
def _parquet_file(path: str, so_key: str) -> Any:
    from laion_hf.sources import is_url, open_parquet

    try:
        if is_url(path):
            fs, p = _fs(path, json.loads(so_key))
            return open_parquet(fs.open(p, "rb"))
        return open_parquet(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise KnnIndexError(f"cannot read {path} as parquet: {e}") from None


def _npy_header(path: str, so: dict | None) -> tuple[tuple, np.dtype, int]:
    fs, p = _fs(path, so)
    with fs.open(p, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise KnnIndexError(f"{path}: not a .npy file: {e}") from None
        if fortran or len(shape) != 2:
            raise KnnIndexError(f"{path}: expected a C-ordered 2-d array, got shape {shape}")
        return shape, dtype, f.tell()


_npy_header_cached = functools.lru_cache(maxsize=4096)(lambda path, so_key: _npy_header(path, json.loads(so_key)))


def _npy_shape(path: str, so: dict | None) -> tuple:
    return _npy_header_cached(path, _so_key(so))[0]


def _read_npy_rows(path: str, start: int, stop: int, so: dict | None) -> np.ndarray:
    shape, dtype, offset = _npy_header_cached(path, _so_key(so))
    row = shape[1] * dtype.itemsize
    fs, p = _fs(path, so)
    with fs.open(p, "rb") as f:
        f.seek(offset + start * row)
        buf = f.read((stop - start) * row)
    if len(buf) != (stop - start) * row:
        raise KnnIndexError(f"{path}: truncated (rows {start}-{stop} of {shape[0]} cannot be read)")
    return np.frombuffer(buf, dtype).reshape(stop - start, shape[1]).astype(np.float32)


def _read_parquet_rows(
    path: str, column: str, groups: tuple, start: int, stop: int, dim: int, so: dict | None
) -> np.ndarray:
    pf = _parquet_file(path, _so_key(so))
    bounds = np.cumsum((0,) + tuple(groups))
    out = np.zeros((stop - start, dim), np.float32)
    for g in range(len(groups)):
        a, b = max(start, bounds[g]), min(stop, bounds[g + 1])
        if b <= a:
            continue
        col = pf.read_row_group(g, columns=[column])[column].combine_chunks().slice(a - bounds[g], b - a)
        out[a - start : b - start] = list_to_matrix(col, dim, f"{path} column {column}")
    return out


def list_to_matrix(col: pa.Array, dim: int, what: str) -> np.ndarray:
    """A (fixed-size) list column of floats -> ``(len, dim)`` float32, zeros for null rows."""
    out = np.zeros((len(col), dim), np.float32)
    valid = pc.is_valid(col)
    vals = col.filter(valid)
    if len(vals):
        flat = vals.flatten().to_numpy(zero_copy_only=False)
        if flat.size != len(vals) * dim:
            raise KnnIndexError(f"{what}: vectors are not all of dim {dim}")
        out[valid.to_numpy(zero_copy_only=False)] = flat.reshape(-1, dim)
    return out


# ---------------------------------------------------------------------------- metadata
def metadata_fingerprint(files: Sequence[str], storage_options: dict | None = None) -> dict[str, Any]:
    """A fingerprint of metadata files in row order: per file its name, row count and a hash of
    the first identifying column present (``key``, ``url``, ``caption``).

    Returns ``{"sha256", "rows", "files": [{"name", "rows"}]}``; equal digests mean row ``i``
    is the same row in both folders.
    """
    total = hashlib.sha256()
    listing = []
    for path in files:
        pf = _parquet_file(path, _so_key(storage_options))
        names = pf.schema_arrow.names
        ident = next((c for c in _ID_COLUMNS if c in names), None)
        h = hashlib.sha256(f"{os.path.basename(path)}|{pf.metadata.num_rows}|{ident}".encode())
        if ident is not None:
            for batch in pf.iter_batches(batch_size=65536, columns=[ident]):
                values = batch.column(0).cast(pa.string()).fill_null("\x00null")
                h.update("\x1f".join(values.to_pylist()).encode("utf-8", "surrogatepass"))
                h.update(b"\x1e")
        total.update(h.digest())
        listing.append({"name": os.path.basename(path), "rows": pf.metadata.num_rows})
    return {"sha256": total.hexdigest(), "rows": sum(f["rows"] for f in listing), "files": listing}


def metadata_files(folder: str, storage_options: dict | None = None) -> list[str]:
    """The metadata files of an embed folder (or its ``metadata/`` folder) or of parquet shards,
    in row order."""
    fs, root = _fs(folder, storage_options)
    for cand in (f"{root}/metadata", root):
        metas = _numbered(fs, cand, "metadata_", ".parquet")
        if metas:
            return [_full(folder, metas[n]) for n in sorted(metas)]
    from laion_hf.sources import resolve_source

    return resolve_source(folder, storage_options)


def read_metadata(
    files: Sequence[str], storage_options: dict | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """The metadata files as one table (row ``i`` = global row ``i``), without vectors or image
    bytes (``columns`` picks others)."""
    tables = []
    for path in files:
        pf = _parquet_file(path, _so_key(storage_options))
        cols = (
            [c for c in pf.schema_arrow.names if c not in HEAVY_COLUMNS]
            if columns is None
            else [c for c in columns if c in pf.schema_arrow.names]
        )
        tables.append(pf.read(columns=cols))
    if not tables:
        raise KnnIndexError("no metadata files")
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()

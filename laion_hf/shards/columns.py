"""Column normalization for shards: images as ``Image()`` structs, embeddings as fixed-length
float lists, and the ``datasets`` features that declare them."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.errors import ShardError
from laion_hf.images.status import SUCCESS
from laion_hf.schema import IMAGE_STRUCT
from laion_hf.sources import memory_tables, open_parquet

#: score columns whose distribution goes into stats.json (and the card's histogram figure)
HISTOGRAM_RANGES: dict[str, tuple[float, float, int]] = {
    "similarity": (0.0, 0.6, 30),
    "clip_similarity": (-0.2, 0.6, 40),
    "aesthetic": (0.0, 10.0, 40),
    "aesthetic_score": (0.0, 10.0, 40),
    "punsafe": (0.0, 1.0, 20),
    "pwatermark": (0.0, 1.0, 20),
    # score heads of laion_hf.clip
    "aesthetic_score_v1": (0.0, 10.0, 40),
    "aesthetic_score_v2": (0.0, 10.0, 40),
    "punsafe_recomputed": (0.0, 1.0, 20),
}

#: the per-row status column (``success`` or an error class, as the images stage writes it) and
#: explicit error-class columns; ``error``/``error_message`` hold free-text messages and are not counted
STATUS_COLUMN = "status"
ERROR_COLUMNS = ("error_class", "error_type")


def iter_tables(data: Any, batch_size: int = 1000) -> Iterator[pa.Table]:
    """Yield ``pa.Table`` batches from a Dataset/IterableDataset, a Table/RecordBatch, parquet
    path(s) or folder, a ``laion-hf download``/img2dataset output folder, or an iterable of
    Tables/RecordBatches."""
    tables = memory_tables(data, batch_size)
    if tables is not None:
        yield from tables
        return
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data) and _is_download_dir(data):
        yield from iter_download_dir(data, batch_size)
        return
    if isinstance(data, (str, os.PathLike)):
        from glob import glob

        if os.path.isdir(data):
            data = os.path.join(data, "*.parquet")

        paths = sorted(glob(str(data))) or [str(data)]
        for p in paths:
            try:
                pf = open_parquet(p)
            except (OSError, pa.ArrowInvalid) as e:
                raise ShardError(f"cannot read {os.path.basename(p)} as parquet: {e}") from None
            for b in pf.iter_batches(batch_size=batch_size):
                yield pa.Table.from_batches([b])
        return
    if isinstance(data, Iterable):
        for i, item in enumerate(data):
            if isinstance(item, pa.Table):
                yield item
            elif isinstance(item, pa.RecordBatch):
                yield pa.Table.from_batches([item])
            else:
                raise ShardError(
                    f"item {i} of the input stream is a {type(item).__name__}, expected a pyarrow Table or "
                    "RecordBatch (pass a datasets.(Iterable)Dataset, a pa.Table or an iterable of pa.Table)"
                )
        return
    raise ShardError(
        f"cannot write shards from a {type(data).__name__}: pass a datasets.Dataset/IterableDataset, "
        "a pyarrow Table, parquet path(s), or an iterable of pyarrow Tables"
    )


def _is_download_dir(path: str | os.PathLike) -> bool:
    from glob import glob

    return bool(glob(os.path.join(path, "[0-9]*_stats.json")))


def iter_download_dir(path: str | os.PathLike, batch_size: int = 1000) -> Iterator[pa.Table]:
    """Tables of an img2dataset-style folder (``laion-hf download`` / img2dataset output): each
    finished shard's ``{shard}.parquet`` (one row per input row, failures included) with the
    ``image`` column taken from the parquet itself (``--format parquet``) or joined by ``key``
    from ``{shard}.tar``'s ``{key}.jpg`` members (``--format webdataset``)."""
    from glob import glob

    import pyarrow.parquet as pq

    for stats_path in sorted(glob(os.path.join(path, "[0-9]*_stats.json"))):
        shard = os.path.basename(stats_path)[: -len("_stats.json")]
        pq_path = os.path.join(path, f"{shard}.parquet")
        if not os.path.exists(pq_path):
            raise ShardError(f"download shard {shard} has a stats file but no {shard}.parquet: re-run the download")
        table = pq.read_table(pq_path)
        if "image" not in table.column_names:
            table = table.append_column("image", _tar_images(os.path.join(path, f"{shard}.tar"), table))
        for b in table.to_batches(max_chunksize=batch_size):
            yield pa.Table.from_batches([b])


_TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _is_image_member(name: str) -> bool:
    return name.rpartition(".")[2].lower() in _TAR_IMAGE_EXTS


def _tar_images(tar_path: str, table: pa.Table) -> pa.Array:
    """The image bytes of ``table``'s rows from a download shard's tar, joined by ``key``. A tar
    cut short or corrupt, or a row marked ``success`` whose image is not in the tar, is a
    :class:`ShardError` naming the tar: a shard is never published with images missing."""
    from laion_hf.io.tar import open_samples

    images: dict[str, bytes] = {}
    if os.path.exists(tar_path):
        for sample in open_samples(tar_path, select=_is_image_member):
            data = next((sample[e] for e in _TAR_IMAGE_EXTS if e in sample), None)
            if data is not None:
                images[sample["__key__"].rpartition("/")[2]] = data
    keys = table.column("key").to_pylist() if "key" in table.column_names else [None] * table.num_rows
    col = pa.array([images.get(k) for k in keys], pa.binary())
    if STATUS_COLUMN in table.column_names:
        ok = pc.equal(table.column(STATUS_COLUMN), SUCCESS)
        missing = pc.sum(pc.and_kleene(ok, pc.is_null(col))).as_py() or 0
        if missing:
            raise ShardError(
                f"{tar_path}: {missing} row(s) of {os.path.basename(tar_path)[:-4]}.parquet are marked "
                f"success but have no image in the tar (missing or damaged): re-run the download"
            )
    return col


def features_of(data: Any) -> datasets.Features | None:
    """The declared ``datasets`` features of ``data`` when it has any."""
    feats = getattr(data, "features", None)
    return feats if isinstance(feats, datasets.Features) else None


def to_image_struct(col: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    """Image bytes (``binary``) or ``struct<bytes, path>`` -> ``struct<bytes: binary, path: string>``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_struct(t) and t == IMAGE_STRUCT:
        return col
    if pa.types.is_null(t):
        return pa.nulls(len(col), IMAGE_STRUCT)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        data = col.cast(pa.binary())
        return pa.StructArray.from_arrays(
            [data, pa.nulls(len(col), pa.string())], fields=list(IMAGE_STRUCT), mask=data.is_null()
        )
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        b = col.field("bytes").cast(pa.binary())
        p = col.field("path").cast(pa.string()) if t.get_field_index("path") >= 0 else pa.nulls(len(col), pa.string())
        mask = pc.or_kleene(col.is_null(), b.is_null())
        return pa.StructArray.from_arrays([b, p], fields=list(IMAGE_STRUCT), mask=mask)
    raise ShardError(
        f"column {name!r} has type {t}; an image column must hold encoded bytes (binary) or "
        "struct<bytes, path> (datasets.Image)"
    )


def is_embedding_type(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def to_fixed_list(col: pa.ChunkedArray | pa.Array, name: str, dim: int | None) -> tuple[pa.Array, int]:
    """Cast a list-of-floats column to ``fixed_size_list<float32>[dim]`` (dim from the data if None)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_null(col.type):
        if dim is None:
            raise ShardError(f"embedding column {name!r} is all null in the first batch; pass embedding_dims")
        return pa.nulls(len(col), pa.list_(pa.float32(), dim)), dim
    if not is_embedding_type(col.type):
        raise ShardError(f"embedding column {name!r} has type {col.type}; expected a list of floats")
    if pa.types.is_fixed_size_list(col.type):
        size = col.type.list_size
        if dim is not None and size != dim:
            raise ShardError(f"embedding column {name!r} has length {size} here but {dim} before")
        return col.cast(pa.list_(pa.float32(), size)), size
    lengths = pc.list_value_length(col)
    mm = pc.min_max(lengths)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo is None:  # every value null
        if dim is None:
            raise ShardError(f"embedding column {name!r} is all null in the first batch; pass embedding_dims")
        return pa.nulls(len(col), pa.list_(pa.float32(), dim)), dim
    if lo != hi or (dim is not None and lo != dim):
        raise ShardError(
            f"embedding column {name!r} has vectors of different lengths ({lo}..{hi}"
            + (f", expected {dim}" if dim is not None else "")
            + "); every embedding in a column must have the same dimension"
        )
    return col.cast(pa.list_(pa.float32(), lo)), lo


def build_features(
    schema: pa.Schema, image_columns: Iterable[str], base: datasets.Features | None
) -> datasets.Features:
    """``datasets`` features for the shard schema: ``Image()`` for image columns, fixed-length
    ``List(float32)`` for embeddings, declared features (``base``) kept where they still apply."""
    image_columns = set(image_columns)
    inferred = datasets.Features.from_arrow_schema(pa.schema([f.remove_metadata() for f in schema]))
    out = {}
    for field in schema:
        name = field.name
        if name in image_columns:
            out[name] = datasets.Image()
        elif base is not None and name in base and not pa.types.is_fixed_size_list(field.type):
            try:
                if (
                    base[name].__class__.__name__ not in ("Image", "Audio", "Video")
                    and datasets.Features({name: base[name]}).arrow_schema.field(name).type == field.type
                ):
                    out[name] = base[name]  # keep ClassLabel etc. when the storage type matches
                else:
                    out[name] = inferred[name]
            except Exception:
                out[name] = inferred[name]
        else:
            out[name] = inferred[name]
    return datasets.Features(out)


class Histogram:
    """Fixed-bin histogram accumulated batch by batch (flat memory)."""

    def __init__(self, lo: float, hi: float, bins: int):
        self.lo, self.hi, self.bins = lo, hi, bins
        self.counts = [0] * bins
        self.nulls = 0
        self.below = 0
        self.above = 0

    def update(self, col: pa.ChunkedArray | pa.Array) -> None:
        import numpy as np

        arr = (
            col.to_numpy(zero_copy_only=False)
            if not isinstance(col, pa.ChunkedArray)
            else col.combine_chunks().to_numpy(zero_copy_only=False)
        )
        arr = np.asarray(arr, dtype="float64")
        valid = arr[~np.isnan(arr)]
        self.nulls += int(arr.size - valid.size)
        self.below += int((valid < self.lo).sum())
        self.above += int((valid > self.hi).sum())
        counts, _ = np.histogram(np.clip(valid, self.lo, self.hi), bins=self.bins, range=(self.lo, self.hi))
        for i, c in enumerate(counts.tolist()):
            self.counts[i] += int(c)

    def to_dict(self) -> dict[str, Any]:
        step = (self.hi - self.lo) / self.bins
        return {
            "edges": [round(self.lo + i * step, 6) for i in range(self.bins + 1)],
            "counts": self.counts,
            "nulls": self.nulls,
            "clipped_below": self.below,
            "clipped_above": self.above,
        }

"""An index folder ready to answer queries (:class:`IndexFolder`), and subsets by query
(:func:`filter_near`, ``laion-hf filter SRC --near ...``: clip-retrieval's ``clip filter``)."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from laion_hf.errors import KnnIndexError
from laion_hf.index.layout import IMAGES_FILE
from laion_hf.index.search import KnnIndex, read_infos
from laion_hf.index.source import metadata_files, metadata_fingerprint, read_metadata

#: metadata columns read as clip back's "NSFW probability" (the first present)
SAFETY_COLUMNS = ("punsafe", "punsafe_recomputed")


class IndexFolder:
    """A finished index folder: its kinds' indexes, its metadata (checked against the
    fingerprint in ``infos.json``) and, lazily, the CLIP model that embeds queries.

    ``metadata`` points at another copy of the metadata (an embed folder, its ``metadata/``
    folder or parquet shards); it must hold the same rows in the same order.
    ``aesthetic_embeddings``: a folder of LAION's ``rating{0..9}.npy`` for this model
    (default ``OUT/aesthetic_embeddings``); without them aesthetic weighting is unavailable.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        metadata: str | None = None,
        *,
        storage_options: dict | None = None,
        device: str = "cpu",
        aesthetic_embeddings: str | None = None,
    ) -> None:
        self.out = Path(out)
        self.infos = read_infos(out)
        files = metadata_files(metadata, storage_options) if metadata else self.infos["metadata_files"]
        check_fingerprint(self.infos, files, storage_options, metadata or self.infos["source"])
        self.metadata = read_metadata(files, storage_options)
        self.indexes = {k: KnnIndex(out, k, self.infos) for k in self.infos["kinds"]}
        self.model, self.pretrained = (
            self.infos.get("clip_model"),
            self.infos.get("clip_pretrained"),
        )
        self.device = device
        self.safety = _safety_column(self.metadata)
        self.aesthetic = _ratings(Path(aesthetic_embeddings) if aesthetic_embeddings else
                                  self.out / "aesthetic_embeddings")  # fmt: skip
        images = self.out / IMAGES_FILE
        self.images = pa.ipc.open_file(pa.memory_map(str(images))).read_all()["image"] if images.exists() else None

    @property
    def rows(self) -> int:
        """Rows of the metadata (= vectors per kind)."""
        return self.metadata.num_rows

    def index(self, modality: str) -> KnnIndex:
        """The ``image`` index for ``modality == "image"``, else the text one (clip back's rule);
        the other kind when the folder has one only."""
        kind = "image" if modality == "image" else "text"
        if kind not in self.indexes:
            kind = next(iter(self.indexes))
        return self.indexes[kind]

    def embedder(self) -> Any:
        """The folder's CLIP model (loaded once per process); a clear error when unknown."""
        if not self.model:
            raise KnnIndexError(f"{self.out}: infos.json names no CLIP model (rebuild with --clip-model); "
                                "only embedding_input queries can be answered")  # fmt: skip
        return _embedder(self.model, self.pretrained, self.device)

    def embed_text(self, text: str) -> np.ndarray:
        """A caption as a (1, dim) L2-normalized query vector."""
        return self.embedder().encode_text([text]).astype(np.float32)

    def embed_image(self, data: bytes) -> np.ndarray:
        """Encoded image bytes as a (1, dim) L2-normalized query vector (``KnnIndexError`` when
        they do not decode)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise KnnIndexError(f"the image does not decode: {type(e).__name__}: {e}") from None
        return self.embedder().encode_pil([img]).astype(np.float32)

    def rows_of(self, ids: Sequence[int], columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Metadata rows of ``ids`` as dicts (``json.dumps(..., default=jsonable)`` them)."""
        table = self.metadata.take(pa.array(np.asarray(ids, dtype=np.int64)))
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        return table.to_pylist()


def jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default`` for metadata values (bytes, dates, decimals)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _ratings(folder: Path) -> dict[int, np.ndarray] | None:
    """LAION's aesthetic rating embeddings ``rating{0..9}.npy`` (clip back's), or None."""
    files = [folder / f"rating{k}.npy" for k in range(10)]
    if not all(f.exists() for f in files):
        return None
    return {k: np.load(f).astype(np.float32).reshape(1, -1) for k, f in enumerate(files)}


def _safety_column(table: pa.Table) -> np.ndarray | None:
    name = next((c for c in SAFETY_COLUMNS if c in table.column_names), None)
    if name is None:
        return None
    col = table[name].cast(pa.float64()).combine_chunks()
    return col.fill_null(float("nan")).to_numpy(zero_copy_only=False)


@functools.lru_cache(maxsize=4)
def _embedder(model: str, pretrained: str | None, device: str) -> Any:
    try:
        from laion_hf.clip.model import ClipEmbedder
    except ImportError as e:
        raise KnnIndexError(f"text and image queries need the clip extra: pip install 'laion-hf[clip]' ({e})") from None
    return ClipEmbedder(model, pretrained, device=device, precision="fp32" if device == "cpu" else "auto")


def check_fingerprint(infos: dict, files: Sequence[str], storage_options: dict | None, where: str) -> None:
    """Refuse metadata whose rows are not the index's rows (clip-retrieval #304)."""
    fp = metadata_fingerprint(files, storage_options)
    want = infos["metadata"]
    if fp["sha256"] == want["sha256"]:
        return
    if fp["rows"] != want["rows"]:
        why = f"it has {fp['rows']:,} rows, the index {want['rows']:,}"
    else:
        names = [f["name"] for f in fp["files"]]
        diff = [a for a, b in zip(want["files"], fp["files"]) if a != b]
        why = (f"same row count but different rows or order (files {names[:4]}...; first differing: "
               f"{diff[0]['name'] if diff else 'contents'})")  # fmt: skip
    raise KnnIndexError(f"metadata {where} does not match the index (fingerprint {fp['sha256'][:12]} != "
                        f"{want['sha256'][:12]}): {why}. Ids would point at the wrong rows; serve the metadata "
                        "the index was built from, or rebuild the index")  # fmt: skip


def open_index(out: str | os.PathLike, metadata: str | None = None, **kwargs: Any) -> IndexFolder:
    """:class:`IndexFolder` of ``out`` (see there)."""
    return IndexFolder(out, metadata, **kwargs)


def _query_vector(
    folder: IndexFolder,
    text: str | None,
    image: bytes | str | None,
    embedding: Sequence[float] | None,
) -> np.ndarray:
    given = [x is not None for x in (text, image, embedding)]
    if sum(given) != 1:
        raise KnnIndexError("give exactly one of a text, an image or an embedding to search by")
    if text is not None:
        return folder.embed_text(text)
    if image is not None:
        if isinstance(image, (str, os.PathLike)):
            try:
                image = Path(image).read_bytes()
            except OSError as e:
                raise KnnIndexError(f"cannot read the query image {image}: {e}") from None
        return folder.embed_image(image)
    q = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
    if q.shape[1] != folder.infos["dim"]:
        raise KnnIndexError(f"the query embedding has {q.shape[1]} values, the index {folder.infos['dim']}")
    return q / max(float(np.linalg.norm(q)), 1e-12)


def nearest(index: KnnIndex, q: np.ndarray, k: int | None, min_similarity: float | None) -> tuple:
    """Top ``k`` (or every result with similarity >= ``min_similarity``, searching ever more
    neighbours until one falls below it) as ``(similarities, ids)``."""
    if (k is None) == (min_similarity is None):
        raise KnnIndexError("give exactly one of k or min_similarity")
    if k is not None:
        if k < 1:
            raise KnnIndexError(f"k must be >= 1, got {k}")
        return index.search(q, k)[0]
    want = 1024
    while True:
        d, i = index.search(q, want)[0]
        if len(i) < want or (len(d) and d[-1] < min_similarity) or want >= index.ntotal:
            keep = d >= min_similarity
            return d[keep], i[keep]
        want *= 4


#: the query's similarity column while the filter runs (not a name a filter can read)
_QUERY_COLUMN = "\x00query similarity"


def filter_near(
    index_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    text: str | None = None,
    image: bytes | str | None = None,
    embedding: Sequence[float] | None = None,
    k: int | None = None,
    min_similarity: float | None = None,
    modality: str = "image",
    metadata: str | None = None,
    where: str | Sequence[str] | None = None,
    preset: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write the rows nearest a text, an image (bytes or a path) or an embedding as
    ``OUT/part-00000.parquet`` (score order, with a ``similarity`` column: ``query_similarity``
    when the metadata has a ``similarity`` column of its own, as LAION's does) and ``stats.json``.

    ``modality`` picks the image index (default) or the text index. ``where`` / ``preset``
    (``laion-hf filter``'s expressions, ANDed) then keep the nearest rows whose metadata matches
    them: the ``k`` nearest are searched first, so fewer than ``k`` may remain. Returns the
    stats: ``rows_in`` (rows searched) = ``rows_kept`` + ``removed_by_query`` +
    ``removed_by_filter``, ``output_files``.
    """
    import pyarrow.parquet as pq

    from laion_hf._util.atomic import atomic_write_json
    from laion_hf.filters import combine_filters

    folder = IndexFolder(index_dir, metadata)
    spec = combine_filters(where, preset, known_columns=folder.metadata.column_names)
    q = _query_vector(folder, text, image, embedding)
    sims, ids = nearest(folder.index(modality), q, k, min_similarity)
    near = folder.metadata.take(pa.array(ids, pa.int64())).append_column(_QUERY_COLUMN, pa.array(sims, pa.float32()))
    table = spec.apply(near)  # the expressions read metadata columns only: the query's column is hidden
    # LAION metadata has its own `similarity` (caption-image CLIP score): the query's goes beside it
    name = "query_similarity" if "similarity" in folder.metadata.column_names else "similarity"
    table = table.rename_columns([*table.column_names[:-1], name])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "part-00000.parquet"
    pq.write_table(table, path)
    stats = {"rows_in": folder.rows, "rows_kept": table.num_rows, "removed_by_query": folder.rows - near.num_rows,
             "removed_by_filter": near.num_rows - table.num_rows, "filters": spec.descriptions,
             "output_files": [str(path)],
             "query": {"text": text, "image": image if isinstance(image, str) else None,
                       "embedding": embedding is not None, "k": k, "min_similarity": min_similarity,
                       "modality": modality}, "index": str(index_dir)}  # fmt: skip
    atomic_write_json(out / "stats.json", stats, indent=2)
    return stats

"""``with_clip``: CLIP embeddings, similarity and LAION score heads computed inside the stream.

Input rows carry ``image`` (``struct<bytes: binary, path: string>``, the ``datasets`` ``Image()``
storage; null when the fetch failed), ``caption`` and ``status`` (``"success"`` when the image
is good). Output rows gain:

``image_embedding``  fixed-size list (float32 or float16), L2-normalized; null without a usable image
``text_embedding``   fixed-size list, L2-normalized; null when the caption is null
``clip_similarity``  float64 cosine of the two (LAION's ``similarity`` quantity); null if either is null
one float64 column per score head (``aesthetic_score_v1``, ``aesthetic_score_v2``, ``punsafe_recomputed``)

A row whose status is ``success`` but whose image cannot be decoded gets nulls, ``status =
"decode_error"`` and the reason in the error column (``error`` as ``with_images`` writes it, or
``error_message`` as img2dataset does, whichever the input has); rows that failed earlier keep
their status and message.
Nothing raises per row.

Pipelining: a producer thread pulls Arrow batches from the upstream stream and hands every
image to a thread pool that decodes (``draft=True``: JPEG DCT scaling) and preprocesses it into a
reusable (pinned, on CUDA) uint8 batch buffer, ``prefetch`` batches ahead; the calling thread
only copies finished batches to the device (``non_blocking``) and runs the model, so the model
never waits for decoding unless decoding is the slower side.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from laion_hf.clip.decode import decode_into
from laion_hf.clip.heads import ScoreHead, check_heads, load_head
from laion_hf.clip.model import TINY_MODEL, ClipEmbedder
from laion_hf.errors import ModelError, SchemaError
from laion_hf.images.status import DECODE_ERROR, SUCCESS

__all__ = [
    "ClipPipeline",
    "with_clip",
    "embed_table",
    "summarize_similarity",
    "SimilarityStats",
    "format_similarity_summary",
    "clip_stage",
    "IMAGE_EMBEDDING",
    "TEXT_EMBEDDING",
    "CLIP_SIMILARITY",
    "DECODE_ERROR",
]

IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
CLIP_SIMILARITY = "clip_similarity"

_END = object()


@dataclass
class _Prepared:
    """One model batch on its way: decode jobs running into ``buffer``, tokenization running."""

    table: pa.Table
    cand_rows: np.ndarray  # row index of each decode slot
    pre_errors: dict[int, str]  # row -> error found before decoding (success status, no image)
    buffer: torch.Tensor | None
    buffer_id: int
    decode_jobs: list[tuple[Future, range]] = field(default_factory=list)
    tokens: Future | None = None
    text_valid: np.ndarray | None = None


@dataclass
class DecodedBatch:
    """One model batch, decoded and tokenized: what :meth:`ClipPipeline.embed_decoded` embeds.
    Plain tensors and arrays, so it can travel between processes (the Ray engine decodes on
    CPU tasks and embeds on GPU actors)."""

    table: pa.Table
    cand_rows: np.ndarray  # row index of each decode slot
    pre_errors: dict[int, str]  # row -> error found before decoding
    pixels: torch.Tensor | None  # one image per slot
    slot_errors: list[str | None]  # per slot: None, or why it could not be decoded
    tokens: torch.Tensor | None
    text_valid: np.ndarray


class ClipPipeline:
    """Embeds Arrow tables with a :class:`ClipEmbedder` and score heads (see module docs).

    Args:
        embedder: the model.
        heads: score heads or specs (``"aesthetic_v1"``, ``"aesthetic_v2:PATH"``, ``"nsfw:PATH"``).
        image_column / text_column / status_column: input column names.
        error_column: where decode errors go; default: ``error`` or ``error_message``, whichever
            the input has (``error`` when neither).
        embedding_dtype: ``"float32"`` or ``"float16"`` for the embedding columns.
        num_workers: decode threads (default: CPU count, at most 16).
        prefetch: batches decoded ahead of the model.
        draft: ``False`` (default): pixels exactly the model's own ``preprocess``. ``True``: an
            approximation for throughput: JPEGs at least twice the input size are decoded at a
            reduced DCT scale first (error vs open_clip up to ~0.1 at 224², ~0.7 at 64², mean
            ~0.01-0.03 in normalised units, see ``benchmarks/preprocess_error.py``); never for evaluation.
        batch_size: rows per forward pass (default: the embedder's).
        where: a filter in laion-hf's filter language applied to the output, e.g.
            ``"clip_similarity >= 0.28"`` or ``"aesthetic_score_v1 > 5 and punsafe < 0.5"`` (rows
            where it is null, failed images included, are removed). ``counts`` tracks what it removed.
    """

    def __init__(
        self,
        embedder: ClipEmbedder,
        heads: Sequence[ScoreHead | str] = (),
        *,
        image_column: str = "image",
        text_column: str = "caption",
        status_column: str = "status",
        error_column: str | None = None,
        embedding_dtype: str = "float32",
        num_workers: int | None = None,
        prefetch: int = 2,
        draft: bool = False,
        batch_size: int | None = None,
        where: str | None = None,
    ) -> None:
        self.embedder = embedder
        self.heads = [load_head(h, embedder.embed_dim, embedder.model_name) for h in heads]
        check_heads(self.heads, embedder.embed_dim, embedder.model_name)
        for h in self.heads:
            h.to(embedder.device)
        if embedding_dtype not in ("float32", "float16"):
            raise ModelError(f"embedding_dtype={embedding_dtype!r}: use 'float32' or 'float16'")
        self.embedding_dtype = embedding_dtype
        self.image_column = image_column
        self.text_column = text_column
        self.status_column = status_column
        self.error_column = error_column
        self.num_workers = int(num_workers or _default_workers(embedder.device.type))
        self.prefetch = max(1, int(prefetch))
        self.draft = draft
        self.where = None
        if where:
            from laion_hf.filters import parse_filter

            self.where = parse_filter(where)
        #: rows seen, rows kept, rows removed by ``where`` and rows with decode errors (this process)
        self.counts = {"rows_in": 0, "rows_out": 0, "removed_by_filter": 0, "decode_errors": 0}
        self.batch_size = int(batch_size or embedder.batch_size)
        if self.batch_size < 1:
            raise ModelError(f"batch_size={batch_size} must be >= 1")

    # ---- schema
    @property
    def output_columns(self) -> list[str]:
        """The columns this pipeline adds (or replaces)."""
        return [IMAGE_EMBEDDING, TEXT_EMBEDDING, CLIP_SIMILARITY] + [h.column for h in self.heads]

    def output_features(self, features: Any) -> Any:
        """``datasets.Features`` of the output given the input's (None stays None)."""
        if features is None:
            return None
        from datasets import Features, List, Value

        out = {k: v for k, v in features.items() if k not in self.output_columns}
        if self.status_column not in out:
            out[self.status_column] = Value("string")
        err_col = self._error_col(list(out))
        if err_col not in out:
            out[err_col] = Value("string")
        out[IMAGE_EMBEDDING] = List(Value(self.embedding_dtype), length=self.embedder.embed_dim)
        out[TEXT_EMBEDDING] = List(Value(self.embedding_dtype), length=self.embedder.embed_dim)
        out[CLIP_SIMILARITY] = Value("float64")
        for h in self.heads:
            out[h.column] = Value("float64")
        return Features(out)

    def _check_table(self, table: pa.Table) -> None:
        missing = [c for c in (self.image_column, self.text_column) if c not in table.column_names]
        if missing:
            raise SchemaError(
                f"with_clip needs columns {self.image_column!r} (struct<bytes, path>, from the images stage) and "
                f"{self.text_column!r}; missing {missing} (have {table.column_names})"
            )
        t = table.schema.field(self.image_column).type
        if not (pa.types.is_struct(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise SchemaError(
                f"column {self.image_column!r} has type {t}; expected struct<bytes: binary, path: string> or binary"
            )

    # ---- buffers
    def _buffer_shape(self, n: int) -> tuple[int, ...]:
        h, w = self.embedder.image_size
        return (n, h, w, 3) if self.embedder.uint8_path else (n, 3, h, w)

    def _acquire(
        self, buffers: list[torch.Tensor], free: "queue.Queue[int]", n: int, stop: threading.Event
    ) -> tuple[int, torch.Tensor | None]:
        """Take a free (pinned on CUDA) host buffer for ``n`` images; blocks while all are in flight."""
        if n == 0:
            return -1, None
        while True:
            try:
                bid = free.get(timeout=0.1)
                break
            except queue.Empty:
                if stop.is_set():
                    raise _Stopped from None
        buf = buffers[bid]
        if buf.shape[0] < n:
            dtype = torch.uint8 if self.embedder.uint8_path else torch.float32
            buf = torch.empty(
                self._buffer_shape(max(n, self.batch_size)), dtype=dtype, pin_memory=self.embedder.pin_memory
            )
            buffers[bid] = buf
        return bid, buf[:n]

    # ---- the pipeline
    def _image_inputs(self, table: pa.Table) -> tuple[list, list]:
        """Per row: a zero-copy memoryview of the encoded image (or None) and the path (or None)."""
        if not table.num_rows:
            return [], []
        col = table[self.image_column]
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        if pa.types.is_struct(col.type):
            names = [col.type.field(i).name for i in range(col.type.num_fields)]
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            data = _binary_views(col.field("bytes"), valid) if "bytes" in names else [None] * len(col)
            paths = col.field("path").to_pylist() if "path" in names else [None] * len(col)
            if not valid.all():
                paths = [p if v else None for p, v in zip(paths, valid)]
            return data, paths
        return _binary_views(col, col.is_valid().to_numpy(zero_copy_only=False)), [None] * len(col)

    def _candidates(self, table: pa.Table) -> tuple[list, list, np.ndarray, dict[int, str]]:
        """Image inputs, the rows to decode (status success, or no status column) and the
        rows that fail before decoding."""
        n = table.num_rows
        data, paths = self._image_inputs(table)
        if self.status_column in table.column_names:
            ok_status = pc.fill_null(pc.equal(table[self.status_column], SUCCESS), False).to_numpy(zero_copy_only=False)
        else:
            ok_status = np.ones(n, dtype=bool)
        pre_errors: dict[int, str] = {}
        cand = []
        for i in np.flatnonzero(ok_status):
            if data[i] is None and not paths[i]:
                pre_errors[int(i)] = "no image bytes"
            else:
                cand.append(int(i))
        return data, paths, np.asarray(cand, dtype=np.int64), pre_errors

    def _texts(self, table: pa.Table) -> tuple[list[str], np.ndarray]:
        captions = table[self.text_column].to_pylist()
        return [c if c is not None else "" for c in captions], np.array([c is not None for c in captions], dtype=bool)

    def _decode_jobs(
        self, pool: ThreadPoolExecutor, buf: torch.Tensor | None, cand_rows: np.ndarray, data: list, paths: list
    ) -> list[tuple[Future, range]]:
        jobs = []
        if len(cand_rows):
            step = max(1, -(-len(cand_rows) // (self.num_workers * 2)))
            for s in range(0, len(cand_rows), step):
                slots = range(s, min(s + step, len(cand_rows)))
                jobs.append((pool.submit(self._decode_slots, buf, slots, cand_rows, data, paths), slots))
        return jobs

    def _prepare(
        self,
        table: pa.Table,
        pool: ThreadPoolExecutor,
        buffers: list[torch.Tensor],
        free: "queue.Queue[int]",
        stop: threading.Event,
    ) -> _Prepared:
        """Start decoding ``table``'s images into a buffer and tokenizing its captions (returns at once)."""
        data, paths, cand_rows, pre_errors = self._candidates(table)
        bid, buf = self._acquire(buffers, free, len(cand_rows), stop)
        prep = _Prepared(table, cand_rows, pre_errors, buf, bid)
        prep.decode_jobs = self._decode_jobs(pool, buf, cand_rows, data, paths)
        texts, prep.text_valid = self._texts(table)
        prep.tokens = pool.submit(self.embedder.tokenize, texts) if table.num_rows else None
        return prep

    def decode_batch(self, table: pa.Table, pool: ThreadPoolExecutor) -> DecodedBatch:
        """Decode one model batch (from :meth:`batches`) on ``pool`` into a new buffer and
        tokenize its captions, now."""
        data, paths, cand_rows, pre_errors = self._candidates(table)
        dtype = torch.uint8 if self.embedder.uint8_path else torch.float32
        buf = torch.empty(self._buffer_shape(len(cand_rows)), dtype=dtype)
        slot_errors = [e for job, _ in self._decode_jobs(pool, buf, cand_rows, data, paths) for e in job.result()]
        texts, text_valid = self._texts(table)
        tokens = self.embedder.tokenize(texts) if table.num_rows else None
        return DecodedBatch(table, cand_rows, pre_errors, buf, slot_errors, tokens, text_valid)

    def _decode_slots(self, buf: torch.Tensor, slots: range, cand_rows: np.ndarray, data: list, paths: list) -> list:
        errs = []
        for s in slots:
            r = int(cand_rows[s])
            errs.append(decode_into(buf, s, data[r], paths[r], self.embedder, self.draft))
        return errs

    def batches(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """``tables`` cut into model batches of ``batch_size`` rows (checked for the columns)."""
        for t in tables:
            if isinstance(t, pa.RecordBatch):
                t = pa.Table.from_batches([t])
            self._check_table(t)
            for off in range(0, t.num_rows, self.batch_size):
                yield t.slice(off, self.batch_size)

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Embed a stream of Arrow tables; yields one output table per model batch (input order kept)."""
        stop = threading.Event()
        q: "queue.Queue[Any]" = queue.Queue(maxsize=self.prefetch)
        n_buffers = self.prefetch + 2
        buffers: list[torch.Tensor] = [torch.empty(0)] * n_buffers  # per run: runs may overlap
        free: "queue.Queue[int]" = queue.Queue()
        for i in range(n_buffers):
            free.put(i)
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="laion-hf-clip-decode")

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stopped

        def produce() -> None:
            try:
                for t in self.batches(tables):
                    put(self._prepare(t, pool, buffers, free, stop))
                put(_END)
            except _Stopped:
                pass
            except BaseException as e:  # forwarded to the consumer
                try:
                    put(_Failure(e))
                except _Stopped:
                    pass

        producer = threading.Thread(target=produce, name="laion-hf-clip-producer", daemon=True)
        producer.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                try:
                    yield self._filtered(self._finish(item))
                finally:
                    if item.buffer_id >= 0:
                        free.put(item.buffer_id)
        finally:
            stop.set()
            producer.join(timeout=10)
            pool.shutdown(wait=True, cancel_futures=True)
            buffers.clear()

    def _finish(self, prep: _Prepared) -> pa.Table:
        slot_errors: list[str | None] = [None] * len(prep.cand_rows)
        for fut, slots in prep.decode_jobs:
            for s, err in zip(slots, fut.result()):
                slot_errors[s] = err
        tokens = prep.tokens.result() if prep.tokens is not None else None
        text_valid = prep.text_valid if prep.text_valid is not None else np.zeros(prep.table.num_rows, dtype=bool)
        return self.embed_decoded(
            DecodedBatch(prep.table, prep.cand_rows, prep.pre_errors, prep.buffer, slot_errors, tokens, text_valid)
        )

    def embed_decoded(self, batch: DecodedBatch) -> pa.Table:
        """Run the model and heads on a decoded batch; the table with the output columns
        (``where`` not applied)."""
        emb = self.embedder
        table = batch.table
        n = table.num_rows
        errors: dict[int, str] = dict(batch.pre_errors)
        slot_ok = np.zeros(len(batch.cand_rows), dtype=bool)
        for s, err in enumerate(batch.slot_errors):
            if err is None:
                slot_ok[s] = True
            else:
                errors[int(batch.cand_rows[s])] = err
        img_rows = batch.cand_rows[slot_ok]
        d = emb.embed_dim
        img = np.zeros((n, d), dtype=np.float32)
        txt = np.zeros((n, d), dtype=np.float32)
        head_vals = {h.column: np.full(n, np.nan) for h in self.heads}
        sim = np.full(n, np.nan)
        with torch.inference_mode():
            txt_dev = emb.encode_token_batch(batch.tokens) if n else None
            if len(img_rows):
                x = batch.pixels if slot_ok.all() else batch.pixels[torch.from_numpy(np.flatnonzero(slot_ok))]
                img_dev = emb.encode_image_batch(x)
                rows_dev = torch.from_numpy(img_rows).to(emb.device)
                sim_dev = (img_dev * txt_dev.index_select(0, rows_dev)).sum(-1)
                heads_dev = {h.column: h(img_dev) for h in self.heads}
                img[img_rows] = img_dev.cpu().numpy()
                sim[img_rows] = sim_dev.double().cpu().numpy()
                for c, v in heads_dev.items():
                    head_vals[c][img_rows] = v.double().cpu().numpy()
            if n:
                txt[:] = txt_dev.cpu().numpy()
        has_img = np.zeros(n, dtype=bool)
        has_img[img_rows] = True
        has_txt = batch.text_valid
        sim[~has_txt] = np.nan
        out = table
        for name in self.output_columns:
            if name in out.column_names:
                out = out.drop_columns([name])
        out = self._with_status(out, errors)
        out = out.append_column(IMAGE_EMBEDDING, self._fixed_list(img, has_img))
        out = out.append_column(TEXT_EMBEDDING, self._fixed_list(txt, has_txt))
        out = out.append_column(CLIP_SIMILARITY, pa.array(sim, pa.float64(), mask=np.isnan(sim)))
        for h in self.heads:
            v = head_vals[h.column]
            out = out.append_column(h.column, pa.array(v, pa.float64(), mask=np.isnan(v)))
        return out

    def _filtered(self, table: pa.Table) -> pa.Table:
        self.counts["rows_in"] += table.num_rows
        if self.where is not None:
            from laion_hf.filters import apply_filter

            kept = apply_filter(table, self.where.expression)
            self.counts["removed_by_filter"] += table.num_rows - kept.num_rows
            table = kept
        self.counts["rows_out"] += table.num_rows
        return table

    def _fixed_list(self, arr: np.ndarray, valid: np.ndarray) -> pa.Array:
        flat = pa.array(arr.astype(self.embedding_dtype, copy=False).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, arr.shape[1], mask=pa.array(~valid))

    def _with_status(self, table: pa.Table, errors: dict[int, str]) -> pa.Table:
        n = table.num_rows
        if self.status_column in table.column_names:
            status = table[self.status_column].combine_chunks() if n else pa.array([], pa.string())
            status = status.cast(pa.string())
        else:
            status = pa.array([SUCCESS] * n, pa.string())
        err_col = self._error_col(table.column_names)
        if err_col in table.column_names:
            err = table[err_col].combine_chunks().cast(pa.string()) if n else pa.array([], pa.string())
        else:
            err = pa.nulls(n, pa.string())
        if errors:
            self.counts["decode_errors"] += len(errors)
            st = status.to_pylist()
            em = err.to_pylist()
            for r, msg in errors.items():
                st[r] = DECODE_ERROR
                em[r] = msg
            status, err = pa.array(st, pa.string()), pa.array(em, pa.string())
        table = _set_column(table, self.status_column, status)
        return _set_column(table, err_col, err)

    def _error_col(self, names: Sequence[str]) -> str:
        if self.error_column:
            return self.error_column
        return next((c for c in ("error", "error_message") if c in names), "error")

    def embed_table(self, table: pa.Table) -> pa.Table:
        """Embed one table (any size) and return it with the new columns."""
        parts = list(self.run([table]))
        if not parts:
            return self._empty_output(table)
        return pa.concat_tables(parts)

    def _empty_output(self, table: pa.Table) -> pa.Table:
        self._check_table(table)
        out = table.drop_columns([c for c in self.output_columns if c in table.column_names])
        out = self._with_status(out, {})
        t = pa.float16() if self.embedding_dtype == "float16" else pa.float32()
        for c in (IMAGE_EMBEDDING, TEXT_EMBEDDING):
            out = out.append_column(c, pa.array([], pa.list_(t, self.embedder.embed_dim)))
        for c in [CLIP_SIMILARITY] + [h.column for h in self.heads]:
            out = out.append_column(c, pa.array([], pa.float64()))
        return out


def _default_workers(device_type: str) -> int:
    """Decode threads: on a GPU decoding is the bottleneck (use the cores); on the CPU the model
    is, and decoding (~2-5 ms per image) only needs to stay ahead without stealing its cores."""
    cores = os.cpu_count() or 2
    return min(16, cores) if device_type == "cuda" else max(1, min(4, cores // 2))


class _Stopped(Exception):
    pass


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _binary_views(arr: pa.Array, valid: np.ndarray) -> list[memoryview | None]:
    """Zero-copy views of a (large_)binary array's values; None where null or ``valid`` is False.
    (``to_pylist`` would copy every image into a new ``bytes`` in the producer thread.)"""
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        arr = arr.cast(pa.binary())
    bufs = arr.buffers()
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
    ok = valid & arr.is_valid().to_numpy(zero_copy_only=False)
    lo, hi = offsets[:-1].tolist(), offsets[1:].tolist()
    return [data[a:b] if k else None for a, b, k in zip(lo, hi, ok.tolist())]


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _make_pipeline(
    embedder: ClipEmbedder | None,
    model: str,
    pretrained: str | None,
    device: str,
    precision: str,
    batch_size: int | None,
    heads: Sequence[ScoreHead | str],
    **kwargs: Any,
) -> ClipPipeline:
    if embedder is None:
        embedder = ClipEmbedder(model, pretrained, device=device, precision=precision, batch_size=batch_size)
    return ClipPipeline(embedder, heads, batch_size=batch_size, **kwargs)


def with_clip(
    ds: Any,
    embedder: ClipEmbedder | None = None,
    *,
    model: str = TINY_MODEL,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    heads: Sequence[ScoreHead | str] = (),
    image_column: str = "image",
    text_column: str = "caption",
    status_column: str = "status",
    error_column: str | None = None,
    embedding_dtype: str = "float32",
    num_workers: int | None = None,
    prefetch: int = 2,
    draft: bool = False,
    where: str | None = None,
) -> Any:
    """Add CLIP embeddings, ``clip_similarity`` and score-head columns to a stream.

    ``ds`` is a ``datasets.IterableDataset`` (returns one, lazily, in arrow format, sharded like
    the input), a ``datasets.Dataset`` (returns one), or a ``pa.Table`` (returns one). Pass an
    ``embedder`` to reuse a loaded model, else one is built from ``model``/``pretrained``/
    ``device``/``precision``. Filter on the new columns like on metadata with
    ``where="clip_similarity >= 0.28"`` (laion-hf's filter language, see ``laion_hf.filters``), or
    with any ``out.filter(fn, batched=True)`` on the arrow-formatted stream.
    """
    pipe = _make_pipeline(
        embedder, model, pretrained, device, precision, batch_size, heads,
        image_column=image_column, text_column=text_column, status_column=status_column,
        error_column=error_column, embedding_dtype=embedding_dtype, num_workers=num_workers,
        prefetch=prefetch, draft=draft, where=where,
    )  # fmt: skip
    if isinstance(ds, pa.Table):
        return pipe.embed_table(ds)
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        return _iterable_with_clip(ds, pipe)
    if isinstance(ds, datasets.Dataset):
        features = pipe.output_features(ds.features)
        return (
            ds.with_format("arrow")
            .map(pipe.embed_table, batched=True, batch_size=max(pipe.batch_size * 8, 1024), features=features)
            .with_format(None)
        )
    raise TypeError(
        f"with_clip takes a datasets.IterableDataset, datasets.Dataset or pyarrow.Table, not {type(ds).__name__}"
    )


def _iterable_with_clip(ds: Any, pipe: ClipPipeline) -> Any:
    """Wrap the pipeline as an arrow-backed ``IterableDataset`` (one generator job per input shard,
    so DataLoader workers and ``split_dataset_by_node`` split it like the input)."""
    from datasets import DatasetInfo, IterableDataset
    from datasets.iterable_dataset import ArrowExamplesIterable

    upstream = ds.with_format("arrow")
    num_shards = max(1, upstream.num_shards)
    batch = pipe.batch_size

    def generate(shard_ids: list[int]) -> Iterator[tuple[Any, pa.Table]]:
        for shard_id in shard_ids:
            part = upstream.shard(num_shards=num_shards, index=shard_id) if num_shards > 1 else upstream
            for i, out in enumerate(pipe.run(part.iter(batch_size=batch))):
                yield (shard_id, i), out

    info = DatasetInfo(features=pipe.output_features(ds.features))
    ex = ArrowExamplesIterable(generate, {"shard_ids": list(range(num_shards))})
    out = IterableDataset(ex, info=info, split=ds.split)
    return out.with_format("arrow")


def embed_table(
    table: pa.Table, embedder: ClipEmbedder, heads: Sequence[ScoreHead | str] = (), **kwargs: Any
) -> pa.Table:
    """Embed one Arrow table with an already-built embedder (see :class:`ClipPipeline` for kwargs)."""
    return ClipPipeline(embedder, heads, **kwargs).embed_table(table)


class SimilarityStats:
    """Streaming summary of ``clip_similarity`` with memory flat in the row count.

    ``update(table_or_values)`` as batches go by, ``result()`` at the end. Mean/std/min/max and
    the threshold shares are exact; percentiles come from a 0.001-wide histogram over [-1, 1].
    """

    _BINS = 2000

    def __init__(self, thresholds: Sequence[float] = (0.26, 0.28, 0.3), column: str = CLIP_SIMILARITY) -> None:
        self.thresholds = tuple(thresholds)
        self.column = column
        self.count = 0
        self.nulls = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = np.inf
        self._max = -np.inf
        self._at_least = np.zeros(len(self.thresholds), dtype=np.int64)
        self._hist = np.zeros(self._BINS, dtype=np.int64)

    def update(self, values: Any) -> "SimilarityStats":
        """Add a batch: a ``pa.Table`` (its ``clip_similarity`` column), Arrow array, numpy array or list."""
        if isinstance(values, pa.Table):
            values = values[self.column]
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arr = values.to_numpy(zero_copy_only=False).astype(np.float64)
        else:
            arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        nan = np.isnan(arr)
        v = arr[~nan]
        self.nulls += int(nan.sum())
        if v.size:
            self.count += int(v.size)
            self._sum += float(v.sum())
            self._sumsq += float((v * v).sum())
            self._min = min(self._min, float(v.min()))
            self._max = max(self._max, float(v.max()))
            self._at_least += np.array([(v >= t).sum() for t in self.thresholds], dtype=np.int64)
            idx = np.clip(((v + 1.0) * (self._BINS / 2)).astype(np.int64), 0, self._BINS - 1)
            self._hist += np.bincount(idx, minlength=self._BINS)
        return self

    def _percentile(self, q: float) -> float:
        cum = np.cumsum(self._hist)
        i = int(np.searchsorted(cum, q / 100 * self.count, side="left"))
        mid = -1.0 + (i + 0.5) * (2.0 / self._BINS)
        return float(min(max(mid, self._min), self._max))

    def result(self, bins: int = 10) -> dict[str, Any]:
        """``count, nulls, mean, std, min, max, p5..p95, histogram {edges, counts}, share_at_least``."""
        out: dict[str, Any] = {"count": self.count, "nulls": self.nulls}
        if not self.count:
            return out | {"mean": None, "std": None, "min": None, "max": None, "histogram": None,
                          "share_at_least": {str(t): None for t in self.thresholds}}  # fmt: skip
        mean = self._sum / self.count
        var = max(self._sumsq / self.count - mean * mean, 0.0)
        lo, hi = self._min, self._max
        if hi <= lo:
            hi = lo + 1e-3
        edges = np.linspace(lo, hi, bins + 1)
        centers = -1.0 + (np.arange(self._BINS) + 0.5) * (2.0 / self._BINS)
        which = np.clip(np.searchsorted(edges, centers, side="right") - 1, 0, bins - 1)
        counts = np.bincount(which, weights=self._hist, minlength=bins).astype(np.int64)
        out.update(
            mean=mean, std=var**0.5, min=self._min, max=self._max,
            **{f"p{q}": self._percentile(q) for q in (5, 25, 50, 75, 95)},
            histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
            share_at_least={str(t): int(c) / self.count for t, c in zip(self.thresholds, self._at_least)},
        )  # fmt: skip
        return out


def summarize_similarity(values: Any, thresholds: Sequence[float] = (0.26, 0.28, 0.3)) -> dict[str, Any]:
    """Distribution of ``clip_similarity`` values (a ``pa.Table``, Arrow array/column, numpy array,
    list, or an iterable of tables): see :class:`SimilarityStats`. LAION's thresholds: 0.28 English
    (OpenAI B/32), 0.26 multilingual, 0.3 LAION-400M."""
    acc = SimilarityStats(thresholds)
    if isinstance(values, (pa.Table, pa.Array, pa.ChunkedArray, np.ndarray, list, tuple)):
        acc.update(values)
    else:
        for t in values:
            acc.update(t)
    return acc.result()


def format_similarity_summary(summary: dict[str, Any], width: int = 40) -> str:
    """Render :func:`summarize_similarity`'s dict as a few human-readable lines with a text histogram."""
    if not summary.get("count"):
        return f"clip_similarity: no values ({summary.get('nulls', 0)} nulls)"
    lines = [
        f"clip_similarity over {summary['count']} rows ({summary['nulls']} null): "
        f"mean {summary['mean']:.4f} ± {summary['std']:.4f}, min {summary['min']:.4f}, "
        f"p50 {summary['p50']:.4f}, max {summary['max']:.4f}",
        "  " + ", ".join(f">= {t}: {s:.1%}" for t, s in summary["share_at_least"].items()),
    ]
    hist = summary["histogram"]
    top = max(hist["counts"]) or 1
    for lo, hi, c in zip(hist["edges"][:-1], hist["edges"][1:], hist["counts"]):
        lines.append(f"  [{lo:+.3f}, {hi:+.3f}) {'#' * round(width * c / top):<{width}} {c}")
    return "\n".join(lines)


def clip_stage(
    ds: Any,
    model: str = TINY_MODEL,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    heads: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> tuple[Any, ClipEmbedder]:
    """The demo's entry point: ``with_clip`` with the tiny random-init model by default.

    Pass ``model="ViT-B-32-quickgelu", pretrained="openai"`` (or any tag/file whose weights are on
    disk) to get LAION-comparable similarities; missing weights raise :class:`ModelError` at once.
    The aesthetic V1 head is added when the model's embedding size has one (512 or 768).
    Returns ``(stream, embedder)``. Summarize while consuming the stream::

        stats = SimilarityStats()
        for table in stream.iter(batch_size=256):
            stats.update(table)          # and write the table wherever it goes
        print(format_similarity_summary(stats.result()))

    CLI flags for it: :func:`laion_hf.cli._options.add_clip_arguments` (``--clip-model`` ...).
    """
    embedder = ClipEmbedder(model, pretrained, device=device, batch_size=batch_size)
    if heads is None:
        heads = ["aesthetic_v1"] if embedder.embed_dim in (512, 768) else []
    return with_clip(ds, embedder, heads=heads), embedder

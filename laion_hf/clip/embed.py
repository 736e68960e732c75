"""``laion-hf embed``: CLIP embeddings of existing image shards in clip-retrieval's layout.

Inputs are img2dataset / webdataset tars (``{key}.jpg`` + ``{key}.txt`` + ``{key}.json``) or
parquet shards with an ``image`` column (``struct<bytes, path>``, as laion-hf and ``datasets``
write them). Input shard ``N`` (in sorted order) becomes output part ``N``::

    OUT/img_emb/img_emb_{N}.npy          (rows, dim) float16|float32, L2-normalized
    OUT/text_emb/text_emb_{N}.npy        same rows; a zero vector where the caption is missing
    OUT/metadata/metadata_{N}.parquet    same rows: key, caption, url, ..., clip_similarity, heads
    OUT/stats/stats_{N}.json             every input row counted: embedded + failed by status
    OUT/embed_config.json                model, weights, dtype, inputs (a resumed run must match)

so autofaiss and embedding-reader can index them. Rows whose image does not decode are left out
of the three row-aligned files and counted in the stats file. A part is written atomically
(metadata last); a re-run skips finished parts (resume after a kill).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import pyarrow as pa

from laion_hf._util.atomic import atomic_write, atomic_write_json
from laion_hf._util.workers import map_orders, raise_failures
from laion_hf.errors import ShardError
from laion_hf.schema import IMAGE_STRUCT
from laion_hf.sources import open_parquet

if TYPE_CHECKING:  # pragma: no cover
    from laion_hf.clip.model import ClipEmbedder

__all__ = [
    "embed_shards",
    "read_shards",
    "resolve_inputs",
    "EmbedOrder",
    "EmbedPlan",
    "EmbedSpec",
    "plan",
    "run_one",
    "finish",
    "make_pipeline",
]

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff", "tif")


def resolve_inputs(sources: Sequence[str]) -> list[str]:
    """Expand files, folders and globs into a sorted list of ``.tar`` / ``.parquet`` shards.

    A folder contributes its tars when it has any (img2dataset writes metadata-only
    parquet files beside them), else its parquet files.
    """
    found: list[str] = []
    for src in sources:
        if os.path.isdir(src):
            tars = sorted(glob.glob(os.path.join(src, "*.tar")))
            found += tars or sorted(glob.glob(os.path.join(src, "*.parquet")))
        elif os.path.isfile(src):
            found.append(src)
        else:
            matches = sorted(glob.glob(src))
            if not matches:
                raise ShardError(f"{src}: no such file, folder or glob match")
            found += [m for m in matches if os.path.isfile(m)]
    bad = [f for f in found if not f.endswith((".tar", ".parquet"))]
    if bad:
        raise ShardError(f"{bad[0]}: not a .tar or .parquet shard")
    if not found:
        raise ShardError(f"no .tar or .parquet shards in {', '.join(sources)}")
    return sorted(dict.fromkeys(os.path.abspath(f) for f in found))


def _tar_tables(path: str, batch_rows: int) -> Iterator[pa.Table]:
    """Tables of a tar shard; a tar cut short or corrupt is a :class:`ShardError` naming it."""
    from laion_hf.io.tar import open_samples

    rows: list[dict[str, Any]] = []

    def flush() -> pa.Table:
        metas = [r.pop("_json") for r in rows]
        table = pa.table(
            {
                "key": pa.array([r["key"] for r in rows], pa.string()),
                "caption": pa.array([r["caption"] for r in rows], pa.string()),
                "image": pa.array([{"bytes": r["image"], "path": None} for r in rows], IMAGE_STRUCT),
                "status": pa.array(["success"] * len(rows), pa.string()),
            }
        )
        extra = _json_columns(metas, exclude=set(table.column_names))
        for name in extra.column_names:
            table = table.append_column(name, extra[name])
        rows.clear()
        return table

    for sample in open_samples(path):
        ext = next((e for e in _IMAGE_EXTS if e in sample), None)
        meta: dict[str, Any] = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError:
                meta = {}
        caption = sample["txt"].decode("utf-8", "replace") if "txt" in sample else meta.get("caption")
        rows.append(
            {
                "key": os.path.basename(sample["__key__"]),
                "caption": caption,
                "image": sample[ext] if ext else None,
                "_json": meta if isinstance(meta, dict) else {},
            }
        )
        if len(rows) >= batch_rows:
            yield flush()
    if rows:
        yield flush()


def _json_columns(metas: list[dict[str, Any]], exclude: set[str]) -> pa.Table:
    """Scalar fields of the img2dataset ``.json`` sidecars as columns (what fits one type)."""
    names: dict[str, None] = {}
    for m in metas:
        for k, v in m.items():
            if k not in exclude and (v is None or isinstance(v, (str, int, float, bool))):
                names.setdefault(k)
    cols = {}
    for k in names:
        try:
            cols[k] = pa.array([m.get(k) for m in metas])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            cols[k] = pa.array([None if m.get(k) is None else str(m.get(k)) for m in metas], pa.string())
    return pa.table(cols) if cols else pa.table({})


def _parquet_tables(path: str, batch_rows: int) -> Iterator[pa.Table]:
    try:
        pf = open_parquet(path)
    except Exception as e:
        raise ShardError(f"{path}: cannot read the parquet shard: {type(e).__name__}: {e}") from e
    names = pf.schema_arrow.names
    if "image" not in names:
        raise ShardError(
            f"{path}: no 'image' column (have {names[:12]}); img2dataset's per-shard parquet holds metadata only, "
            "point `laion-hf embed` at the .tar files (or at parquet shards written with embedded images)"
        )
    for batch in pf.iter_batches(batch_size=batch_rows):
        yield pa.Table.from_batches([batch])


def read_shards(path: str, batch_rows: int = 1024) -> Iterator[pa.Table]:
    """Arrow tables (``key``, ``caption``, ``image`` struct, ``status``, sidecar fields) of one shard."""
    if path.endswith(".tar"):
        return _tar_tables(path, batch_rows)
    return _parquet_tables(path, batch_rows)


def _count_rows(path: str) -> int | None:
    """Rows of a shard when cheap to know: parquet footer, or img2dataset's ``{shard}_stats.json``."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:
            return None
    stats = path[: -len(".tar")] + "_stats.json"
    try:
        with open(stats) as f:
            return int(json.load(f)["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class PartAccumulator:
    """Collects one clip-retrieval output part from embedded tables: the rows that have an
    image embedding become row-aligned image/text matrices (text zeros where a row has no
    caption embedding) and metadata; every row is counted by status."""

    def __init__(self, dim: int, np_dtype: Any):
        self.dim, self.np_dtype = dim, np_dtype
        self.count = 0
        self.status_dict: dict[str, int] = {}
        self._img: list = []
        self._txt: list = []
        self._meta: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        import numpy as np
        import pyarrow.compute as pc

        from laion_hf.clip.stream import IMAGE_EMBEDDING, TEXT_EMBEDDING

        self.count += table.num_rows
        for vc in pc.value_counts(table["status"]).to_pylist():
            self.status_dict[vc["values"]] = self.status_dict.get(vc["values"], 0) + int(vc["counts"])
        good = table.filter(table[IMAGE_EMBEDDING].is_valid())
        if not good.num_rows:
            return
        d = self.dim
        img = good[IMAGE_EMBEDDING].combine_chunks().flatten().to_numpy().reshape(-1, d)
        txt_col = good[TEXT_EMBEDDING].combine_chunks()
        txt = np.zeros((good.num_rows, d), dtype=np.float32)
        has = txt_col.is_valid().to_numpy(zero_copy_only=False)
        if has.any():
            txt[has] = txt_col.filter(txt_col.is_valid()).flatten().to_numpy().reshape(-1, d)
        self._img.append(img.astype(self.np_dtype))
        self._txt.append(txt.astype(self.np_dtype))
        self._meta.append(
            good.drop_columns([c for c in ("image", IMAGE_EMBEDDING, TEXT_EMBEDDING) if c in good.column_names])
        )

    def finish(self) -> tuple[Any, Any, pa.Table]:
        """``(image matrix, text matrix, metadata table)``, row-aligned (empty when no row)."""
        import numpy as np

        from laion_hf.clip.stream import CLIP_SIMILARITY

        empty = np.zeros((0, self.dim), self.np_dtype)
        img = np.concatenate(self._img) if self._img else empty
        txt = np.concatenate(self._txt) if self._txt else empty
        if self._meta:
            meta = pa.concat_tables(self._meta, promote_options="permissive")
        else:
            meta = pa.table(
                {
                    "key": pa.array([], pa.string()),
                    "caption": pa.array([], pa.string()),
                    CLIP_SIMILARITY: pa.array([], pa.float64()),
                }
            )
        return img, txt, meta

    def write(self, out: Path, n: int, input_path: str, model: str, pretrained: Any) -> dict[str, Any]:
        """Write part ``n`` under ``out`` in clip-retrieval's layout (``img_emb_N.npy``,
        ``text_emb_N.npy``, ``stats_N.json``, ``metadata_N.parquet`` last: a part is done when
        its metadata exists), each file atomically; returns the part's stats."""
        import pyarrow.parquet as pq

        img_all, txt_all, meta = self.finish()
        embedded = int(img_all.shape[0])
        stats = {
            "input": input_path,
            "part": n,
            "count": self.count,
            "embedded": embedded,
            "failed": self.count - embedded,
            "status_dict": self.status_dict,
            "model": model,
            "pretrained": pretrained,
        }
        out = Path(out)
        atomic_write(out / "img_emb" / f"img_emb_{n}.npy", lambda p: _save_npy(p, img_all))
        atomic_write(out / "text_emb" / f"text_emb_{n}.npy", lambda p: _save_npy(p, txt_all))
        atomic_write_json(out / "stats" / f"stats_{n}.json", stats, indent=2)
        atomic_write(out / "metadata" / f"metadata_{n}.parquet", lambda p: pq.write_table(meta, p))
        return stats


def prepare_output(out: Path, config: dict[str, Any]) -> None:
    """Create the clip-retrieval layout under ``out`` and record ``config``; a folder made with
    another configuration is refused (resuming must not mix models or settings)."""
    for sub in ("img_emb", "text_emb", "metadata", "stats"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cfg_path = out / "embed_config.json"
    if cfg_path.exists() and any((out / "stats").glob("stats_*.json")):
        old = json.loads(cfg_path.read_text())
        diff = [k for k in config if old.get(k) != config[k]]
        if diff:
            raise ShardError(
                f"{out} holds embeddings made with another configuration ({', '.join(diff)} differ: "
                f"{ {k: old.get(k) for k in diff} }); use a new --out folder or the same settings to resume"
            )
    else:  # a new folder, or one whose earlier run finished no part: nothing to protect yet
        atomic_write_json(cfg_path, config, indent=2)


def part_done(out: Path, n: int) -> bool:
    """Whether part ``n`` under ``out`` is complete (its metadata and stats were written)."""
    return (out / "metadata" / f"metadata_{n}.parquet").exists() and (out / "stats" / f"stats_{n}.json").exists()


#: the stage's name (engines, error messages); its orders run one at a time on a machine
#: (one model per process; decoding already uses threads)
NAME = "embed"
LOCAL_MODE = None


@dataclass(frozen=True)
class EmbedSpec:
    """How to build the model and pipeline of a run in any process (picklable)."""

    model: str
    pretrained: Optional[str]
    device: str
    precision: str
    batch_size: Optional[int]
    heads: tuple[str, ...]
    dtype: str
    embed_dim: int
    num_workers: Optional[int] = None  # decode threads
    cache_dir: Optional[str] = None
    allow_download: bool = False


@dataclass(frozen=True)
class EmbedOrder:
    """Embed input shard ``path`` into output part ``part`` under ``out_dir``."""

    part: int
    path: str
    out_dir: str
    spec: EmbedSpec

    def describe(self) -> str:
        return f"embed part {self.part} ({self.path})"


@dataclass
class EmbedPlan:
    """A planned embed run: the inputs, the parts still to do (``orders``) and, on the driver,
    the model pipeline (``pipe``; None when not built here)."""

    out: Path
    inputs: list[str]
    orders: list[EmbedOrder]
    spec: EmbedSpec
    pipe: Any = None
    started: float = field(default_factory=time.perf_counter)

    def __enter__(self) -> "EmbedPlan":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Nothing to clean up: each part is written atomically, metadata last."""


def make_pipeline(
    spec: EmbedSpec,
    *,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    heads: Optional[Sequence[str]] = None,
) -> Any:
    """The :class:`~laion_hf.clip.stream.ClipPipeline` of ``spec`` (``device``, ``precision``
    and ``heads`` may be overridden: the Ray engine decodes on CPU actors without heads)."""
    from laion_hf.clip.model import ClipEmbedder
    from laion_hf.clip.stream import ClipPipeline

    embedder = ClipEmbedder(spec.model, spec.pretrained, device=device or spec.device,
                            precision=precision or spec.precision, batch_size=spec.batch_size,
                            allow_download=spec.allow_download, cache_dir=spec.cache_dir)  # fmt: skip
    return ClipPipeline(embedder, spec.heads if heads is None else heads, embedding_dtype="float32",
                        num_workers=spec.num_workers, batch_size=spec.batch_size)  # fmt: skip


@functools.lru_cache(maxsize=2)
def _cached_pipeline(spec: EmbedSpec) -> Any:
    return make_pipeline(spec)


def plan(
    sources: Sequence[str] | str,
    out_dir: str | os.PathLike,
    embedder: "ClipEmbedder | None" = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    heads: Sequence[str] = (),
    dtype: str = "float16",
    num_workers: int | None = None,
    allow_download: bool = False,
    cache_dir: str | None = None,
) -> EmbedPlan:
    """Plan embedding ``sources`` into ``out_dir`` (see :func:`embed_shards`): build the model
    here (its name, weights and dimension are the run's config), prepare the output folder (a
    folder made with another config is refused) and return one :class:`EmbedOrder` per part
    not yet done."""
    from laion_hf.clip.model import TINY_MODEL, ClipEmbedder
    from laion_hf.clip.stream import ClipPipeline

    if isinstance(sources, (str, os.PathLike)):
        sources = [str(sources)]
    if dtype not in ("float16", "float32"):
        raise ShardError(f"dtype={dtype!r}: use float16 (clip-retrieval's default) or float32")
    inputs = resolve_inputs(list(sources))
    out = Path(out_dir)
    if embedder is None:
        embedder = ClipEmbedder(
            model or TINY_MODEL, pretrained, device=device, precision=precision, batch_size=batch_size,
            allow_download=allow_download, cache_dir=cache_dir,
        )  # fmt: skip
    pipe = ClipPipeline(embedder, heads, embedding_dtype="float32", num_workers=num_workers, batch_size=batch_size)
    config = {"model": embedder.model_name, "pretrained": embedder.pretrained, "embed_dim": embedder.embed_dim,
              "dtype": dtype, "heads": [h.name for h in pipe.heads], "inputs": inputs}  # fmt: skip
    prepare_output(out, config)
    spec = EmbedSpec(embedder.model_name, embedder.pretrained, device, precision, batch_size, tuple(heads), dtype,
                     embedder.embed_dim, num_workers, cache_dir, allow_download)  # fmt: skip
    orders = [EmbedOrder(n, p, str(out.resolve()), spec) for n, p in enumerate(inputs) if not part_done(out, n)]
    return EmbedPlan(out, inputs, orders, spec, pipe)


def embed_part(pipe: Any, order: EmbedOrder, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Embed one input shard with ``pipe`` and write its part; the part's stats."""
    import numpy as np

    acc = PartAccumulator(pipe.embedder.embed_dim, np.float16 if order.spec.dtype == "float16" else np.float32)
    for table in pipe.run(read_shards(order.path, batch_rows=max(pipe.batch_size, 256))):
        acc.add(table)
        if progress is not None:
            progress(table.num_rows, 0)
    return acc.write(Path(order.out_dir), order.part, order.path, pipe.embedder.model_name, pipe.embedder.pretrained)


def run_one(order: EmbedOrder, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Embed one part with this process's pipeline for ``order.spec`` (built once)."""
    return embed_part(_cached_pipeline(order.spec), order, progress)


def finish(p: EmbedPlan, results: Sequence[Any], **extra: Any) -> dict[str, Any]:
    """Raise the first failed part's error; else the run's totals: ``parts``, ``parts_skipped``,
    ``count``, ``embedded``, ``failed``, ``status_dict``, ``seconds``, ``images_per_second``
    and ``extra``."""
    raise_failures(results, NAME)
    not_done = [o.part for o in p.orders if not part_done(p.out, o.part)]
    if not_done:
        raise ShardError(f"embed: parts {not_done[:10]} not written (rerun the same command to resume)")
    totals: dict[str, Any] = {"parts": len(p.inputs), "parts_skipped": len(p.inputs) - len(p.orders), "count": 0,
                              "embedded": 0, "failed": 0, "status_dict": {}}  # fmt: skip
    for stats in results:
        for k in ("count", "embedded", "failed"):
            totals[k] += stats[k]
        for s, c in stats["status_dict"].items():
            totals["status_dict"][s] = totals["status_dict"].get(s, 0) + c
    secs = time.perf_counter() - p.started
    totals["seconds"] = secs
    totals["images_per_second"] = totals["count"] / secs if secs > 0 else 0.0
    totals.update(extra)
    return totals


def embed_shards(
    sources: Sequence[str] | str,
    out_dir: str | os.PathLike,
    embedder: "ClipEmbedder | None" = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    heads: Sequence[str] = (),
    dtype: str = "float16",
    num_workers: int | None = None,
    allow_download: bool = False,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every shard of ``sources`` into ``out_dir`` (clip-retrieval layout, see module docs).

    Resumable: finished parts are skipped; the run config must match the one in
    ``embed_config.json``. Returns totals: ``parts``, ``parts_skipped``, ``count``, ``embedded``,
    ``failed``, ``status_dict``, ``seconds``, ``images_per_second``.
    """
    from tqdm.auto import tqdm

    p = plan(sources, out_dir, embedder, model=model, pretrained=pretrained, device=device, precision=precision,
             batch_size=batch_size, heads=heads, dtype=dtype, num_workers=num_workers,
             allow_download=allow_download, cache_dir=cache_dir)  # fmt: skip
    counts = [_count_rows(o.path) for o in p.orders]
    total = sum(counts) if all(c is not None for c in counts) else None
    bar = tqdm(total=total, unit="img", unit_scale=True, desc="embed", disable=not progress, dynamic_ncols=True)
    try:
        results = map_orders(functools.partial(embed_part, p.pipe), p.orders, progress=lambda d, s: bar.update(d))
    finally:
        bar.close()
    return finish(p, results)


def _save_npy(path: Path, arr: Any) -> None:
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, arr)

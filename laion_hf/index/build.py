"""``laion-hf index``: faiss image and text indexes over CLIP embeddings, in three steps.

``plan(src, out, ...) -> list[WorkOrder]`` opens the source, fingerprints its metadata,
chooses the index type per kind (image, text) from the vector count and ``max_index_memory``
and trains what needs training on a strided sample; ``run_one(order)`` adds one row range to
a copy of the trained index and writes it as a part file; ``finish(orders, results)``
assembles the parts in row order, tunes the search parameter on held-out queries and writes
``OUT/infos.json`` last. An engine only maps ``run_one`` over the orders (locally here, or
on Ray). Memory follows the batch and the sample, not the vector count (except the final
in-memory index itself); a killed run resumes: finished parts, trained indexes and
assembled kinds are kept under ``OUT/_work`` (removed once ``infos.json`` is written).

The index type, as autofaiss chooses it: exact ``Flat`` below ``FLAT_MAX_ROWS`` vectors,
``HNSW32`` while it fits the memory budget, ``OPQ{m}_{d},IVF{k}_HNSW32,PQ{m}x8`` beyond it,
and ``IVF{k},Flat`` with on-disk inverted lists when ``memory_mappable``. Vector ``i`` of
each index is row ``i`` of the metadata (Flat/HNSW by insertion order, IVF by explicit ids).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from laion_hf._util.atomic import atomic_write, atomic_write_json
from laion_hf.errors import KnnIndexError, LaionHFError
from laion_hf.index.layout import IMAGES_FILE, INFOS, index_family, index_file
from laion_hf.index.source import EmbeddingSource, metadata_fingerprint, open_source

FLAT_MAX_ROWS = 10_000
HNSW_M = 32
#: HNSW graph quality (faiss's default 40 leaves clustered data at recall@10 ~0.8 for small
#: efSearch at 200k vectors; 128 reached 1.0 at efSearch 32 on 50k, for 2.7x the build time)
HNSW_EF_CONSTRUCTION = 80
DEFAULT_MAX_INDEX_MEMORY = "8GB"
WORK = "_work"
_VERSION = 1


@dataclass(frozen=True)
class WorkOrder:
    """One row range of one kind to add to the trained index (picklable; Ray ships it)."""

    out: str
    kind: str
    number: int
    part: int
    start: int
    stop: int
    row_start: int
    index_key: str
    source: EmbeddingSource
    images: bool = False


# ---------------------------------------------------------------------------- choosing
def _nlist(n: int) -> int:
    """Inverted lists: a power of two near 4·sqrt(n), with >= 39 training points each."""
    k = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(k, 2 ** int(math.log2(max(1, n // 39))), 65536)))


def choose_index_key(n: int, dim: int, max_memory: int, memory_mappable: bool = False) -> str:
    """The faiss factory string for ``n`` vectors of ``dim`` floats within ``max_memory`` bytes."""
    if memory_mappable:
        return f"IVF{_nlist(n)},Flat"
    if n < FLAT_MAX_ROWS and n * dim * 4 <= max_memory:
        return "Flat"
    if n * (4 * dim + 2 * HNSW_M * 4 + 24) <= max_memory:
        return f"HNSW{HNSW_M}"
    k = _nlist(n)
    for m in (256, 128, 64, 32, 16, 8, 4):
        if dim % m == 0 and m <= dim and n * (m + 8) * 1.2 + k * dim * 4 * 2 + dim * dim * 4 <= max_memory:
            return f"OPQ{m}_{dim},IVF{k}_HNSW32,PQ{m}x8"
    raise KnnIndexError(f"{n:,} vectors of dim {dim} do not fit max_index_memory={max_memory:,} bytes even as "
                        "PQ4 codes: raise --max-index-memory or use --memory-mappable")  # fmt: skip


def _parse_memory(value: int | str) -> int:
    from laion_hf.shards.writer import parse_size

    try:
        return parse_size(value)
    except (ValueError, KeyError, LaionHFError) as e:
        raise KnnIndexError(f"max_index_memory={value!r}: {e}") from None


def _train_size(key: str, n: int) -> int:
    if index_family(key) != "ivf":
        return 0
    k = int(key.split("IVF", 1)[1].split(",")[0].split("_")[0])
    want = max(64 * k, 256 * 64 if "PQ" in key else 0)
    return int(min(n, want, 500_000))


# ---------------------------------------------------------------------------- plan
def _config(source: EmbeddingSource, keys: dict, settings: dict, fingerprint: dict) -> dict[str, Any]:
    return {
        "version": _VERSION, "source": source.root, "layout": source.layout, "rows": source.rows,
        "dim": source.dim, "kinds": list(keys), "index_keys": keys, "clip_model": source.model,
        "clip_pretrained": source.pretrained, "metadata": fingerprint, **settings,
    }  # fmt: skip


def plan(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_index_memory: int | str = DEFAULT_MAX_INDEX_MEMORY,
    memory_mappable: bool = False,
    index_key: str | None = None,
    kinds: Sequence[str] | None = None,
    batch_rows: int = 65536,
    recall_target: float = 0.95,
    latency_budget_ms: float = 10.0,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
    storage_options: dict | None = None,
) -> list[WorkOrder]:
    """Open ``src``, choose and train the indexes, and list the row ranges to add.

    ``index_key`` forces a faiss factory string for every kind (``Flat``, ``HNSW32``,
    ``IVF256,Flat``, ...). ``clip_model`` / ``clip_pretrained``: the CLIP model (and its
    weights) of the embeddings, recorded in ``infos.json`` for text and image queries, where the
    source does not record them. A folder holding a run with other settings is refused.
    """
    source = open_source(src, storage_options, clip_model, clip_pretrained)
    if source.rows == 0:
        raise KnnIndexError(f"{src}: no rows to index")
    want = tuple(kinds) if kinds else source.kinds
    bad = [k for k in want if k not in source.kinds]
    if bad:
        raise KnnIndexError(f"{src} has no {bad[0]} embeddings (it has {', '.join(source.kinds)})")
    mem = _parse_memory(max_index_memory)
    key = index_key or choose_index_key(source.rows, source.dim, mem, memory_mappable)
    if memory_mappable and index_family(key) != "ivf":
        raise KnnIndexError(f"memory_mappable needs an IVF index, not {key!r}")
    keys = {k: key for k in want}
    settings = {"max_index_memory": mem, "memory_mappable": memory_mappable, "batch_rows": batch_rows,
                "recall_target": recall_target, "latency_budget_ms": latency_budget_ms}  # fmt: skip
    config = _config(source, keys, settings, metadata_fingerprint(source.metadata_files(), storage_options))
    outp = Path(out)
    if not _reuse(outp, config):
        (outp / WORK).mkdir(parents=True, exist_ok=True)
        atomic_write_json(outp / WORK / "plan.json", config, indent=2)
        for kind in want:
            _train(source, kind, key, outp)
    chunks = source.chunks(batch_rows)
    return [WorkOrder(str(outp), kind, i, part, a, b, g, key, source, source.images and kind == want[0])
            for kind in want for i, (part, a, b, g) in enumerate(chunks)]  # fmt: skip


def _reuse(out: Path, config: dict) -> bool:
    """True when ``out`` already holds this finished index; refuses other settings."""
    for name in (INFOS, f"{WORK}/plan.json"):
        path = out / name
        if path.exists():
            old = json.loads(path.read_text())
            old_cfg = old.get("config", old)
            diff = [k for k in config if old_cfg.get(k) != config[k]]
            if diff:
                raise KnnIndexError(f"{out} holds an index built with other settings or data ({', '.join(diff)} "
                                    "differ): use another --out folder, or the same settings to resume")  # fmt: skip
            return name == INFOS
    return False


def _train(source: EmbeddingSource, kind: str, key: str, out: Path) -> None:
    import faiss

    path = out / WORK / f"{kind}.trained.index"
    if index_family(key) != "ivf" or path.exists():
        return
    n = _train_size(key, source.rows)
    positions = np.unique(np.linspace(0, source.rows - 1, n).astype(np.int64))
    sample = source.read_positions(kind, positions)
    sample = sample[np.linalg.norm(sample, axis=1) > 0]
    index = faiss.index_factory(source.dim, key, faiss.METRIC_INNER_PRODUCT)
    try:
        index.train(sample)
    except RuntimeError as e:
        raise KnnIndexError(f"cannot train {key} on {len(sample)} {kind} vectors: {e}") from None
    atomic_write(path, lambda p: faiss.write_index(index, str(p)))


# ---------------------------------------------------------------------------- run_one
@functools.lru_cache(maxsize=4)
def _trained(path: str, mtime: float) -> Any:
    import faiss

    return faiss.read_index(path)


def _part_path(order: WorkOrder) -> Path:
    return Path(order.out) / WORK / order.kind / f"part-{order.number:06d}.index"


def run_one(order: WorkOrder) -> dict[str, Any]:
    """Add one row range to (a copy of) the trained index and write it as a part file.

    Skipped when its part (or the whole index) is already written. Returns ``kind``,
    ``number``, ``rows``, ``missing`` (zero vectors, never returned by a search), ``skipped``.
    """
    import faiss

    out, part = Path(order.out), _part_path(order)
    stats_path = part.with_suffix(".json")
    if (out / INFOS).exists():
        return {
            "kind": order.kind,
            "number": order.number,
            "rows": order.stop - order.start,
            "skipped": True,
        }
    if part.exists() and stats_path.exists():
        return {**json.loads(stats_path.read_text()), "skipped": True}
    x = order.source.read(order.kind, order.part, order.start, order.stop)
    missing = order.row_start + np.flatnonzero(~(np.abs(x).sum(axis=1) > 0))
    if index_family(order.index_key) == "ivf":
        trained = out / WORK / f"{order.kind}.trained.index"
        index = faiss.clone_index(_trained(str(trained), trained.stat().st_mtime))
        index.add_with_ids(x, np.arange(order.row_start, order.row_start + len(x), dtype=np.int64))
    else:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
    part.parent.mkdir(parents=True, exist_ok=True)
    if order.images:  # the shards' image bytes, served base64 with the results
        images = pa.table({"image": order.source.read_images(order.part, order.start, order.stop)})
        atomic_write(part.with_suffix(".images.arrow"), lambda p: _write_ipc(p, [images]))
    np.save(part.with_suffix(".missing.npy"), missing.astype(np.int64))
    atomic_write(part, lambda p: faiss.write_index(index, str(p)))
    stats = {"kind": order.kind, "number": order.number, "rows": len(x), "missing": len(missing)}
    atomic_write_json(stats_path, stats)
    return {**stats, "skipped": False}


# ---------------------------------------------------------------------------- finish
def finish(orders: Sequence[WorkOrder], results: Sequence[dict]) -> dict[str, Any]:
    """Assemble each kind's parts in row order, tune its search parameter, write ``infos.json``
    (last) and remove the work folder. Returns the infos."""
    if not orders:
        raise KnnIndexError("no work orders to finish")
    out = Path(orders[0].out)
    if (out / INFOS).exists():
        return json.loads((out / INFOS).read_text())
    done = {(r["kind"], r["number"]) for r in results}
    lost = [o for o in orders if (o.kind, o.number) not in done]
    if lost:
        raise KnnIndexError(
            f"{len(lost)} work order(s) have no result (first: {lost[0].kind} rows "
            f"{lost[0].row_start}-{lost[0].row_start + lost[0].stop - lost[0].start})"
        )
    config = json.loads((out / WORK / "plan.json").read_text())
    source = orders[0].source
    kinds = {}
    for kind in config["kinds"]:
        mine = sorted((o for o in orders if o.kind == kind), key=lambda o: o.number)
        t0 = time.perf_counter()
        _assemble(out, kind, mine, config, source)
        kinds[kind] = {"assemble_seconds": round(time.perf_counter() - t0, 3)}
        if index_family(config["index_keys"][kind]) == "hnsw":
            kinds[kind]["build_params"] = {"efConstruction": HNSW_EF_CONSTRUCTION}
    images = _assemble_images(out, orders)
    from laion_hf.index.tune import tune_kind

    for kind in config["kinds"]:
        tuned_path = _tuned_path(out, kind)
        tuned = json.loads(tuned_path.read_text()) if tuned_path.exists() else None
        trained_on = _train_size(config["index_keys"][kind], source.rows)
        kinds[kind].update(tune_kind(out, kind, source, config, trained_on, tuned))
    infos = {k: config[k] for k in ("version", "rows", "dim", "clip_model", "clip_pretrained", "layout", "source")}
    infos.update(
        metadata=config["metadata"],
        metadata_files=source.metadata_files(),
        kinds=kinds,
        images=IMAGES_FILE if images else None,
        config=config,
    )
    atomic_write_json(out / INFOS, infos, indent=2)
    shutil.rmtree(out / WORK, ignore_errors=True)
    return infos


def _assemble(out: Path, kind: str, orders: list[WorkOrder], config: dict, source: EmbeddingSource) -> None:
    import faiss

    final_path = index_file(out, kind)
    if final_path.exists():
        return
    key = config["index_keys"][kind]
    family, parts = index_family(key), [str(_part_path(o)) for o in orders]
    missing = [np.load(Path(p).with_suffix(".missing.npy")) for p in parts]
    missing_all = np.concatenate(missing) if missing else np.zeros(0, np.int64)
    atomic_write(out / f"{kind}.missing.npy", lambda p: _save(p, missing_all))
    if family == "ivf" and config["memory_mappable"]:
        from faiss.contrib.ondisk import merge_ondisk

        index = faiss.read_index(str(out / WORK / f"{kind}.trained.index"))
        data = out / f"{kind}.ivfdata"
        data.unlink(missing_ok=True)
        merge_ondisk(index, parts, str(data))
    elif family == "ivf":
        index = faiss.read_index(str(out / WORK / f"{kind}.trained.index"))
        ivf = faiss.extract_index_ivf(index)
        for p in parts:
            part = faiss.read_index(p)
            ivf.merge_from(faiss.extract_index_ivf(part), 0)
        index.ntotal = ivf.ntotal
    elif family == "hnsw":
        index = faiss.index_factory(config["dim"], key, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        _add_hnsw(out, kind, index, parts, config, missing_all, source)
    else:
        index = faiss.IndexFlatIP(config["dim"])
        for p in parts:
            part = faiss.read_index(p)
            index.add(part.reconstruct_n(0, part.ntotal))
    if index.ntotal != config["rows"]:
        raise KnnIndexError(f"{kind} index holds {index.ntotal} vectors, the metadata {config['rows']} rows")
    atomic_write(final_path, lambda p: faiss.write_index(index, str(p)))


def _tuned_path(out: Path, kind: str) -> Path:
    return out / WORK / f"{kind}.tuned.json"


def _add_hnsw(
    out: Path, kind: str, index: Any, parts: list[str], config: dict, missing: np.ndarray, source: EmbeddingSource
) -> None:
    """Add the parts' vectors in row order, tuning the search parameter on the way: once the rows
    before the tail are in, on the tail's vectors (fresh queries, see ``tune.tune_prefix``)."""
    import faiss

    from laion_hf.index.tune import tail_cut, tune_prefix

    cut = tail_cut(config["rows"])
    for p in parts:
        part = faiss.read_index(p)
        x = part.reconstruct_n(0, part.ntotal)
        del part  # not held while tuning
        head = int(np.clip(cut - index.ntotal, 0, len(x)))
        if head < len(x) and index.ntotal + head == cut and cut < config["rows"]:
            if head:
                index.add(x[:head])
            tuned = tune_prefix(index, kind, source, config, missing)
            if tuned is not None:
                atomic_write_json(_tuned_path(out, kind), tuned, indent=2)
            x = x[head:]
        index.add(x)


def _write_ipc(path: Path, tables: Any) -> None:
    """Tables (an iterable, read one at a time) into one Arrow IPC file."""
    writer = None
    for t in tables:
        if writer is None:
            writer = pa.ipc.new_file(str(path), t.schema)
        writer.write_table(t)
    if writer is not None:
        writer.close()


def _assemble_images(out: Path, orders: Sequence[WorkOrder]) -> bool:
    """``OUT/images.arrow``: the image bytes of every row in row order, when the shards hold them."""
    mine = sorted((o for o in orders if o.images), key=lambda o: o.number)
    if not mine:
        return False
    if not (out / IMAGES_FILE).exists():
        parts = (
            pa.ipc.open_file(pa.memory_map(str(_part_path(o).with_suffix(".images.arrow")))).read_all() for o in mine
        )
        atomic_write(out / IMAGES_FILE, lambda p: _write_ipc(p, parts))
    return True


def _save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


# ---------------------------------------------------------------------------- local engine
def build_index(
    src: str | os.PathLike, out: str | os.PathLike, *, progress: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """``plan`` → ``run_one`` for each order (in this process) → ``finish``; returns the infos.
    Keyword arguments are :func:`plan`'s."""
    from tqdm.auto import tqdm

    orders = plan(src, out, **kwargs)
    results = [run_one(o) for o in tqdm(orders, desc="index", unit="part", disable=not progress)]
    return finish(orders, results)


def order_dict(order: WorkOrder) -> dict[str, Any]:
    """A work order as plain data (for logs)."""
    d = asdict(order)
    d["source"] = order.source.root
    return d

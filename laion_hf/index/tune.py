"""Tuning an index's search parameter (efSearch for HNSW, nprobe for IVF) on held-out queries:
the smallest value whose recall@10 against exact search reaches the target, within a
per-query latency budget (autofaiss's rule)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from laion_hf.index.source import EmbeddingSource

K = 10
MAX_QUERIES = 500
LATENCY_QUERIES = 100


def held_out_queries(
    source: EmbeddingSource, kind: str, train_rows: int, n: int = MAX_QUERIES
) -> tuple[np.ndarray, np.ndarray | None]:
    """Query vectors from rows outside the training sample: the other modality's vectors when
    the source has them (a caption searching images, as users do), else this kind's. Returns
    ``(queries, rows)``: ``rows`` are the queries' own row numbers when they are vectors of this
    very index (to be left out of both result lists, as if held out), else None."""
    rows = source.rows
    train = np.unique(np.linspace(0, rows - 1, train_rows).astype(np.int64)) if train_rows else np.zeros(0, np.int64)
    pool = np.setdiff1d(np.arange(rows, dtype=np.int64), train) if len(train) < rows else np.arange(rows)
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(pool, size=min(len(pool), 4 * n), replace=False))
    other = [k for k in source.kinds if k != kind]
    for k in other + [kind]:
        q = source.read_positions(k, pos)
        keep = np.abs(q).sum(axis=1) > 0
        if keep.any():
            return q[keep][:n], (pos[keep][:n] if k == kind else None)
    return np.zeros((0, source.dim), np.float32), None


def without_self(found: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray | None, k: int) -> list:
    """Each query's results without its own row (leave-one-out), cut to ``k``."""
    if rows is None:
        return [(d[:k], i[:k]) for d, i in found]
    return [(d[i != r][:k], i[i != r][:k]) for (d, i), r in zip(found, rows)]


def recall_at(found: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray, k: int = K) -> float:
    """Mean fraction of the exact top ``k`` (ids ``>= 0``) that the search returned."""
    scores = []
    for (_, ids), t in zip(found, truth):
        t = t[:k][t[:k] >= 0]
        if len(t):
            scores.append(len(np.intersect1d(ids[:k], t)) / len(t))
    return float(np.mean(scores)) if scores else 1.0


def latency_ms(index: Any, queries: np.ndarray, params: dict, k: int = K) -> tuple[float, float]:
    """p50 and p99 milliseconds of one-query searches."""
    times = []
    for q in queries[:LATENCY_QUERIES]:
        t0 = time.perf_counter()
        index.search(q[None], k, params)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _candidates(index: Any) -> tuple[str | None, list[int]]:
    if index.family == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    if index.family == "ivf":
        import faiss

        nlist = faiss.extract_index_ivf(index.index).nlist
        return "nprobe", [p for p in (2**i for i in range(17)) if p <= nlist]
    return None, [0]


def tune_kind(out: Path, kind: str, source: EmbeddingSource, config: dict, trained_on: int) -> dict[str, Any]:
    """Load ``out``'s ``kind`` index, sweep its parameter and return what ``infos.json`` records
    (queries are held out from the first ``trained_on`` vectors, the training sample)."""
    from laion_hf.index.search import KnnIndex, exact_search

    key = config["index_keys"][kind]
    infos = {"kinds": {kind: {}}, "config": config, "dim": config["dim"]}
    index = KnnIndex(out, kind, infos)
    queries, own = held_out_queries(source, kind, trained_on)
    extra = 0 if own is None else 1
    truth_d, truth_i = exact_search(source, kind, queries, K + extra)
    truth = np.array([i for _, i in without_self(list(zip(truth_d, truth_i)), own, K)])
    name, values = _candidates(index)
    target, budget = config["recall_target"], config["latency_budget_ms"]
    sweep, chosen = [], None
    for v in values:
        params = {name: v} if name else {}
        rec = recall_at(without_self(index.search(queries, K + extra, params), own, K), truth)
        p50, p99 = latency_ms(index, queries, params)
        sweep.append({"params": params, "recall_at_10": round(rec, 4), "latency_ms_p50": round(p50, 3),
                      "latency_ms_p99": round(p99, 3)})  # fmt: skip
        if p50 > budget and chosen is not None:
            break
        chosen = sweep[-1]
        if rec >= target:
            break
    size = sum(p.stat().st_size for p in Path(out).glob(f"{kind}.*") if p.suffix in (".index", ".ivfdata"))
    return {
        "index_key": key, "search_params": chosen["params"], "recall_at_10": chosen["recall_at_10"],
        "recall_target": target, "target_met": chosen["recall_at_10"] >= target,
        "latency_ms_p50": chosen["latency_ms_p50"], "latency_ms_p99": chosen["latency_ms_p99"],
        "latency_budget_ms": budget, "queries": len(queries), "sweep": sweep,
        "count": index.ntotal, "missing": len(index.missing), "size_bytes": int(size),
        "file": f"{kind}.index",
    }  # fmt: skip

"""Tuning an index's search parameter (efSearch for HNSW, nprobe for IVF) on held-out queries:
the smallest value whose recall@10 against exact search reaches the target (with a margin for
the sampling error of the queries: the mean less 1.645 standard errors), within a per-query
latency budget (autofaiss's rule).

Queries must be fresh: not vectors of the searched index. A vector of a graph index (HNSW)
reaches its neighbours through its own edges, so leave-one-out queries overstate the recall of
real queries (0.957 tuned vs 0.904 on fresh queries at 200k vectors). A graph index is therefore
tuned while it is built (:func:`tune_prefix`): after the rows before :func:`tail_cut` are added,
on queries from the last rows (not yet in the graph), against exact search over the rows added;
the tail is added afterwards. IVF indexes (a query's own row does not help find its neighbours)
are tuned on the finished index with leave-one-out queries outside the training sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from laion_hf.index.source import EmbeddingSource

K = 10
MAX_QUERIES = 500
LATENCY_QUERIES = 100
#: one-sided 95 % normal quantile: the chosen value's mean recall less this many standard errors
#: of the per-query recalls must reach the target
MARGIN_Z = 1.645


def tail_cut(rows: int, n: int = MAX_QUERIES) -> int:
    """First row of the tail whose vectors are a graph index's tuning queries (at most ``n`` rows
    and a tenth of the index); ``rows`` when the index is too small to spare one."""
    return rows - min(n, rows // 10)


def tail_queries(source: EmbeddingSource, kind: str, cut: int, n: int = MAX_QUERIES) -> np.ndarray:
    """The vectors of rows ``cut..`` as queries: the other modality's when the source has them
    (a caption searching images, as users do), else this kind's; rows without one left out."""
    pos = np.arange(cut, source.rows, dtype=np.int64)
    for k in [k for k in source.kinds if k != kind] + [kind]:
        q = source.read_positions(k, pos)
        keep = np.abs(q).sum(axis=1) > 0
        if keep.any():
            return q[keep][:n]
    return np.zeros((0, source.dim), np.float32)


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


def recall_scores(found: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray, k: int = K) -> np.ndarray:
    """Per query, the fraction of the exact top ``k`` (ids ``>= 0``) that the search returned."""
    scores = []
    for (_, ids), t in zip(found, truth):
        t = t[:k][t[:k] >= 0]
        if len(t):
            scores.append(len(np.intersect1d(ids[:k], t)) / len(t))
    return np.asarray(scores, dtype=np.float64)


def recall_at(found: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray, k: int = K) -> float:
    """Mean fraction of the exact top ``k`` (ids ``>= 0``) that the search returned."""
    scores = recall_scores(found, truth, k)
    return float(scores.mean()) if len(scores) else 1.0


def lower_bound(scores: np.ndarray) -> float:
    """Mean less ``MARGIN_Z`` standard errors (1.0 without scores)."""
    if not len(scores):
        return 1.0
    return float(scores.mean() - MARGIN_Z * scores.std() / np.sqrt(len(scores)))


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
        # 1M rows needed 1024; bigger indexes may need more (the latency budget still ends the sweep)
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    if index.family == "ivf":
        import faiss

        nlist = faiss.extract_index_ivf(index.index).nlist
        return "nprobe", [p for p in (2**i for i in range(17)) if p <= nlist]
    return None, [0]


def sweep_params(index: Any, queries: np.ndarray, truth: np.ndarray, own: np.ndarray | None, config: dict) -> dict:
    """Sweep ``index``'s parameter from the smallest value: stop at the first whose recall (its
    lower bound) reaches ``config["recall_target"]``, or past the latency budget. Returns the
    chosen values and the sweep, as ``infos.json`` records them."""
    extra = 0 if own is None else 1
    name, values = _candidates(index)
    target, budget = config["recall_target"], config["latency_budget_ms"]
    sweep, chosen = [], None
    for v in values:
        params = {name: v} if name else {}
        scores = recall_scores(without_self(index.search(queries, K + extra, params), own, K), truth)
        rec = float(scores.mean()) if len(scores) else 1.0
        p50, p99 = latency_ms(index, queries, params)
        sweep.append({"params": params, "recall_at_10": round(rec, 4), "recall_at_10_low": round(lower_bound(scores), 4),
                      "latency_ms_p50": round(p50, 3), "latency_ms_p99": round(p99, 3)})  # fmt: skip
        if p50 > budget and chosen is not None:
            break
        chosen = sweep[-1]
        if chosen["recall_at_10_low"] >= target:
            break
    return {
        "search_params": chosen["params"], "recall_at_10": chosen["recall_at_10"],
        "recall_at_10_low": chosen["recall_at_10_low"], "recall_target": target,
        "target_met": chosen["recall_at_10_low"] >= target, "latency_ms_p50": chosen["latency_ms_p50"],
        "latency_ms_p99": chosen["latency_ms_p99"], "latency_budget_ms": budget, "queries": len(queries),
        "sweep": sweep,
    }  # fmt: skip


def tune_prefix(index: Any, kind: str, source: EmbeddingSource, config: dict, missing: np.ndarray) -> dict | None:
    """Tune a graph index being built, which holds the rows before ``tail_cut(rows)`` so far, on
    the tail's vectors (fresh queries: not in the graph) against exact search over those rows.
    None when the source has no tail to spare or no query vector in it."""
    from laion_hf.index.search import KnnIndex, exact_search

    cut = int(index.ntotal)
    queries = tail_queries(source, kind, cut)
    if not len(queries) or cut < K:
        return None
    knn = KnnIndex.in_memory(index, config["index_keys"][kind], kind, missing[missing < cut])
    truth = exact_search(source, kind, queries, K, stop_row=cut)[1]
    return {**sweep_params(knn, queries, truth, None, config), "queries_from": f"rows {cut}-{source.rows - 1}",
            "tuned_on_rows": cut}  # fmt: skip


def tune_kind(
    out: Path, kind: str, source: EmbeddingSource, config: dict, trained_on: int, tuned: dict | None = None
) -> dict[str, Any]:
    """Load ``out``'s ``kind`` index and return what ``infos.json`` records: ``tuned`` (from
    :func:`tune_prefix` while building) when given, else a sweep on held-out queries (outside
    the first ``trained_on`` vectors, the training sample; leave-one-out when they are rows)."""
    from laion_hf.index.search import KnnIndex, exact_search

    key = config["index_keys"][kind]
    infos = {"kinds": {kind: {}}, "config": config, "dim": config["dim"]}
    index = KnnIndex(out, kind, infos)
    if tuned is None:
        queries, own = held_out_queries(source, kind, trained_on)
        extra = 0 if own is None else 1
        truth_d, truth_i = exact_search(source, kind, queries, K + extra)
        truth = np.array([i for _, i in without_self(list(zip(truth_d, truth_i)), own, K)])
        tuned = sweep_params(index, queries, truth, own, config)
    size = sum(p.stat().st_size for p in Path(out).glob(f"{kind}.*") if p.suffix in (".index", ".ivfdata"))
    return {
        "index_key": key, **tuned, "count": index.ntotal, "missing": len(index.missing), "size_bytes": int(size),
        "file": f"{kind}.index",
    }  # fmt: skip

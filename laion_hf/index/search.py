"""Searching a built index: :class:`KnnIndex` (one kind, its tuned search parameter), exact
search over a source (the ground truth), and clip back's post-filter (dedup)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from laion_hf.errors import KnnIndexError
from laion_hf.index.layout import INFOS, index_family, index_file
from laion_hf.index.source import EmbeddingSource

DEDUP_THRESHOLD = 0.94


def read_infos(out: str | Path) -> dict[str, Any]:
    """``OUT/infos.json`` of a finished index (a clear error when absent or unfinished)."""
    path = Path(out) / INFOS
    if not path.exists():
        raise KnnIndexError(f"{out}: no {INFOS}; not an index folder, or `laion-hf index` has not finished")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise KnnIndexError(f"{path}: not valid JSON ({e})") from None


def faiss_params(family: str, params: dict, k: int, hnsw_quantizer: bool = False) -> list:
    """faiss ``SearchParameters`` for one call (thread-safe: nothing set on the index), first in
    a list that also keeps the nested parameters alive; empty for exact indexes."""
    import faiss

    if family == "hnsw":
        return [faiss.SearchParametersHNSW(efSearch=max(int(params.get("efSearch", 16)), k))]
    if family == "ivf":
        nprobe = int(params.get("nprobe", 1))
        if hnsw_quantizer:
            quant = faiss.SearchParametersHNSW(efSearch=max(2 * nprobe, 16))
            return [faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=quant), quant]
        return [faiss.SearchParametersIVF(nprobe=nprobe)]
    return []


class KnnIndex:
    """One kind (``image`` or ``text``) of an index folder, ready to search."""

    def __init__(self, out: str | Path, kind: str, infos: dict[str, Any] | None = None) -> None:
        import faiss

        self.out, self.kind = Path(out), kind
        self.infos = infos or read_infos(out)
        if kind not in self.infos["kinds"]:
            raise KnnIndexError(f"{out} has no {kind} index (it has {', '.join(self.infos['kinds'])})")
        self.key = self.infos["config"]["index_keys"][kind]
        self.family = index_family(self.key)
        self.params = dict(self.infos["kinds"][kind].get("search_params") or {})
        path = index_file(self.out, kind)
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if (self.out / f"{kind}.ivfdata").exists() else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise KnnIndexError(f"cannot read {path}: {e}") from None
        missing_path = self.out / f"{kind}.missing.npy"
        self._attach(index, np.load(missing_path) if missing_path.exists() else np.zeros(0, np.int64))

    @classmethod
    def in_memory(cls, index: Any, key: str, kind: str, missing: np.ndarray, params: dict | None = None) -> KnnIndex:
        """A faiss ``index`` being built (not read from a folder), searched like a finished one:
        the tuning of a graph index on the rows added so far."""
        self = cls.__new__(cls)
        self.out, self.kind, self.infos = None, kind, {}
        self.key, self.family, self.params = key, index_family(key), dict(params or {})
        self._attach(index, np.asarray(missing, np.int64))
        return self

    def _attach(self, index: Any, missing: np.ndarray) -> None:
        import faiss

        self.index, self.missing = index, missing
        self._hnsw_quantizer = False
        if self.family == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.make_direct_map(True)
            self._hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)

    @property
    def ntotal(self) -> int:
        """Vectors in the index (= metadata rows)."""
        return int(self.index.ntotal)

    def set_params(self, params: dict) -> None:
        """Use ``params`` (``{"efSearch": n}`` / ``{"nprobe": n}``) from now on."""
        self.params = dict(params)

    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top ``k`` per query as ``(similarities, ids)`` in score order; rows without a vector are
        never returned (so a result may be shorter than ``k``)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = int(min(k, self.ntotal))
        extra = int(min(len(self.missing), k, self.ntotal - k))
        p = faiss_params(
            self.family,
            params if params is not None else self.params,
            k + extra,
            self._hnsw_quantizer,
        )
        D, ids = self.index.search(q, k + extra, params=p[0]) if p else self.index.search(q, k + extra)
        out = []
        for d, i in zip(D, ids):
            keep = i >= 0
            if len(self.missing):
                keep &= ~np.isin(i, self.missing)
            out.append((d[keep][:k], i[keep][:k]))
        return out

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (approximate for PQ indexes), float32."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.infos["dim"]), np.float32)
        return self.index.reconstruct_batch(ids)


def exact_search(
    source: EmbeddingSource,
    kind: str,
    queries: np.ndarray,
    k: int,
    batch_rows: int = 16384,
    stop_row: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` over every vector of ``source`` (rows without a vector
    excluded; only rows before ``stop_row`` when given), reading chunk by chunk:
    ``(similarities, ids)``, ``-1`` ids where fewer exist."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    best_d = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for part, a, b, g in source.chunks(batch_rows):
        if stop_row is not None:
            if g >= stop_row:
                break
            b = min(b, a + stop_row - g)
        x = source.read(kind, part, a, b)
        sims = q @ x.T
        sims[:, ~(np.abs(x).sum(axis=1) > 0)] = -np.inf
        d = np.concatenate([best_d, sims], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(g, g + len(x)), sims.shape)], axis=1)
        top = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
    best_i[~np.isfinite(best_d)] = -1
    return best_d, best_i


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T``; small products in float64 without BLAS threads (their wake-up costs tens of
    ms on a busy machine, more than the product), large ones in float32 with BLAS."""
    if len(a) * len(b) <= 1 << 18:
        return np.einsum("ij,kj->ik", a, b)  # float64: matches a float64 reference exactly
    return a.astype(np.float32) @ b.astype(np.float32).T


def duplicates(embeddings: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> np.ndarray:
    """clip back's dedup: positions (in rank order) that are not the best-ranked member of their
    connected component of the "similarity > threshold" graph (faiss range search's rule).
    Returns a boolean mask. Components by min-label propagation with pointer jumping (numpy)."""
    n = len(embeddings)
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rows, cols = [], []
    for s in range(0, n, 2048):
        r, c = np.nonzero(_gram(x[s : s + 2048], x[s:]) > threshold)
        keep = c > r  # upper triangle: c is relative to s
        rows.append(r[keep] + s)
        cols.append(c[keep] + s)
    r, c = np.concatenate(rows), np.concatenate(cols)
    labels = np.arange(n)
    while len(r):
        m = np.minimum(labels[r], labels[c])
        new = labels.copy()
        np.minimum.at(new, r, m)
        np.minimum.at(new, c, m)
        new = new[new]
        if np.array_equal(new, labels):
            break
        labels = new
    return labels != np.arange(n)

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


#: below this many results, all pairs are compared directly (no grouping)
_DEDUP_DIRECT_MAX = 256
#: centres sampled per round of the ball cover; a round that covers fewer than
#: ``_COVER_MIN_GAIN`` points per centre ends the cover (the rest is compared with everything)
_COVER_CENTRES, _COVER_MIN_GAIN, _COVER_ROUNDS = 64, 4, 16
_BLOCK = 2048


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` in float32: small products with ``einsum`` (no BLAS threads: on a busy
    machine their synchronisation costs more than the product), large ones with BLAS."""
    if len(a) * len(b) <= 1 << 18:
        return np.einsum("ij,kj->ik", a, b)
    return a @ b.T


class _PairFinder:
    """Pairs of unit vectors with similarity > ``threshold``, decided as float64 all-pairs
    products decide them: float32 products first (error below ``margin`` for unit vectors), then
    the pairs within ``margin`` of the threshold again in float64."""

    def __init__(self, x: np.ndarray, threshold: float) -> None:
        self.x64, self.x32, self.t = x, x.astype(np.float32), float(threshold)
        self.margin = max(1e-5, 2 * (x.shape[1] + 2) * 2.0**-24)  # > (d+2)u: the float32 error bound
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []

    def block(self, a: np.ndarray, b: np.ndarray, upper: int = 0) -> None:
        """Pairs between positions ``a`` and ``b``; the first ``upper`` of ``b`` are ``a``
        itself (only pairs above the diagonal are taken there)."""
        if not len(a) or not len(b):
            return
        g = _gram(self.x32[a], self.x32[b])
        rows = np.flatnonzero(g.max(axis=1) > self.t - self.margin)  # most rows have no pair
        if not len(rows):
            return
        i, j = np.nonzero(g[rows] > self.t - self.margin)
        i = rows[i]
        if upper:
            keep = (j >= upper) | (j > i)
            i, j = i[keep], j[keep]
        v = g[i, j]
        near = v <= self.t + self.margin
        if near.any():  # decide the pairs near the threshold in float64
            exact = np.einsum("ij,ij->i", self.x64[a[i[near]]], self.x64[b[j[near]]]) > self.t
            keep = ~near
            keep[np.flatnonzero(near)[exact]] = True
            i, j = i[keep], j[keep]
        self.rows.append(a[i])
        self.cols.append(b[j])

    def upper_triangle(self, pos: np.ndarray, others: np.ndarray) -> None:
        """Every pair within ``pos`` once, and every pair of ``pos`` x ``others``."""
        for s in range(0, len(pos), _BLOCK):
            a = pos[s : s + _BLOCK]
            self.block(a, np.concatenate([a, pos[s + _BLOCK :], others]), upper=len(a))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The pairs found so far."""
        if not self.rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.rows), np.concatenate(self.cols)


def _ball_cover(x32: np.ndarray, radius: float, pad: float) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, Any]:
    """Groups of points within about ``radius`` (an angle) of a centre (a point), by rounds of
    sampled centres; stops when a round covers too few. Returns ``(groups, centres, radii,
    rest, angle)``: member positions per group, the centres' positions, each group's angular
    radius (from float32 products, plus ``pad``: their largest angle error), the positions in no
    group, and each point's angle to its centre (float32 products, without the pad)."""
    todo = np.arange(len(x32))
    label = np.full(len(x32), -1, np.int64)
    angle = np.zeros(len(x32))
    centres: list[np.ndarray] = []
    m = 0
    for _ in range(_COVER_ROUNDS):
        if not len(todo):
            break
        cand = todo[np.unique(np.linspace(0, len(todo) - 1, min(len(todo), _COVER_CENTRES)).astype(np.int64))]
        close = _gram(x32[cand], x32[cand]) >= np.cos(radius)
        keep = np.ones(len(cand), dtype=bool)
        for i in range(1, len(cand)):  # one centre per ball: drop those close to a kept one
            keep[i] = not (close[i, :i] & keep[:i]).any()
        cand = cand[keep]
        sims = x32[todo] @ x32[cand].T  # one product per round: BLAS
        best = sims.argmax(axis=1)
        cos = sims[np.arange(len(todo)), best]
        ok = cos >= np.cos(radius)
        label[todo[ok]] = m + best[ok]
        angle[todo[ok]] = np.arccos(np.clip(cos[ok].astype(np.float64), -1.0, 1.0))
        centres.append(cand)
        m += len(cand)
        todo = todo[~ok]
        if ok.sum() < _COVER_MIN_GAIN * len(cand):
            break
    centre_pos = np.concatenate(centres) if centres else np.zeros(0, np.int64)
    member = np.flatnonzero(label >= 0)
    radii = np.zeros(m)
    np.maximum.at(radii, label[member], angle[member])
    order = np.argsort(label[member], kind="stable")
    bounds = np.searchsorted(label[member][order], np.arange(m + 1))
    groups = [member[order[bounds[g] : bounds[g + 1]]] for g in range(m)]
    used = [g for g in range(m) if len(groups[g])]
    return [groups[g] for g in used], centre_pos[used], radii[used] + pad, todo, angle


def similarity_graph(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(i, j)`` of unit float64 vectors with ``x[i] @ x[j] > threshold`` whose connected
    components are those of all such pairs (as a float64 all-pairs product finds them); every
    edge is such a pair. Large sets are grouped into balls first (a ball cover): two balls whose
    centres are further apart than the threshold's angle plus both radii hold no such pair (the
    triangle inequality of angles), so their products are skipped; the members certainly within
    the threshold's angle of their ball's centre are joined to it, and their pairs skipped."""
    n = len(x)
    finder = _PairFinder(x, threshold)
    if n <= _DEDUP_DIRECT_MAX or threshold <= -1:
        finder.upper_triangle(np.arange(n), np.zeros(0, np.int64))
        return finder.pairs()
    delta = float(np.arccos(min(threshold, 1.0)))
    # |arccos(a) - arccos(b)| <= arccos(1 - |a - b|): the angles' error from float32 products
    pad = float(np.arccos(1.0 - finder.margin)) + 1e-9
    groups, centres, radii, rest, angle = _ball_cover(finder.x32, min(delta, 0.5), pad)
    if len(rest) > 0.75 * n:  # little structure: the balls would cost more than they save
        groups, rest = [], np.arange(n)
    if groups:
        c = x[centres]
        gap = np.arccos(np.clip(c @ c.T, -1.0, 1.0)) - radii[:, None] - radii[None, :]
        near = gap <= delta + 1e-6
        for g, a in enumerate(groups):
            sure = (angle[a] + pad < delta - 1e-9) & (a != centres[g])  # similarity to the centre > threshold
            finder.rows.append(a[sure])
            finder.cols.append(np.full(int(sure.sum()), centres[g]))
            unsure = a[~sure]  # pairs of two sure members are joined through the centre already
            finder.block(unsure, np.concatenate([unsure, a[sure]]), upper=len(unsure))
            hs = np.flatnonzero(near[g, g + 1 :]) + g + 1
            if len(hs):
                finder.block(a, np.concatenate([groups[h] for h in hs]))
    grouped = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    finder.upper_triangle(rest, grouped)
    return finder.pairs()


def _components(n: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each node's smallest connected node (edges ``r``-``c``): min-label propagation with
    pointer jumping (numpy)."""
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
    return labels


def duplicates(embeddings: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> np.ndarray:
    """clip back's dedup: positions (in rank order) that are not the best-ranked member of their
    connected component of the "similarity > threshold" graph (faiss range search's rule), the
    similarities as a float64 product of the normalized vectors decides them. Returns a boolean
    mask."""
    n = len(embeddings)
    if n < 2:
        return np.zeros(n, dtype=bool)
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    r, c = similarity_graph(x, threshold)
    return _components(n, r, c) != np.arange(n)

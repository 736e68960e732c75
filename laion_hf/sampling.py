"""Deterministic sampling by a vectorized 64-bit hash of the key.

``sample=0.01`` keeps the same 1 % of rows on every run, machine and shard layout: a row is
kept when ``hash64(key) / 2**64 < fraction``. The hash is a polynomial rolling hash over the
UTF-8 bytes, finished with splitmix64, computed with numpy on the Arrow buffers (no
per-row Python).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.errors import FilterError

_P = np.uint64(0x100000001B3)  # odd multiplier (FNV prime)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_POWER_CACHE: dict[int, np.ndarray] = {}


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """``base ** arange(n)`` mod 2**64, from a table that grows as needed."""
    table = _POWER_CACHE.get(int(base))
    if table is None or len(table) < n:
        size = max(n, 1 << 16, 0 if table is None else 2 * len(table))
        table = np.full(size, base, dtype=np.uint64)
        table[0] = 1
        with np.errstate(over="ignore"):
            np.cumprod(table, out=table)
        _POWER_CACHE[int(base)] = table
    return table[:n]


def stable_hash64(values: pa.Array | pa.ChunkedArray, chunk_rows: int = 1 << 16) -> np.ndarray:
    """64-bit hash of each string (nulls hash like the empty string), as a uint64 array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not pa.types.is_string(values.type) and not pa.types.is_binary(values.type):
        values = pc.cast(values, pa.string())
    n = len(values)
    if n > chunk_rows:
        return np.concatenate([stable_hash64(values.slice(i, chunk_rows)) for i in range(0, n, chunk_rows)])
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    values = pc.fill_null(values, "")
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=n + 1, offset=values.offset * 4)
    start, end = int(offsets[0]), int(offsets[-1])
    raw = (
        np.frombuffer(values.buffers()[2], dtype=np.uint8, count=end - start, offset=start)
        if end > start
        else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets).astype(np.int64)
    # position of each byte inside its own string -> weight P**pos (table as long as the longest string)
    pos = np.arange(len(raw), dtype=np.int64) - np.repeat(offsets[:-1].astype(np.int64) - start, lengths)
    with np.errstate(over="ignore"):
        weights = _powers(_P, int(lengths.max(initial=0)))[pos]
        prefix = np.zeros(len(raw) + 1, dtype=np.uint64)
        np.cumsum((raw + np.uint64(1)) * weights, out=prefix[1:])
        rel = offsets.astype(np.int64) - start
        h = (prefix[rel[1:]] - prefix[rel[:-1]]) ^ lengths.astype(np.uint64)
        return _splitmix64(h)


def sample_mask(keys: pa.Array | pa.ChunkedArray, fraction: float, seed: int = 0) -> pa.Array:
    """Boolean mask keeping about ``fraction`` of rows, the same rows every run."""
    if not 0.0 < fraction <= 1.0:
        raise FilterError(f"sample must be in (0, 1], got {fraction!r}")
    if fraction >= 1.0:
        return pa.array(np.ones(len(keys), dtype=bool))
    h = stable_hash64(keys)
    if seed:
        with np.errstate(over="ignore"):
            h = _splitmix64(h ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    threshold = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
    return pa.array(h < threshold)

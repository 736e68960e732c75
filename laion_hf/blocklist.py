"""Hash blocklists, applied before anything is fetched.

Re-LAION-5B removed links by matching MD5 / SHA-256 hash lists (from IWF, C3P and Stanford)
against the URLs. A :class:`Blocklist` loads one or more text files of hex digests (one
per line; ``#`` comments and blank lines ignored) into sorted fixed-width numpy byte
arrays: tens of millions of digests cost 16 or 32 bytes each (not ~100 bytes per Python
string), and membership is one vectorized ``np.searchsorted`` per batch.

The digest of a row is computed from ``column`` (``url`` by default): the MD5 / SHA-256 of
its UTF-8 text, or of the decimal text of an integer column such as LAION's ``hash``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from laion_hf.errors import BlocklistError

_ALGORITHMS = {32: "md5", 64: "sha256"}
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i


def _hex_to_bytes(lines: pa.Array, path: str, line_offset: int) -> dict[int, np.ndarray]:
    """Vectorized hex decoding of a column of digests, grouped by hex length."""
    lines = pc.utf8_lower(pc.utf8_trim_whitespace(lines))
    lines = lines.filter(pc.and_(pc.invert(pc.starts_with(lines, "#")), pc.not_equal(pc.utf8_length(lines), 0)))
    out: dict[int, np.ndarray] = {}
    lengths = pc.utf8_length(lines).to_numpy(zero_copy_only=False)
    for length in np.unique(lengths):
        sel = lines.filter(pa.array(lengths == length))
        if int(length) not in _ALGORITHMS:
            bad = sel[0].as_py()
            raise BlocklistError(
                f"{path}: {bad!r} is not an MD5 (32 hex digits) or SHA-256 (64 hex digits) digest "
                f"(near line {line_offset + 1})"
            )
        sel = sel.combine_chunks() if isinstance(sel, pa.ChunkedArray) else sel
        sel = pc.cast(sel, pa.string())
        offsets = np.frombuffer(sel.buffers()[1], dtype=np.int32, count=len(sel) + 1, offset=sel.offset * 4)
        raw = np.frombuffer(
            sel.buffers()[2], dtype=np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0])
        )
        nib = _HEX[raw].reshape(len(sel), int(length))
        if (nib == 255).any():
            row = int(np.nonzero((nib == 255).any(axis=1))[0][0])
            raise BlocklistError(f"{path}: {sel[row].as_py()!r} is not a hex digest")
        packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
        out[int(length)] = np.ascontiguousarray(packed).view(f"S{int(length) // 2}").ravel()
    return out


class Blocklist:
    """Sorted arrays of MD5 and SHA-256 digests, with vectorized membership tests.

    >>> bl = Blocklist.from_files(["iwf_md5.txt"])   # doctest: +SKIP
    >>> kept, removed = bl.filter_table(table)       # doctest: +SKIP
    """

    def __init__(self, digests: dict[str, np.ndarray], column: str = "url", sources: Sequence[str] = ()):
        self.digests = digests  # algorithm -> sorted unique array of fixed-width bytes
        self.column = column
        self.sources = list(sources)

    def __len__(self) -> int:
        return int(sum(len(v) for v in self.digests.values()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.digests.items())
        return f"Blocklist({counts}, column={self.column!r})"

    @classmethod
    def from_digests(cls, digests: Iterable[str], column: str = "url") -> "Blocklist":
        """Build from hex digest strings (mainly for small lists and tests)."""
        arr = pa.array(list(digests), pa.string())
        return cls(cls._finish([_hex_to_bytes(arr, "<digests>", 0)]), column=column)

    @classmethod
    def from_files(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], column: str = "url") -> "Blocklist":
        """Load text files of hex digests (one per line), streaming in blocks."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        parts: list[dict[int, np.ndarray]] = []
        for path in paths:
            path = os.fspath(path)
            if not os.path.isfile(path):
                raise BlocklistError(f"blocklist file not found: {path}")
            try:
                reader = pacsv.open_csv(
                    path,
                    read_options=pacsv.ReadOptions(column_names=["digest"], block_size=16 << 20),
                    parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False),
                    convert_options=pacsv.ConvertOptions(column_types={"digest": pa.string()}),
                )
                line = 0
                for batch in reader:
                    parts.append(_hex_to_bytes(batch.column(0), path, line))
                    line += batch.num_rows
            except BlocklistError:
                raise
            except (pa.ArrowInvalid, UnicodeDecodeError) as e:
                raise BlocklistError(f"{path}: cannot read as a text file of hex digests: {e}") from None
        return cls(cls._finish(parts), column=column, sources=[os.path.basename(os.fspath(p)) for p in paths])

    @staticmethod
    def _finish(parts: list[dict[int, np.ndarray]]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for length, algo in _ALGORITHMS.items():
            chunks = [p[length] for p in parts if length in p]
            if chunks:
                out[algo] = np.unique(np.concatenate(chunks))  # sorted, deduplicated
        return out

    def row_digests(self, values: pa.Array | pa.ChunkedArray, algorithm: str) -> np.ndarray:
        """Digest (fixed-width bytes) of each value's UTF-8 text; nulls digest the empty string."""
        fn = getattr(hashlib, algorithm)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = pc.cast(values, pa.string())
        texts = values.to_pylist()
        width = hashlib.new(algorithm).digest_size
        return np.array([fn((t or "").encode("utf-8")).digest() for t in texts], dtype=f"S{width}")

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean numpy array: True where the row's digest is on the list."""
        if self.column not in table.column_names:
            raise BlocklistError(
                f"blocklist column {self.column!r} not in the data; columns: {', '.join(table.column_names)}"
            )
        hit = np.zeros(table.num_rows, dtype=bool)
        if table.num_rows == 0:
            return hit
        col = table.column(self.column)
        for algo, listed in self.digests.items():
            if not len(listed):
                continue
            d = self.row_digests(col, algo)
            idx = np.searchsorted(listed, d)
            idx[idx == len(listed)] = 0
            hit |= listed[idx] == d
        return hit

    def filter_table(self, table: pa.Table) -> tuple[pa.Table, int]:
        """Drop listed rows; return ``(kept_table, removed_count)``."""
        hit = self.mask(table)
        removed = int(hit.sum())
        if removed == 0:
            return table, 0
        return table.filter(pa.array(~hit)), removed

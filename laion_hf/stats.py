"""Streaming statistics of LAION metadata: counts, quantiles, histograms, languages.

Memory is flat in the row count: every numeric column is accumulated into a fixed
fine-grained histogram (quantiles are read from it, to within one bin), languages into
a counter of distinct values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: column -> (low, high, log-scale) of its histogram range
HISTOGRAMS: dict[str, tuple[float, float, bool]] = {
    "similarity": (0.0, 0.6, False),
    "punsafe": (0.0, 1.0, False),
    "pwatermark": (0.0, 1.0, False),
    "aesthetic": (0.0, 10.0, False),
    "width": (1.0, 20000.0, True),
    "height": (1.0, 20000.0, True),
}
_FINE_BINS = 2000
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclass
class _Hist:
    low: float
    high: float
    log: bool
    counts: np.ndarray = field(default_factory=lambda: np.zeros(_FINE_BINS + 2, dtype=np.int64))
    nulls: int = 0
    total: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf

    def edges(self) -> np.ndarray:
        if self.log:
            return np.logspace(np.log10(self.low), np.log10(self.high), _FINE_BINS + 1)
        return np.linspace(self.low, self.high, _FINE_BINS + 1)

    def add(self, col: pa.ChunkedArray | pa.Array) -> None:
        self.nulls += col.null_count
        values = pc.drop_null(col).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        values = values[~np.isnan(values)]
        if not len(values):
            return
        self.total += float(values.sum())
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        idx = np.searchsorted(self.edges(), values, side="right")  # 0 = below, n+1 = above
        self.counts += np.bincount(idx, minlength=_FINE_BINS + 2)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float | None:
        n = self.count
        if not n:
            return None
        target = q * n
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        edges = self.edges()
        if i == 0:
            return self.minimum
        if i >= _FINE_BINS + 1:
            return self.maximum
        lo, hi = edges[i - 1], edges[i]
        before = cum[i - 1]
        inside = self.counts[i]
        frac = (target - before) / inside if inside else 0.0
        return float(min(max(lo + frac * (hi - lo), self.minimum), self.maximum))

    def coarse(self, bins: int = 20) -> dict[str, list]:
        fine = self.counts[1:-1].reshape(bins, -1).sum(axis=1)
        fine[0] += self.counts[0]
        fine[-1] += self.counts[-1]
        edges = self.edges()[:: _FINE_BINS // bins]
        return {"edges": [float(e) for e in edges], "counts": [int(c) for c in fine]}


class StatsAccumulator:
    """Accumulates :func:`compute_stats` over Arrow tables."""

    def __init__(self, columns: Iterable[str] | None = None):
        cols = list(columns) if columns is not None else list(HISTOGRAMS)
        self.hists = {c: _Hist(*HISTOGRAMS[c]) for c in cols if c in HISTOGRAMS}
        self.rows = 0
        self.languages: Counter[str] = Counter()
        self.extra: dict[str, _Hist] = {}

    def update(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for name, hist in self.hists.items():
            if name in table.column_names:
                hist.add(table.column(name))
            else:
                hist.nulls += table.num_rows
        if "language" in table.column_names:
            vc = pc.value_counts(pc.fill_null(table.column("language"), "(null)").combine_chunks())
            for item in vc.to_pylist():
                self.languages[item["values"]] += item["counts"]
        for name in table.column_names:  # scores added later in the pipeline (e.g. clip_similarity)
            if name.endswith(("similarity", "_score")) and name not in self.hists:
                hist = self.extra.setdefault(name, _Hist(-1.0, 10.0, False))
                hist.add(table.column(name))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "columns": {}}
        for name, hist in {**self.hists, **self.extra}.items():
            out["columns"][name] = {
                "count": hist.count,
                "nulls": hist.nulls,
                "mean": hist.total / hist.count if hist.count else None,
                "min": hist.minimum if hist.count else None,
                "max": hist.maximum if hist.count else None,
                "quantiles": {str(q): hist.quantile(q) for q in QUANTILES},
                "histogram": hist.coarse(),
            }
        out["languages"] = dict(self.languages.most_common())
        return out


def compute_stats(data: Any, **load_kwargs: Any) -> dict[str, Any]:
    """Statistics of a source path/URL (read with :func:`laion_hf.load_laion`), a ``datasets``
    dataset, a ``pa.Table`` or an iterable of tables."""
    acc = StatsAccumulator()
    for table in _tables(data, **load_kwargs):
        acc.update(table)
    return acc.result()


def _tables(data: Any, **load_kwargs: Any) -> Iterable[pa.Table]:
    import datasets

    if isinstance(data, pa.Table):
        yield data
        return
    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        yield from data.with_format("arrow").iter(batch_size=65_536)
        return
    if isinstance(data, (str, list, tuple)) or hasattr(data, "__fspath__"):
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], pa.Table):
            yield from data
            return
        from laion_hf.builder import make_builder

        builder = make_builder(data, **load_kwargs)
        yield from builder.iter_tables()
        return
    yield from data


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable text report of :func:`compute_stats`' result."""
    lines = [f"rows: {stats['rows']:,}"]
    for name, col in stats["columns"].items():
        if not col["count"]:
            lines.append(f"{name:>12}: (no values, {col['nulls']:,} null)")
            continue
        q = col["quantiles"]
        lines.append(
            f"{name:>12}: n={col['count']:,} null={col['nulls']:,} mean={col['mean']:.4g} "
            f"min={col['min']:.4g} p10={q['0.1']:.4g} p50={q['0.5']:.4g} p90={q['0.9']:.4g} max={col['max']:.4g}"
        )
    if stats["languages"]:
        top = ", ".join(f"{k}={v:,}" for k, v in list(stats["languages"].items())[:12])
        lines.append(f"   languages: {top}")
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], path: str) -> str:
    """Draw the histograms of :func:`compute_stats`' result into a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is in the 'plot' extra
        from laion_hf.errors import LaionHFError

        raise LaionHFError("plotting needs matplotlib: pip install 'laion-hf[plot]'") from e
    cols = [(n, c) for n, c in stats["columns"].items() if c["count"]]
    n = max(1, len(cols))
    ncols = 3
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for ax, (name, col) in zip(axes.ravel(), cols):
        ax.set_visible(True)
        edges = np.array(col["histogram"]["edges"])
        counts = np.array(col["histogram"]["counts"])
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0")
        if HISTOGRAMS.get(name, (0, 0, False))[2]:
            ax.set_xscale("log")
        ax.set_title(f"{name} (n={col['count']:,})")
    fig.suptitle(f"{stats['rows']:,} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

"""Score a ``clip_similarity >= t`` filter against the world's ground truth while a stream flows.

``FilterReport`` takes the tables of a stream (``clip_similarity``, ``matched``, ``caption`` and
the ``image`` column of :func:`laion_hf.with_images`), keeps only numbers and a few sample
pairs (memory flat in the row count), and gives the filter's precision and recall and a
contact sheet of kept and removed pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.world.sheet import Pair, contact_sheet
from laion_hf.world.teacher import filter_scores, roc_auc


class FilterReport:
    """Precision/recall of ``clip_similarity >= threshold`` vs the ``matched`` ground truth."""

    def __init__(self, threshold: float, samples: int = 12) -> None:
        self.threshold = float(threshold)
        self.samples = samples
        self._sim: list[np.ndarray] = []
        self._matched: list[np.ndarray] = []
        self.rows = 0
        self.missing = 0  # rows without a similarity (no image) or without ground truth
        self._pairs: dict[bool, list[Pair]] = {True: [], False: []}

    def update(self, table: pa.Table) -> None:
        """Add a batch of the stream."""
        self.rows += table.num_rows
        sim = table.column("clip_similarity")
        matched = table.column("matched") if "matched" in table.column_names else pa.nulls(table.num_rows, pa.bool_())
        ok = pc.and_(pc.is_valid(sim), pc.is_valid(matched))
        self.missing += table.num_rows - pc.sum(pc.cast(ok, pa.int64())).as_py()
        good = table.filter(ok)
        s = good.column("clip_similarity").to_numpy()
        m = np.asarray(good.column("matched").to_pylist(), bool)
        self._sim.append(s)
        self._matched.append(m)
        self._sample(good, s, m)

    def _sample(self, table: pa.Table, sim: np.ndarray, matched: np.ndarray) -> None:
        for i in range(table.num_rows):
            kept = bool(sim[i] >= self.threshold)
            if len(self._pairs[kept]) >= self.samples:
                continue
            image = table.column("image")[i].as_py() if "image" in table.column_names else None
            data = image.get("bytes") if isinstance(image, dict) else image
            caption = table.column("caption")[i].as_py() or ""
            self._pairs[kept].append(Pair(data, caption, float(sim[i]), kept, bool(matched[i])))

    def result(self) -> dict[str, Any]:
        """Counts, precision, recall and AUC over the rows seen so far."""
        sim = np.concatenate(self._sim) if self._sim else np.zeros(0)
        matched = np.concatenate(self._matched) if self._matched else np.zeros(0, bool)
        scores = filter_scores(sim, matched, self.threshold)
        return {
            "rows": self.rows,
            "scored": len(sim),
            "unscored": self.missing,
            "matched": int(matched.sum()),
            "noisy": int((~matched).sum()),
            "kept": int((sim >= self.threshold).sum()),
            "auc": roc_auc(sim, matched),
            **scores,
        }

    def sheet(self, title: str) -> bytes:
        """The contact sheet PNG of the sampled kept and removed pairs."""
        return contact_sheet(self._pairs[True] + self._pairs[False], title)


def format_report(r: dict[str, Any]) -> str:
    """Two lines for the demo: what the filter kept and how it agrees with the ground truth."""
    return (
        f"   clip_similarity >= {r['threshold']:.4f} keeps {r['kept']:,} of {r['scored']:,} pairs "
        f"({r['matched']:,} match their image, {r['noisy']:,} are noisy)\n"
        f"   vs ground truth: precision {r['precision']:.1%} (kept pairs that match), recall {r['recall']:.1%} "
        f"(matched pairs kept), noisy removed {r['removed_of_noisy']:.1%}, AUC {r['auc']:.3f}"
    )

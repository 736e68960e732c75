"""Scoring the world's teacher CLIP (``laion-hf-world``) against the world's ground truth.

The teacher's weights ship in the package (``laion_hf/clip/weights/laion-hf-world.*``) with a
metadata file that holds the similarity threshold chosen on validation pairs; these
functions measure it on freshly generated pairs (AUC of similarity for matched vs noisy
pairs, what the ``clip_similarity >= t`` filter keeps and removes, zero-shot accuracy per
attribute with prompts ``a photo of a {label}``).
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from laion_hf.world.attributes import PROMPT, ZERO_SHOT_LABELS
from laion_hf.world.render import render
from laion_hf.world.rows import world_rows

#: open_clip name of the teacher (config and weights shipped with laion-hf).
TEACHER_MODEL = "laion-hf-world"
_META = Path(__file__).resolve().parent.parent / "clip" / "weights" / f"{TEACHER_MODEL}.json"


@lru_cache(maxsize=1)
def teacher_meta() -> dict[str, Any]:
    """The shipped teacher's metadata: recipe, training time, validation threshold."""
    return json.loads(_META.read_text())


def teacher_threshold() -> float:
    """The ``clip_similarity`` threshold the demo filters with (chosen on validation pairs)."""
    return float(teacher_meta()["threshold"])


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` vs the rest (ties count half)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def filter_scores(similarity: np.ndarray, matched: np.ndarray, threshold: float) -> dict[str, float]:
    """What ``similarity >= threshold`` does to matched and noisy pairs."""
    keep = np.asarray(similarity) >= threshold
    matched = np.asarray(matched, bool)
    kept_matched = int((keep & matched).sum())
    return {
        "threshold": float(threshold),
        "kept_of_matched": kept_matched / max(1, int(matched.sum())),
        "removed_of_noisy": int((~keep & ~matched).sum()) / max(1, int((~matched).sum())),
        "precision": kept_matched / max(1, int(keep.sum())),
        "recall": kept_matched / max(1, int(matched.sum())),
    }


def _images(keys: list[str], max_side: int | None) -> list[Any]:
    from PIL import Image

    return [Image.open(io.BytesIO(render(k, max_side))) for k in keys]


def zero_shot(embedder: Any, image_emb: np.ndarray, rows: pa.Table) -> dict[str, float]:
    """Zero-shot accuracy per attribute (prompts ``a photo of a {label}``); position is scored
    on single-object images only."""
    out = {}
    for attr, labels in ZERO_SHOT_LABELS.items():
        values = list(labels)
        text = embedder.encode_text([PROMPT.format(label=labels[v]) for v in values])
        truth = rows.column(attr).to_pylist()
        pred = (image_emb @ text.T).argmax(1)
        hits = [values[p] == t for p, t in zip(pred, truth) if t != ""]
        out[attr] = float(np.mean(hits))
    return out


def evaluate_teacher(
    embedder: Any,
    n: int = 2000,
    *,
    seed: int = 7,
    noise: float = 0.5,
    max_side: int | None = 160,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Measure ``embedder`` on ``n`` fresh world pairs (``seed``; half of them noisy by default).

    ``max_side`` renders smaller copies of the images (the same pictures; ``None``: full size);
    ``threshold`` is the filter's cut (default: the teacher's, :func:`teacher_threshold`).
    """
    rows = world_rows(n, seed=seed, noise=noise)
    image_emb = embedder.encode_pil(_images(rows.column("key").to_pylist(), max_side))
    text_emb = embedder.encode_text(rows.column("caption").to_pylist())
    sim = (image_emb * text_emb).sum(1)
    matched = np.asarray(rows.column("matched").to_pylist(), bool)
    kinds = np.asarray([k.split(":")[0] for k in rows.column("noise_kind").to_pylist()])
    return {
        "pairs": n,
        "matched": int(matched.sum()),
        "noisy": int((~matched).sum()),
        "auc": roc_auc(sim, matched),
        "auc_by_noise_kind": {
            k: roc_auc(sim[matched | (kinds == k)], matched[matched | (kinds == k)]) for k in sorted(set(kinds) - {""})
        },
        "filter": filter_scores(sim, matched, teacher_threshold() if threshold is None else threshold),
        "zero_shot": zero_shot(embedder, image_emb, rows),
        "similarity_matched_mean": float(sim[matched].mean()),
        "similarity_noisy_mean": float(sim[~matched].mean()),
    }

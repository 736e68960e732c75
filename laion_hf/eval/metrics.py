"""Zero-shot metrics with CLIP_benchmark 1.6.2's definitions (numbers comparable with its tables).

Classification: the classifier of a class is the L2-normalised mean of the L2-normalised text
embeddings of its templates; logits are ``100 · normalize(image) @ classifier``. ``acc1`` and
``acc5`` are top-k accuracies (``acc5`` is NaN below 5 classes), ``mean_per_class_recall`` is
the balanced accuracy (the mean recall over the classes present in the targets).

Retrieval: ``image_retrieval_recall@k`` is, over captions, the share whose image is among the
k images scored highest; ``text_retrieval_recall@k`` is, over images, the share with at least
one of their captions among the k captions scored highest (an image without captions counts
as a miss). Like CLIP_benchmark, accuracies are float64 and recalls float32 means.

Ties: CLIP_benchmark ranks with ``torch.topk``, whose order among equal scores is not
specified (it differs between CPU and GPU). By default (``ties="index"``) the rule here is
fixed: among equal scores the lower index ranks first (as ``argmax``), so results are the same
on every device; ``ties="topk"`` makes the same ``torch.topk``/``argmax`` calls as CLIP_benchmark
(equal to it on the same device). Both agree whenever no scores tie exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from laion_hf.errors import EvalError

__all__ = [
    "TIES",
    "classification_logits",
    "classification_metrics",
    "classifier_from_text_embeddings",
    "retrieval_metrics",
]

_CHUNK = 1024


def classifier_from_text_embeddings(text_emb: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C·T, D)`` template embeddings, class-major → the ``(D, C)`` zero-shot classifier."""
    if num_classes < 1 or text_emb.shape[0] % num_classes:
        raise EvalError(f"{text_emb.shape[0]} template embeddings do not split into {num_classes} classes")
    per_class = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    per_class = per_class.reshape(num_classes, -1, per_class.shape[-1]).mean(dim=1)
    per_class = per_class / per_class.norm(dim=-1, keepdim=True)
    return per_class.t().contiguous()


def classification_logits(image_emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """``100 · normalize(image) @ classifier`` as float32."""
    image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    return (100.0 * image_emb @ classifier.to(image_emb.device)).float()


TIES = ("index", "topk")


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise EvalError(f"ties={ties!r}: use 'index' (lower index first) or 'topk' (torch.topk, as CLIP_benchmark)")


def _ranked(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best column indices per row; equal scores: lower index first."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, ties: str = "index") -> dict[str, float]:
    """``acc1``, ``acc5`` (NaN below 5 classes) and ``mean_per_class_recall`` of ``(N, C)``
    logits against ``(N,)`` integer targets. ``ties="topk"``: accuracies from ``torch.topk`` and
    the per-class recall from ``argmax``, exactly as CLIP_benchmark (device-dependent in ties)."""
    _check_ties(ties)
    n, num_classes = logits.shape
    if n == 0:
        raise EvalError("no samples to evaluate")
    target = target.to(logits.device).long()
    if int(target.min()) < 0 or int(target.max()) >= num_classes:
        raise EvalError(f"targets must lie in 0..{num_classes - 1}; got {int(target.min())}..{int(target.max())}")
    kmax = min(5, num_classes)
    top = _ranked(logits, kmax) if ties == "index" else logits.topk(kmax, 1, True, True).indices
    hit = top == target[:, None]
    acc1 = int(hit[:, 0].sum()) / n
    acc5 = int(hit[:, :5].any(dim=1).sum()) / n if num_classes >= 5 else float("nan")
    pred = (top[:, 0] if ties == "index" else logits.argmax(dim=1)).cpu().numpy()
    true = target.cpu().numpy()
    recalls = [float(np.mean(pred[true == c] == c)) for c in np.unique(true)]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls))}


def _hits_index(scores: torch.Tensor, positive: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per row and k: whether a positive column ranks in the top k, equal scores by index.
    The best positive (highest score, lowest index) decides; a row without positives misses."""
    best = torch.sort(scores.masked_fill(~positive, float("-inf")), dim=1, descending=True,
                      stable=True).indices[:, :1]  # fmt: skip
    s_best = scores.gather(1, best)
    idx = torch.arange(scores.shape[1], device=scores.device)[None, :]
    rank = ((scores > s_best) | ((scores == s_best) & (idx < best))).sum(dim=1)
    has = positive.any(dim=1)
    return {k: (rank < k) & has for k in ks}


def _hits_topk(scores: torch.Tensor, positive: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per row and k: whether ``torch.topk(scores, k)`` holds a positive (CLIP_benchmark's way)."""
    return {k: positive.gather(1, torch.topk(scores, k, dim=1).indices).any(dim=1) for k in ks}


def _check_retrieval(owner: torch.Tensor, n_img: int, n_txt: int, recall_k: Sequence[int]) -> None:
    if owner.shape != (n_txt,):
        raise EvalError(f"{n_txt} captions but {tuple(owner.shape)} image indices")
    if n_txt and (int(owner.min()) < 0 or int(owner.max()) >= n_img):
        raise EvalError(f"caption image indices must lie in 0..{n_img - 1}")
    for k in recall_k:
        if k < 1 or k > n_img or k > n_txt:
            raise EvalError(f"recall@{k}: k must be between 1 and the set size ({n_img} images, {n_txt} captions)")


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: Sequence[int] | torch.Tensor,
    recall_k: Sequence[int] = (1, 5, 10),
    ties: str = "index",
) -> dict[str, float]:
    """``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` for each ``k`` (see module
    docs). ``text_image_index[j]`` is the image of caption ``j``; embeddings are normalised here.
    ``ties="topk"`` ranks with ``torch.topk`` as CLIP_benchmark (device-dependent in ties)."""
    _check_ties(ties)
    image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1).to(image_emb.device)
    owner = torch.as_tensor(text_image_index, dtype=torch.long, device=image_emb.device)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    _check_retrieval(owner, n_img, n_txt, recall_k)
    hits = _hits_index if ties == "index" else _hits_topk
    img_hits: dict[int, list] = {k: [] for k in recall_k}
    txt_hits: dict[int, list] = {k: [] for k in recall_k}
    images = torch.arange(n_img, device=owner.device)
    for s in range(0, n_txt, _CHUNK):  # image retrieval: per caption, over images
        part = hits(
            text_emb[s : s + _CHUNK] @ image_emb.t(),
            owner[s : s + _CHUNK, None] == images[None, :],
            recall_k,
        )
        for k in recall_k:
            img_hits[k].append(part[k])
    for s in range(0, n_img, _CHUNK):  # text retrieval: per image, over captions
        scores = (text_emb @ image_emb[s : s + _CHUNK].t()).t()
        part = hits(scores, owner[None, :] == images[s : s + _CHUNK, None], recall_k)
        for k in recall_k:
            txt_hits[k].append(part[k])
    metrics = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = torch.cat(img_hits[k]).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = torch.cat(txt_hits[k]).float().mean().item()
    return metrics

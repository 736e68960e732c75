"""Zero-shot metrics with CLIP_benchmark 1.6.2's definitions (numbers comparable with its tables).

Classification: the classifier of a class is the L2-normalised mean of the L2-normalised text
embeddings of its templates; logits are ``100 · normalize(image) @ classifier``. ``acc1`` and
``acc5`` are top-k accuracies (``acc5`` is NaN below 5 classes), ``mean_per_class_recall`` is
the balanced accuracy (the mean recall over the classes present in the targets).

Retrieval: ``image_retrieval_recall@k`` is, over captions, the share whose image is among the
k images scored highest; ``text_retrieval_recall@k`` is, over images, the share with at least
one of their captions among the k captions scored highest (an image without captions counts
as a miss). Like CLIP_benchmark, accuracies are float64 and recalls float32 means.

Ties: CLIP_benchmark takes ``torch.topk``, whose order among equal scores is not specified.
Here the rule is fixed: among equal scores the lower index ranks first (as ``argmax``, and as
``topk`` does on the CPU), so results are the same on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from laion_hf.errors import EvalError

__all__ = [
    "classification_logits",
    "classification_metrics",
    "classifier_from_text_embeddings",
    "retrieval_metrics",
]

_CHUNK = 1024


def classifier_from_text_embeddings(text_emb: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C·T, D)`` template embeddings, class-major → the ``(D, C)`` zero-shot classifier."""
    if num_classes < 1 or text_emb.shape[0] % num_classes:
        raise EvalError(
            f"{text_emb.shape[0]} template embeddings do not split into {num_classes} classes"
        )
    per_class = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    per_class = per_class.reshape(num_classes, -1, per_class.shape[-1]).mean(dim=1)
    per_class = per_class / per_class.norm(dim=-1, keepdim=True)
    return per_class.t().contiguous()


def classification_logits(image_emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """``100 · normalize(image) @ classifier`` as float32."""
    image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    return (100.0 * image_emb @ classifier.to(image_emb.device)).float()


def _ranked(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best column indices per row; equal scores: lower index first."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` (NaN below 5 classes) and ``mean_per_class_recall`` of ``(N, C)``
    logits against ``(N,)`` integer targets."""
    n, num_classes = logits.shape
    if n == 0:
        raise EvalError("no samples to evaluate")
    target = target.to(logits.device).long()
    if int(target.min()) < 0 or int(target.max()) >= num_classes:
        raise EvalError(
            f"targets must lie in 0..{num_classes - 1}; got {int(target.min())}..{int(target.max())}"
        )
    top = _ranked(logits, min(5, num_classes))
    hit = top == target[:, None]
    acc1 = int(hit[:, 0].sum()) / n
    acc5 = int(hit[:, :5].any(dim=1).sum()) / n if num_classes >= 5 else float("nan")
    pred = top[:, 0].cpu().numpy()
    true = target.cpu().numpy()
    recalls = [float(np.mean(pred[true == c] == c)) for c in np.unique(true)]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls))}


def _rank_of(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of column ``pos[i]`` in row ``i``, equal scores ordered by index."""
    s_pos = scores.gather(1, pos[:, None])
    idx = torch.arange(scores.shape[1], device=scores.device)[None, :]
    better = (scores > s_pos) | ((scores == s_pos) & (idx < pos[:, None]))
    return better.sum(dim=1)


def _best_positive(
    scores: torch.Tensor, positive: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the highest-scored positive column (lowest index among equals), and whether any."""
    masked = scores.masked_fill(~positive, float("-inf"))
    best = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, 0]
    return best, positive.any(dim=1)


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: Sequence[int] | torch.Tensor,
    recall_k: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` for each ``k`` (see module docs).

    ``text_image_index[j]`` is the image of caption ``j``; embeddings are normalised here.
    """
    image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1).to(image_emb.device)
    owner = torch.as_tensor(text_image_index, dtype=torch.long, device=image_emb.device)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if owner.shape != (n_txt,):
        raise EvalError(f"{n_txt} captions but {tuple(owner.shape)} image indices")
    if n_txt and (int(owner.min()) < 0 or int(owner.max()) >= n_img):
        raise EvalError(f"caption image indices must lie in 0..{n_img - 1}")
    for k in recall_k:
        if k < 1 or k > n_img or k > n_txt:
            raise EvalError(
                f"recall@{k}: k must be between 1 and the set size "
                f"({n_img} images, {n_txt} captions)"
            )
    img_rank = torch.cat(
        [
            _rank_of(text_emb[s : s + _CHUNK] @ image_emb.t(), owner[s : s + _CHUNK])
            for s in range(0, n_txt, _CHUNK)
        ]
    )
    txt_rank, has_txt = [], []
    for s in range(0, n_img, _CHUNK):
        scores = image_emb[s : s + _CHUNK] @ text_emb.t()
        positive = (
            owner[None, :] == torch.arange(s, s + scores.shape[0], device=owner.device)[:, None]
        )
        best, any_pos = _best_positive(scores, positive)
        txt_rank.append(_rank_of(scores, best))
        has_txt.append(any_pos)
    t_rank, t_has = torch.cat(txt_rank), torch.cat(has_txt)
    metrics = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = (img_rank < k).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = ((t_rank < k) & t_has).float().mean().item()
    return metrics

"""The metrics of ``laion_hf.eval`` equal values computed here by hand from CLIP_benchmark's
definitions: on hand-written score matrices, and on the fixed small sets with the fixed tiny
model (embeddings computed here with open_clip's own transform and model calls)."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from bench_data import CLASSNAMES, TEMPLATES
from PIL import Image


def ranking(row) -> list[int]:
    """Column indices by decreasing score; equal scores: lower index first."""
    return sorted(range(len(row)), key=lambda j: (-float(row[j]), j))


# ---------------------------------------------------------------- hand-written matrices
def test_classification_metrics_by_hand():
    from laion_hf.eval import classification_metrics

    logits = torch.tensor(
        [
            [5.0, 1.0, 5.0, 0.0, 0.0, 0.0],  # tie 0/2 -> predicts 0
            [0.0, 2.0, 3.0, 1.0, 0.5, 0.4],  # predicts 2, class 1 second
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tied -> 0,1,2,3,4
            [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],  # predicts 5
            [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],  # predicts 5
        ]
    )
    target = torch.tensor([2, 1, 5, 5, 0])
    m = classification_metrics(logits, target)
    assert m["acc1"] == 1 / 5  # only sample 3
    # top5: s0 [0,2,1,3,4] has 2; s1 [2,1,3,4,5] has 1; s2 [0..4] lacks 5; s3 yes; s4 [5,0,..] yes
    assert m["acc5"] == 4 / 5
    # recalls: class 2: 0/1, class 1: 0/1, class 5: 1/2, class 0: 0/1 -> mean 0.125
    assert m["mean_per_class_recall"] == pytest.approx(0.125, abs=0)


def test_acc5_is_nan_below_five_classes():
    from laion_hf.eval import classification_metrics

    m = classification_metrics(torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]]), torch.tensor([1, 1, 1]))
    assert m["acc1"] == 1 / 3 and math.isnan(m["acc5"]) and m["mean_per_class_recall"] == 1 / 3


def test_retrieval_metrics_by_hand():
    from laion_hf.eval import retrieval_metrics

    images = torch.eye(4)
    images[3] = images[2]  # images 2 and 3 tie everywhere
    texts = torch.tensor([[1.0, 0.2, 0, 0], [0.9, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0.1], [0, 1.0, 0.5, 0]])
    owner = [0, 0, 3, 3, 1]  # image 2 has no caption
    m = retrieval_metrics(images, texts, owner, recall_k=(1, 2, 3))
    # image retrieval per caption: t0 -> img0 first; t1 -> img1 then img0 (rank 1);
    # t2 -> img2, img3 tie -> img3 at rank 1; t3 same; t4 -> img1 first
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@2"] == pytest.approx(1.0)
    # text retrieval per image: img0 scores [1, .9*, 0, 0, 0] (normalised: t0 .98, t1 .67) -> t0 first: hit;
    # img1: t4 (.89) > t1 (.74) > t0 -> its caption t4 first: hit; img2: no caption: miss;
    # img3 = img2's scores: t2 (1.0) first: hit
    assert m["text_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert m["text_retrieval_recall@3"] == pytest.approx(3 / 4)


# ---------------------------------------------------------------- the fixed model on the fixed sets
def _encode_images(tiny, samples) -> torch.Tensor:
    pixels = torch.stack([tiny.preprocess(Image.open(io.BytesIO(s.image))) for s in samples])
    with torch.no_grad():
        return F.normalize(tiny.model.encode_image(pixels), dim=-1)


def _encode_texts(tiny, texts) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(tiny.model.encode_text(tiny.tokenizer(texts)), dim=-1)


def test_zeroshot_classification_equals_hand_computation(tiny, class_dir, class_samples):
    from laion_hf.eval import evaluate

    feats = _encode_images(tiny, class_samples)
    weights = []
    for c in CLASSNAMES:
        e = _encode_texts(tiny, [t.format(c=c) for t in TEMPLATES]).mean(dim=0)
        weights.append(e / e.norm())
    logits = 100.0 * feats @ torch.stack(weights).t()
    assert torch.equal(logits[:, 0], logits[:, 3])  # "red" and "Red" tie
    ranks = [ranking(row) for row in logits]
    labels = [s.label for s in class_samples]
    n = len(labels)
    acc1 = sum(r[0] == y for r, y in zip(ranks, labels)) / n
    acc5 = sum(y in r[:5] for r, y in zip(ranks, labels)) / n
    recalls = [sum(r[0] == c for r, y in zip(ranks, labels) if y == c) / labels.count(c) for c in sorted(set(labels))]
    assert any(r[0] == 0 for r in ranks) or any(r.index(0) < 5 for r in ranks)  # the tie matters

    got = evaluate(tiny, str(class_dir), num_workers=2)
    assert got["task"] == "zeroshot_classification" and got["dataset"] == "shapes"
    assert got["metrics"]["acc1"] == pytest.approx(acc1, abs=1e-12)
    assert got["metrics"]["acc5"] == pytest.approx(acc5, abs=1e-12)
    assert got["metrics"]["mean_per_class_recall"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-12)
    assert 0 < acc5 < 1  # the numbers are not trivially 0 or 1


def test_zeroshot_retrieval_equals_hand_computation(tiny, retrieval_dir, retrieval_samples):
    from laion_hf.eval import evaluate

    img = _encode_images(tiny, retrieval_samples)
    captions = [c for s in retrieval_samples for c in s.captions]
    owner = [i for i, s in enumerate(retrieval_samples) for _ in s.captions]
    txt = _encode_texts(tiny, captions)
    scores = txt @ img.t()  # (captions, images)
    assert torch.equal(img[4], img[5])  # tied images
    got = evaluate(tiny, str(retrieval_dir), recall_k=(1, 2, 5, 10), num_workers=2)["metrics"]
    for k in (1, 2, 5, 10):
        img_hits = sum(owner[t] in ranking(scores[t])[:k] for t in range(len(captions)))
        txt_hits = sum(any(owner[t] == i for t in ranking(scores[:, i])[:k]) for i in range(len(retrieval_samples)))
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(img_hits / len(captions), abs=1e-6), k
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(txt_hits / len(retrieval_samples), abs=1e-6), k
    assert got["image_retrieval_recall@1"] < got["image_retrieval_recall@10"]


def test_tie_modes_agree_without_ties_and_topk_follows_torch():
    from laion_hf.errors import EvalError
    from laion_hf.eval import classification_metrics, retrieval_metrics

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(40, 7, generator=g), torch.randint(0, 7, (40,), generator=g)
    assert classification_metrics(logits, target, ties="topk") == classification_metrics(logits, target)
    img, txt = torch.randn(9, 8, generator=g), torch.randn(20, 8, generator=g)
    owner = torch.randint(0, 9, (20,), generator=g)
    by_index = retrieval_metrics(img, txt, owner, (1, 3))
    assert retrieval_metrics(img, txt, owner, (1, 3), ties="topk") == by_index
    # with ties, "topk" is whatever torch.topk picks: recompute it directly
    tied = torch.zeros(3, 4)
    tied[:, 0] = 1.0
    tgt = torch.tensor([0, 1, 2])
    pick = tied.topk(1, 1, True, True).indices[:, 0]
    assert classification_metrics(tied, tgt, ties="topk")["acc1"] == int((pick == tgt).sum()) / 3
    with pytest.raises(EvalError, match="ties='first'"):
        classification_metrics(logits, target, ties="first")


def test_text_embeddings_encode_each_distinct_text_once_in_order(tiny, monkeypatch):
    from laion_hf.eval.zeroshot import encode_texts

    texts = ["red", "a long caption about a purple square in the middle", "Red", "a square", "red"]
    calls = []
    encode = tiny.encode_token_batch
    monkeypatch.setattr(tiny, "encode_token_batch", lambda t: calls.append(len(t)) or encode(t))
    got = encode_texts(tiny, texts)
    assert sum(calls) == 3  # "red"/"Red"/"red" tokenise alike: encoded once
    assert torch.equal(got[0], got[2]) and torch.equal(got[0], got[4])
    assert torch.allclose(got, _encode_texts(tiny, texts), atol=1e-5)  # same rows, same order as one by one
    assert encode_texts(tiny, []).shape == (0, tiny.embed_dim)

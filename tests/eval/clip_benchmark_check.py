"""Compare laion_hf.eval with CLIP_benchmark 1.6.2's own code on the test sets (not a pytest
test: CLIP_benchmark is not a dependency). Run it in a separate environment, e.g.::

    python -m venv --system-site-packages /tmp/cbvenv
    /tmp/cbvenv/bin/pip install --no-deps clip_benchmark==1.6.2
    /tmp/cbvenv/bin/pip install "numpy<2.4" scikit-learn   # its accuracy() raises on numpy >= 2.4
    PYTHONPATH=. /tmp/cbvenv/bin/python tests/eval/clip_benchmark_check.py

It builds the fixed classification and retrieval sets of tests/eval (ties included), evaluates
the fixed tiny model with both (CLIP_benchmark reading the same tars through its
``build_wds_dataset``, fp32, no amp) and prints the metrics side by side: ours with
``ties="topk"`` (the same torch calls) must equal CLIP_benchmark's (exit status 1 when any
differs by more than 1e-6); the default ``ties="index"`` column differs only where scores tie
exactly (duplicate captions or images), where torch.topk's order is unspecified.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    from bench_data import CLASSNAMES, TEMPLATES, draw
    from clip_benchmark.datasets.builder import build_wds_dataset, image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_classification as zc
    from clip_benchmark.metrics import zeroshot_retrieval as zr

    from laion_hf.eval import EvalSample, evaluate, load_model, write_benchmark

    tmp = Path(tempfile.mkdtemp())
    cls = [EvalSample(f"s{i:03d}", draw(i), label=(i * 5) % 6) for i in range(19)]
    cls.append(EvalSample("s019", cls[7].image, label=2))
    write_benchmark(tmp / "c", cls, classnames=CLASSNAMES, templates=TEMPLATES, shard_size=7)
    caps = [["a red square", "a square"], ["a green circle"], ["a blue square", "a picture", "blue"],
            ["a yellow circle"], ["a purple square", "purple"], ["a purple square again"],
            ["a picture", "teal circle"], ["red circle", "a red ball"], ["green square"],
            ["a picture"], ["blue ball", "a blue circle", "circle"], ["yellow box"]]  # fmt: skip
    imgs = [draw(100 + i) for i in range(12)]
    imgs[5] = imgs[4]
    write_benchmark(
        tmp / "r",
        [EvalSample(f"r{i:02d}", imgs[i], captions=caps[i]) for i in range(12)],
        shard_size=5,
    )

    emb = load_model("laion-hf-tiny", device="cpu", precision="fp32", batch_size=8)
    ks = [1, 2, 5, 10]
    ours_c = evaluate(emb, str(tmp / "c"), num_workers=2, ties="topk")["metrics"]
    ours_r = evaluate(emb, str(tmp / "r"), recall_k=ks, num_workers=2, ties="topk")["metrics"]
    index_c = evaluate(emb, str(tmp / "c"), num_workers=2)["metrics"]
    index_r = evaluate(emb, str(tmp / "r"), recall_k=ks, num_workers=2)["metrics"]

    ds = build_wds_dataset("c", emb.preprocess, data_dir=str(tmp / "c"))
    dl = torch.utils.data.DataLoader(ds.batched(8), batch_size=None)
    dl.dataset.classes, dl.dataset.templates = ds.classes, ds.templates
    theirs_c = zc.evaluate(emb.model, dl, emb.tokenizer, ds.classes, ds.templates, device="cpu", amp=False)
    rds = build_wds_dataset("r", emb.preprocess, data_dir=str(tmp / "r"))
    rdl = torch.utils.data.DataLoader(rds, batch_size=8, collate_fn=image_captions_collate_fn)
    theirs_r = zr.evaluate(emb.model, rdl, emb.tokenizer, device="cpu", amp=False, recall_k_list=ks)

    bad = 0
    print(f"{'metric':28s} {'ties=topk':>14s} {'clip_benchmark':>14s} {'ties=index':>14s}")
    for ours, theirs, index in ((ours_c, theirs_c, index_c), (ours_r, theirs_r, index_r)):
        for k in theirs:
            a, b = ours[k], theirs[k]
            same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6
            bad += not same
            print(f"{k:28s} {a:14.10f} {b:14.10f} {index[k]:14.10f}  {'same' if same else 'DIFFERENT'}")
    print("all metrics equal" if not bad else f"{bad} metric(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

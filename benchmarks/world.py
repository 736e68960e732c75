"""The world's teacher CLIP on fresh held-out pairs, against the random-init CLIP the demo used before.

Generates --n world pairs (seed --seed, a fraction --noise of them noisy, keys disjoint from the
teacher's training and validation rows), renders the images at full size (300-1,500 px, as the
loopback server serves them; --max-side for smaller copies) and prints, for the shipped teacher
``laion-hf-world`` and for the random-init ``laion-hf-tiny`` baseline:

* ROC AUC of clip_similarity for matched vs noisy pairs (overall and per kind of noise);
* what ``clip_similarity >= t`` keeps of the matched pairs and removes of the noisy ones
  (t: the teacher's validated threshold; LAION's 0.28 for the baseline);
* zero-shot accuracy per attribute with prompts ``a photo of a {label}``.

The last line prints both AUCs and their ratio.

    python benchmarks/world.py                  # 2,000 pairs, full-size images
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--max-side", type=int, default=None, help="render smaller copies (default: full size)")
    args = ap.parse_args()
    import torch

    from laion_hf.clip.model import ClipEmbedder
    from laion_hf.world.teacher import TEACHER_MODEL, evaluate_teacher, teacher_meta

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(
        f"load average {os.getloadavg()[0]:.1f}; teacher trained in {teacher_meta()['train_seconds']:.0f}s "
        f"({teacher_meta()['recipe']['steps']} steps), threshold {teacher_meta()['threshold']:.4f}"
    )
    results = {}
    for name, threshold in ((TEACHER_MODEL, None), ("laion-hf-tiny", 0.28)):
        emb = ClipEmbedder(name, device="cpu")
        t0 = time.time()
        r = evaluate_teacher(
            emb,
            args.n,
            seed=args.seed,
            noise=args.noise,
            max_side=args.max_side,
            threshold=threshold,
        )
        r["seconds"] = round(time.time() - t0, 1)
        r["weights"] = emb.weights_source
        results[name] = r
        print(f"\n== {name} ({emb.weights_source})")
        print(json.dumps(r, indent=2))
    t, b = results[TEACHER_MODEL], results["laion-hf-tiny"]
    f = t["filter"]
    zs = " ".join(f"{k}={v:.3f}" for k, v in t["zero_shot"].items())
    print(
        f"\nteacher on {args.n} held-out pairs: AUC {t['auc']:.4f}; filter >= {f['threshold']:.4f} keeps "
        f"{f['kept_of_matched']:.1%} of matched, removes {f['removed_of_noisy']:.1%} of noisy "
        f"(precision {f['precision']:.1%}, recall {f['recall']:.1%}); zero-shot {zs}"
    )
    print(
        f"world AUC teacher {t['auc']:.4f} vs random-init laion-hf-tiny {b['auc']:.4f}: "
        f"ratio {t['auc'] / b['auc']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

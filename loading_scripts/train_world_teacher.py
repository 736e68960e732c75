"""Train the world's teacher CLIP (``laion-hf-world``) and write the weights shipped in the package.

Recipe (everything fixed here, so a rerun on one CPU thread reproduces the shipped weights):

* data: ``TRAIN_ROWS`` clean pairs of the world drawn with ``TRAIN_SEED`` (keys ``w1000001-*``,
  disjoint from the demo's, the tests' and the benchmark's), rendered at ``RENDER_SIDE`` px
  (the same pictures as the full-size images, fewer pixels), written as parquet shards and
  read back with laion-hf's own training loader (``laion_hf.loader.LaionTorchDataset``:
  shuffle buffer, resize + center crop to 64 px, OpenAI mean/std, the model's tokenizer);
* model: ``laion_hf/clip/configs/laion-hf-world.json`` (open_clip's ModifiedResNet image tower,
  layers [1, 1, 1, 1], width 16, attention pooling, 64 px input; text transformer 2 layers /
  width 64 / context 24; 64-d embeddings), random init from ``SEED``. On this CPU a tiny ViT
  (64 px, patch 8, 3 layers, width 96) learnt colour and background but no shape in 200
  steps, and timm's ``test_convnext`` tower learnt nothing in 160;
* loss: the symmetric CLIP contrastive loss on the batch, where the image->text direction
  also sees one hard-negative caption per image (NegCLIP-style: the image's caption with one
  wrong attribute, or web boilerplate / a camera filename), plus ``AUX_WEIGHT`` x an
  attribute-prompt loss (each image against the prompts ``a photo of a {label}`` of every
  value of each attribute, cross-entropy on the true value);
* optimiser: AdamW lr ``LR`` (linear warm-up over ``WARMUP`` steps, then constant), weight
  decay 0.05 (none on gains/biases/embeddings), batch ``BATCH``, ``STEPS`` steps;
* threshold: the ``clip_similarity`` cut that maximises balanced accuracy on ``VAL_ROWS``
  validation pairs (``VAL_SEED``, half noisy), stored with the weights.

Writes ``laion_hf/clip/weights/laion-hf-world.safetensors`` (fp16) and ``laion-hf-world.json``
(recipe, threshold, validation metrics, training time). Usage::

    nohup timeout 3600 python loading_scripts/train_world_teacher.py --work /tmp/world-teacher &
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from laion_hf.clip.model import ClipEmbedder
from laion_hf.loader import LaionTorchDataset
from laion_hf.world import render, world_rows
from laion_hf.world.attributes import PROMPT, ZERO_SHOT_LABELS, attributes
from laion_hf.world.captions import noisy_caption
from laion_hf.world.teacher import TEACHER_MODEL, filter_scores, roc_auc

SEED = 0
TRAIN_SEED = 1_000_001
VAL_SEED = 1_000_002
TRAIN_ROWS = 24_000
VAL_ROWS = 1_000
RENDER_SIDE = 96
BATCH = 96
STEPS = 1600
LR = 2e-3
WARMUP = 40
AUX_WEIGHT = 0.5
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "laion_hf" / "clip" / "weights"


def write_training_shards(work: Path, rows: int = TRAIN_ROWS, per_file: int = 4000) -> Path:
    """Render the clean training pairs into parquet shards (key, jpg, caption)."""
    out = work / "train"
    if (out / "_done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, per_file):
        table = world_rows(min(per_file, rows - start), seed=TRAIN_SEED, noise=0.0, start=start)
        jpg = pa.array([render(k, RENDER_SIDE) for k in table.column("key").to_pylist()], pa.binary())
        shard = pa.table({"key": table.column("key"), "jpg": jpg, "caption": table.column("caption")})
        pq.write_table(shard, out / f"train-{start // per_file:05d}.parquet", row_group_size=1000)
    (out / "_done").write_text("ok")
    return out


def hard_negatives(keys: list[str], step: int) -> list[str]:
    """One wrong caption per image: one wrong attribute (70 %), else boilerplate or a filename."""
    rng = np.random.default_rng([SEED, step])
    out = []
    for key in keys:
        u = rng.random()
        kind = "wrong_attribute" if u < 0.7 else ("boilerplate" if u < 0.85 else "filename")
        style = ("alt", "long", "prefix", "tags")[rng.integers(4)]
        out.append(noisy_caption(key, kind, style, rng)[0])
    return out


def prompt_targets(keys: list[str]) -> dict[str, torch.Tensor]:
    """Index of each image's true value per attribute (-100: not applicable)."""
    targets = {}
    for attr, labels in ZERO_SHOT_LABELS.items():
        values = list(labels)
        idx = [values.index(v) if v != "" else -100 for v in (getattr(attributes(k), attr) for k in keys)]
        targets[attr] = torch.tensor(idx)
    return targets


def losses(model, batch, step: int, tokenizer) -> tuple[torch.Tensor, dict[str, float]]:
    """Contrastive loss with hard negatives + the attribute-prompt loss for one batch."""
    img = F.normalize(model.encode_image(batch["image"]), dim=-1)
    negs = tokenizer(hard_negatives(batch["key"], step))
    prompts = [PROMPT.format(label=lab) for labels in ZERO_SHOT_LABELS.values() for lab in labels.values()]
    txt_all = F.normalize(model.encode_text(torch.cat([batch["text"], negs, tokenizer(prompts)])), dim=-1)
    n = img.shape[0]
    txt, neg, prm = txt_all[:n], txt_all[n : 2 * n], txt_all[2 * n :]
    scale = model.logit_scale.exp().clamp(max=100)
    target = torch.arange(n)
    i2t = F.cross_entropy(scale * img @ torch.cat([txt, neg]).T, target)
    t2i = F.cross_entropy(scale * txt @ img.T, target)
    aux, offset = [], 0
    for attr, want in prompt_targets(batch["key"]).items():
        k = len(ZERO_SHOT_LABELS[attr])
        aux.append(F.cross_entropy(scale * img @ prm[offset : offset + k].T, want, ignore_index=-100))
        offset += k
    aux_loss = torch.stack(aux).mean()
    total = (i2t + t2i) / 2 + AUX_WEIGHT * aux_loss
    return total, {"i2t": i2t.item(), "t2i": t2i.item(), "aux": aux_loss.item()}


def make_optimizer(model) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def train(work: Path, steps: int, save_every: int = 100, log_every: int = 20) -> tuple[torch.nn.Module, float]:
    """Train from random init; returns the model and the training wall time in seconds."""
    import open_clip

    torch.manual_seed(SEED)
    model = open_clip.create_model(TEACHER_MODEL).train()  # random init (config registered by laion_hf.clip)
    tokenizer = open_clip.get_tokenizer(TEACHER_MODEL)
    data = LaionTorchDataset(
        str(write_training_shards(work)),
        batch_size=BATCH,
        image_size=64,
        tokenizer=tokenizer,
        seed=SEED,
        buffer_size=4000,
        drop_last=True,
    )
    opt = make_optimizer(model)
    step, epoch, t0 = 0, 0, time.time()
    while step < steps:
        data.set_epoch(epoch)
        for batch in data:
            for g in opt.param_groups:
                g["lr"] = LR * min(1.0, (step + 1) / WARMUP)
            loss, parts = losses(model, batch, step, tokenizer)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % log_every == 0 or step == steps:
                print(
                    f"step {step}/{steps} epoch {epoch} loss {loss.item():.3f} {parts} "
                    f"scale {model.logit_scale.exp().item():.1f} {time.time() - t0:.0f}s",
                    flush=True,
                )
            if step % save_every == 0:
                save(model, work / f"step-{step:05d}.safetensors")
            if step >= steps:
                break
        epoch += 1
    return model.eval(), time.time() - t0


def save(model, path: Path) -> None:
    """The state dict in fp16 safetensors (what ships)."""
    from safetensors.torch import save_file

    state = model.state_dict()
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(path))


def pick_threshold(sim: np.ndarray, matched: np.ndarray) -> float:
    """The cut maximising (kept matched + removed noisy) / 2 on validation pairs."""
    cuts = np.unique(sim)
    best = max(
        cuts,
        key=lambda c: (
            ((sim >= c) & matched).mean() / matched.mean() + ((sim < c) & ~matched).mean() / (~matched).mean()
        ),
    )
    below = sim[sim < best]
    return float((best + below.max()) / 2 if len(below) else best)


def validate(weights: Path) -> dict:
    """Threshold and metrics on validation pairs, with the weights as shipped (fp16 on disk)."""
    import io

    from PIL import Image

    emb = ClipEmbedder(TEACHER_MODEL, str(weights), device="cpu")
    rows = world_rows(VAL_ROWS, seed=VAL_SEED, noise=0.5)
    keys = rows.column("key").to_pylist()
    img = emb.encode_pil([Image.open(io.BytesIO(render(k, 160))) for k in keys])
    txt = emb.encode_text(rows.column("caption").to_pylist())
    sim = (img * txt).sum(1)
    matched = np.asarray(rows.column("matched").to_pylist(), bool)
    threshold = pick_threshold(sim, matched)
    return {
        "threshold": threshold,
        "auc": roc_auc(sim, matched),
        **filter_scores(sim, matched, threshold),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/world-teacher", help="scratch folder for the training shards")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", default=str(WEIGHTS_DIR), help="where to write the weights and metadata")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    work, out = Path(args.work), Path(args.out)
    t0 = time.time()
    write_training_shards(work)
    render_s = time.time() - t0
    model, train_s = train(work, args.steps)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{TEACHER_MODEL}.safetensors"
    save(model, weights)
    val = validate(weights)
    meta = {
        "model": TEACHER_MODEL,
        "threshold": val.pop("threshold"),
        "validation": val,
        "recipe": {
            "seed": SEED,
            "train_seed": TRAIN_SEED,
            "val_seed": VAL_SEED,
            "train_rows": TRAIN_ROWS,
            "render_side": RENDER_SIDE,
            "batch": BATCH,
            "steps": args.steps,
            "lr": LR,
            "warmup": WARMUP,
            "aux_weight": AUX_WEIGHT,
            "threads": 1,
        },
        "render_seconds": round(render_s, 1),
        "train_seconds": round(train_s, 1),
        "script": "loading_scripts/train_world_teacher.py",
    }
    (out / f"{TEACHER_MODEL}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

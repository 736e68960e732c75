"""Training throughput: ``laion-hf train`` end to end against open_clip_train's step loop, same run.

(a) baseline: the step open_clip_train's ``train_one_epoch`` runs (forward, ``ClipLoss``,
              backward, step) with the optimizer its ``main`` builds (``torch.optim.AdamW``, its
              default implementation, the same weight-decay groups), on batches already decoded,
              preprocessed, tokenized and in memory: data loading costs it nothing.
(b) laion-hf: ``laion_hf.train.train`` on the same images as parquet shards: the loader decodes,
              resizes and tokenizes in its worker, the step uses a fused AdamW.

Both train the same model from the same init for --steps steps of --batch-size on --threads
torch threads; the rate of each is taken after --skip warm-up steps. The images are world
images (rendered at --side px, matched captions), written once under --data-dir. The last line
prints both rates and b/a.

    python benchmarks/train.py                              # laion-hf-world-32, CPU, 1 thread
    python benchmarks/train.py --model laion-hf-world --steps 120
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def make_shards(root: Path, n: int, side: int) -> Path:
    """``n`` matched world pairs rendered at ``side`` px, as laion-hf parquet shards."""
    import pyarrow as pa

    from laion_hf.schema import IMAGE_STRUCT
    from laion_hf.shards import write_shards
    from laion_hf.world import render, world_rows

    out = root / f"world_{n}_{side}"
    if (out / "_SUCCESS").exists():
        return out
    rows = world_rows(n, seed=12345, noise=0.0)
    images = [render(k, side) for k in rows["key"].to_pylist()]
    table = pa.table({"key": rows["key"], "caption": rows["caption"], "status": ["success"] * n,
                      "image": pa.array([{"bytes": b, "path": None} for b in images], IMAGE_STRUCT)})  # fmt: skip
    write_shards(table, out, max_shard_rows=1024, progress=False, overwrite=True)
    (out / "_SUCCESS").write_text("")
    return out


def build(model_name: str, seed: int) -> torch.nn.Module:
    import open_clip

    from laion_hf.clip.model import quiet_random_init, register_tiny_config

    register_tiny_config()
    with quiet_random_init(True):
        torch.manual_seed(seed)
        return open_clip.create_model(model_name)


def memory_batches(data: Path, model: torch.nn.Module, model_name: str, n: int, bs: int) -> list:
    """``n`` batches decoded, preprocessed and tokenized up front (open_clip's eval transform)."""
    import io

    import open_clip
    import pyarrow.parquet as pq
    from PIL import Image

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    transform = open_clip.image_transform(size, is_train=False)
    tokenizer = open_clip.get_tokenizer(model_name)
    pairs = []
    for f in sorted(data.rglob("*.parquet")):
        table = pq.read_table(f, columns=["image", "caption"])
        for img, cap in zip(table["image"].to_pylist(), table["caption"].to_pylist()):
            pairs.append((img["bytes"], cap))
    out = []
    for i in range(n):
        chunk = [pairs[(i * bs + j) % len(pairs)] for j in range(bs)]
        images = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b, _ in chunk])
        out.append((images, tokenizer([c for _, c in chunk])))
    return out


def open_clip_train_rate(model: torch.nn.Module, batches: list, skip: int, lr: float, wd: float) -> float:
    """Samples/s of open_clip_train's step with its optimizer, after ``skip`` steps."""
    import open_clip

    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                             {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)  # fmt: skip
    loss_fn = open_clip.ClipLoss()
    model.train()
    t0, done = 0.0, 0
    for i, (images, texts) in enumerate(batches):
        if i == skip:
            t0, done = time.perf_counter(), 0
        image_features, text_features, logit_scale = model(images, texts)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        done += len(images)
    return done / (time.perf_counter() - t0)


def laion_hf_rate(data: Path, work: Path, args: argparse.Namespace) -> float:
    """Samples/s of ``laion_hf.train.train`` between its step ``skip`` and its last step."""
    import shutil

    from laion_hf.train import TrainConfig, train

    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    marks: dict[int, tuple[float, int]] = {}
    cfg = TrainConfig(data=str(data), out=str(out), model=args.model, batch_size=args.batch_size,
                      workers=args.workers, steps=args.steps, lr=args.lr, wd=args.wd, seed=args.seed,
                      save_every=10**9, log_every=1, threads=args.threads, device="cpu",
                      buffer_size=1000)  # fmt: skip
    train(cfg, on_record=lambda r: "loss" in r and marks.__setitem__(r["step"], (r["seconds"], r["samples_seen"])))
    (t_a, n_a), (t_b, n_b) = marks[args.skip], marks[args.steps]
    return (n_b - n_a) / (t_b - t_a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="laion-hf-world-32")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--skip", type=int, default=20, help="warm-up steps left out of both rates")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="laion-hf loader workers")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=2048, help="distinct world pairs")
    p.add_argument("--side", type=int, default=80)
    p.add_argument("--data-dir", default="/tmp/laion-hf-bench-train")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.data_dir)
    data = make_shards(work, args.n, args.side)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.model}, batch {args.batch_size}, {args.steps} steps "
          f"({args.skip} left out), {args.threads} thread(s), cpu", flush=True)  # fmt: skip
    model = build(args.model, args.seed)
    batches = memory_batches(data, model, args.model, args.steps, args.batch_size)
    a = open_clip_train_rate(model, batches, args.skip, args.lr, args.wd)
    print(f"(a) open_clip_train step, batches in memory: {a:.1f} samples/s", flush=True)
    b = laion_hf_rate(data, work, args)
    print(f"(b) laion-hf train from parquet shards: {b:.1f} samples/s", flush=True)
    print(f"train {b:.1f} samples/s (laion-hf, loading included) vs {a:.1f} samples/s (open_clip_train's step, "
          f"batches in memory) ({args.model}, cpu, {args.threads} thread): ratio {b / a:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Contrastive open_clip training on published LAION shards, with exact resume.

    # CPU, the tiny random-init model, a local folder of shards (e.g. the demo's output)
    python loading_scripts/train_open_clip.py --data ./laion-demo-shards --steps 50

    # GPU, a real architecture, a published repo (streamed with datasets.load_dataset)
    python loading_scripts/train_open_clip.py --data laion/my-subset --model ViT-B-32 \\
        --batch-size 256 --workers 8 --epochs 10 --samples-per-epoch 2000000

    # several GPUs: torchrun --nproc-per-node 8 loading_scripts/train_open_clip.py ...

    # resume after a crash from the last checkpoint (model, optimizer and data position)
    python loading_scripts/train_open_clip.py ... --checkpoint ckpt.pt --resume

The data comes from ``laion_hf.make_dataloader``: every sample once per epoch across all
ranks and workers (or ``--samples-per-epoch`` with resampling), a fresh shuffle each epoch,
images decoded and preprocessed like open_clip's eval transform in the workers. The loader's
``state_dict()`` is saved in the checkpoint, so a resumed run sees exactly the batches the
interrupted one would have seen next.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch


def build_source(data: str, config: str | None, endpoint: str | None):
    """A local shard folder/file/glob as is; anything else is a Hub repo id, streamed."""
    if Path(data).exists() or any(ch in data for ch in "*?[") or "://" in data:
        return data
    from laion_hf.hub import reload

    return reload(data, config, endpoint=endpoint)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder / file / glob, or a Hub dataset repo id")
    p.add_argument("--config", default=None, help="config of a repo or folder holding several")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (e.g. a local test server)")
    p.add_argument("--model", default=None, help="open_clip model (default: laion-hf-tiny on CPU, ViT-B-32 on GPU)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (offline)")
    p.add_argument("--batch-size", type=int, default=None, help="per rank (default 32 on CPU, 256 on GPU)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps in total (0: run the epochs)")
    p.add_argument("--samples-per-epoch", type=int, default=None, help="resample: samples per epoch (all ranks)")
    p.add_argument("--buffer-size", type=int, default=2000, help="shuffle buffer rows per worker")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="checkpoint file to save (and to --resume from)")
    p.add_argument("--save-every", type=int, default=100, help="save the checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--log-every", type=int, default=1)
    args = p.parse_args(argv)

    import open_clip

    from laion_hf.clip.model import TINY_MODEL, register_tiny_config
    from laion_hf.torch import make_dataloader

    register_tiny_config()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and args.samples_per_epoch is None:
        # exact passes give ranks slightly different batch counts; the loss all-gathers every step
        p.error("under torchrun pass --samples-per-epoch so that every rank runs the same number of steps")
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    on_gpu = device.type == "cuda"
    model_name = args.model or ("ViT-B-32" if on_gpu else TINY_MODEL)
    batch_size = args.batch_size or (256 if on_gpu else 32)
    torch.manual_seed(args.seed)

    model = open_clip.create_model(model_name, pretrained=args.pretrained, device=device)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    tokenizer = open_clip.get_tokenizer(model_name)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    loss_fn = open_clip.ClipLoss(local_loss=False, gather_with_grad=distributed, rank=rank, world_size=world)
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "logit_scale" not in n]
    no_decay = [q for n, q in model.named_parameters() if q.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)

    loader = make_dataloader(
        build_source(args.data, args.config, args.endpoint),
        batch_size=batch_size, num_workers=args.workers, pin_memory=on_gpu, image_size=image_size,
        mean=mean, std=std, tokenizer=tokenizer, buffer_size=args.buffer_size, seed=args.seed,
        samples_per_epoch=args.samples_per_epoch, config=args.config,
    )
    if rank == 0:
        print(f"model {model_name} on {device}, batch {batch_size} x {world} rank(s), image {image_size}", flush=True)
    step, epoch = 0, 0
    if args.resume:
        if not args.checkpoint or not Path(args.checkpoint).exists():
            p.error(f"--resume needs an existing --checkpoint (got {args.checkpoint!r})")
        ckpt = torch.load(args.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, epoch = ckpt["step"], ckpt["epoch"]
        loader.load_state_dict(ckpt["loader"][rank])
        if rank == 0:
            print(f"resumed at step {step}, epoch {epoch}", flush=True)

    def save() -> None:
        if not args.checkpoint:
            return
        states = [None] * world
        if distributed:
            torch.distributed.all_gather_object(states, loader.state_dict())
        else:
            states = [loader.state_dict()]
        if rank == 0:
            tmp = f"{args.checkpoint}.tmp"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                        "loader": states}, tmp)
            os.replace(tmp, args.checkpoint)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
    samples, t0 = 0, time.perf_counter()
    done = False
    while epoch < args.epochs and not done:
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            texts = batch["text"].to(device, non_blocking=True)
            with autocast:
                out = ddp_model(images, texts)
                if isinstance(out, dict):
                    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
                else:
                    loss = loss_fn(*out[:3])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            samples += len(batch["key"]) * world
            if rank == 0 and step % args.log_every == 0:
                rate = samples / (time.perf_counter() - t0)
                print(f"step {step} epoch {epoch} loss {loss.item():.4f} samples/s {rate:.1f} "
                      f"skipped {batch['num_skipped']}", flush=True)
            if args.checkpoint and step % args.save_every == 0:
                save()
            if args.steps and step >= args.steps:
                done = True
                break
        else:
            epoch += 1
    save()
    if distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

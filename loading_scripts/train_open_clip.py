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
from dataclasses import dataclass
from pathlib import Path

import torch


def build_source(data: str, config: str | None, endpoint: str | None):
    """A local shard folder/file/glob as is; anything else is a Hub repo id, streamed."""
    if Path(data).exists() or any(ch in data for ch in "*?[") or "://" in data:
        return data
    from laion_hf.hub import reload

    return reload(data, config, endpoint=endpoint)


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser (for ``p.error``) and the parsed command line."""
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
    return p, p.parse_args(argv)


@dataclass
class Ranks:
    """Where this process runs: torchrun's process group (if any) and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device

    @classmethod
    def start(cls, p: argparse.ArgumentParser, args: argparse.Namespace) -> Ranks:
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
        return cls(distributed, rank, world, device)


class Trainer:
    """The model, its optimizer and loss, the loader, and the position (step, epoch) that a checkpoint saves."""

    def __init__(self, args: argparse.Namespace, ranks: Ranks) -> None:
        import open_clip

        from laion_hf.clip.model import TINY_MODEL
        from laion_hf.loader import make_dataloader

        self.args, self.ranks = args, ranks
        on_gpu = ranks.device.type == "cuda"
        self.model_name = args.model or ("ViT-B-32" if on_gpu else TINY_MODEL)
        self.batch_size = args.batch_size or (256 if on_gpu else 32)
        torch.manual_seed(args.seed)
        self.model = model = open_clip.create_model(self.model_name, pretrained=args.pretrained, device=ranks.device)
        image_size = model.visual.image_size
        self.image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        tokenizer = open_clip.get_tokenizer(self.model_name)
        self.ddp_model = torch.nn.parallel.DistributedDataParallel(model) if ranks.distributed else model
        self.loss_fn = open_clip.ClipLoss(
            local_loss=False, gather_with_grad=ranks.distributed, rank=ranks.rank, world_size=ranks.world
        )
        self.opt = self._optimizer()
        self.loader = make_dataloader(
            build_source(args.data, args.config, args.endpoint),
            batch_size=self.batch_size,
            num_workers=args.workers,
            pin_memory=on_gpu,
            image_size=self.image_size,
            mean=mean,
            std=std,
            tokenizer=tokenizer,
            buffer_size=args.buffer_size,
            seed=args.seed,
            samples_per_epoch=args.samples_per_epoch,
            config=args.config,
        )
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
        self.step, self.epoch = 0, 0

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with weight decay on the weight matrices only (not biases, norms, logit_scale)."""
        params = list(self.model.named_parameters())
        decay = [q for n, q in params if q.ndim >= 2 and "logit_scale" not in n]
        no_decay = [q for n, q in params if q.ndim < 2 or "logit_scale" in n]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.args.wd}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.args.lr,
        )

    def resume(self, p: argparse.ArgumentParser) -> None:
        """Load model, optimizer, position and this rank's loader state from ``--checkpoint``."""
        args = self.args
        if not args.checkpoint or not Path(args.checkpoint).exists():
            p.error(f"--resume needs an existing --checkpoint (got {args.checkpoint!r})")
        ckpt = torch.load(args.checkpoint, map_location=self.ranks.device, weights_only=True)
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        self.loader.load_state_dict(ckpt["loader"][self.ranks.rank])
        if self.ranks.rank == 0:
            print(f"resumed at step {self.step}, epoch {self.epoch}", flush=True)

    def save(self) -> None:
        """Write the checkpoint (every rank's loader state, gathered on rank 0; temp file, then rename)."""
        if not self.args.checkpoint:
            return
        states = [None] * self.ranks.world
        if self.ranks.distributed:
            torch.distributed.all_gather_object(states, self.loader.state_dict())
        else:
            states = [self.loader.state_dict()]
        if self.ranks.rank == 0:
            tmp = f"{self.args.checkpoint}.tmp"
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "step": self.step,
                    "epoch": self.epoch,
                    "loader": states,
                },
                tmp,
            )
            os.replace(tmp, self.args.checkpoint)

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimizer step of the contrastive loss on ``batch``; returns the loss."""
        device = self.ranks.device
        images = batch["image"].to(device, non_blocking=True)
        texts = batch["text"].to(device, non_blocking=True)
        with self.autocast:
            out = self.ddp_model(images, texts)
            if isinstance(out, dict):
                loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            else:
                loss = self.loss_fn(*out[:3])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        self.step += 1
        return loss

    def run(self) -> None:
        """Train until ``--epochs`` are done or ``--steps`` reached, logging and checkpointing; save at the end."""
        args, world = self.args, self.ranks.world
        samples, t0 = 0, time.perf_counter()
        done = False
        while self.epoch < args.epochs and not done:
            self.loader.dataset.set_epoch(self.epoch)
            for batch in self.loader:
                loss = self.train_step(batch)
                samples += len(batch["key"]) * world
                if self.ranks.rank == 0 and self.step % args.log_every == 0:
                    rate = samples / (time.perf_counter() - t0)
                    print(
                        f"step {self.step} epoch {self.epoch} loss {loss.item():.4f} samples/s {rate:.1f} "
                        f"skipped {batch['num_skipped']}",
                        flush=True,
                    )
                if args.checkpoint and self.step % args.save_every == 0:
                    self.save()
                if args.steps and self.step >= args.steps:
                    done = True
                    break
            else:
                self.epoch += 1
        self.save()


def main(argv=None) -> int:
    p, args = parse_args(argv)

    from laion_hf.clip.model import register_tiny_config

    register_tiny_config()
    ranks = Ranks.start(p, args)
    trainer = Trainer(args, ranks)
    if ranks.rank == 0:
        print(
            f"model {trainer.model_name} on {ranks.device}, batch {trainer.batch_size} x {ranks.world} rank(s), "
            f"image {trainer.image_size}",
            flush=True,
        )
    if args.resume:
        trainer.resume(p)
    trainer.run()
    if ranks.distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The training loop behind ``laion-hf train`` (see the package docs)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from laion_hf._util.settings import settings_changes
from laion_hf.clip.model import quiet_random_init
from laion_hf.errors import EvalError, ModelError

__all__ = ["LATEST", "TrainConfig", "read_log", "train"]

LATEST = "latest.pt"


@dataclass
class TrainConfig:
    """What to train, on what, for how long, and when to save and evaluate.

    ``steps`` > 0 stops after that many optimizer steps in total (else after ``epochs``);
    ``samples_per_epoch`` resamples (the loader's option). ``eval_every`` = 0 evaluates only
    at the end. ``threads``: torch's intra-op threads (1 is best for tiny models on a busy CPU). ``loader`` holds extra options of ``laion_hf.loader.LaionTorchDataset``.
    """

    data: str
    out: str
    model: str = "laion-hf-tiny"
    pretrained: str | None = None
    data_config: str | None = None
    batch_size: int = 32
    workers: int = 2
    steps: int = 0
    epochs: int = 1
    samples_per_epoch: int | None = None
    buffer_size: int = 2000
    lr: float = 5e-4
    wd: float = 0.1
    warmup: int = 0
    seed: int = 0
    save_every: int = 100
    log_every: int = 1
    eval_sets: list[str] = field(default_factory=list)
    eval_every: int = 0
    eval_precision: str = "fp32"
    device: str = "auto"
    threads: int | None = None
    loader: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    samples: int = 0
    last_eval: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)


def _source(cfg: TrainConfig) -> Any:
    """A local shard folder/file/glob/URL as is; anything else is a Hub repo id, streamed."""
    data = cfg.data
    if Path(data).exists() or any(ch in data for ch in "*?[") or "://" in data:
        return data
    if data.startswith(("/", ".", "~")) or os.sep + os.sep in data:
        raise EvalError(f"training data {data!r}: no such file or folder")
    from laion_hf.hub import reload

    return reload(data, cfg.data_config)


def _build(cfg: TrainConfig, device: torch.device) -> tuple[Any, Any, Any, Any, Any]:
    """Model, tokenizer, optimizer, scheduler and data loader."""
    import open_clip

    from laion_hf.clip.model import register_tiny_config
    from laion_hf.loader import make_dataloader

    register_tiny_config()
    try:  # random init is what a run without --pretrained asks for: no warning about it
        with quiet_random_init(not cfg.pretrained), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = open_clip.create_model(cfg.model, pretrained=cfg.pretrained, device=device)
    except Exception as e:  # open_clip raises RuntimeError/ValueError/KeyError for bad names
        raise ModelError(f"cannot build open_clip model {cfg.model!r}: {e}") from e
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    tokenizer = open_clip.get_tokenizer(cfg.model)
    decay = [q for n, q in model.named_parameters() if q.ndim >= 2 and "logit_scale" not in n]
    rest = [q for n, q in model.named_parameters() if q.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.wd}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr, fused=device.type in ("cpu", "cuda"))  # fmt: skip
    loader = make_dataloader(_source(cfg), batch_size=cfg.batch_size, num_workers=cfg.workers,
                             pin_memory=device.type == "cuda", image_size=size, mean=mean, std=std,
                             tokenizer=tokenizer, buffer_size=cfg.buffer_size, seed=cfg.seed,
                             samples_per_epoch=cfg.samples_per_epoch, config=cfg.data_config,
                             **cfg.loader)  # fmt: skip
    total = cfg.steps or _epoch_steps(loader) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(cfg.warmup, total))
    return model, tokenizer, opt, sched, loader


def _epoch_steps(loader: Any) -> int:
    n = loader.dataset.batches_per_rank()
    return int(n) if n else 0


def _cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 0 at ``total`` (constant when ``total`` is unknown)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    return factor


# ---------------------------------------------------------------- checkpoints and log
def _save(path: Path, cfg: TrainConfig, st: _State, model: Any, opt: Any, sched: Any, loader: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"name": Path(cfg.out).name, "model_name": cfg.model, "epoch": st.epoch, "step": st.step,
                "samples_seen": st.samples, "last_eval": st.last_eval, "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "loader": loader.state_dict(),
                "config": json.dumps(asdict(cfg))}, tmp)  # fmt: skip
    os.replace(tmp, path)


def _resume(path: Path, cfg: TrainConfig, model: Any, opt: Any, sched: Any, loader: Any, device: Any) -> _State:
    if not path.exists():
        return _State()
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("model_name") != cfg.model:
        raise EvalError(f"{path} holds a {ckpt.get('model_name')!r} model, not {cfg.model!r}; "
                        "use another output folder or the same --model")  # fmt: skip
    _check_same_run(path, json.loads(ckpt.get("config") or "{}"), cfg)
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    loader.load_state_dict(ckpt["loader"])
    return _State(ckpt["step"], ckpt["epoch"], ckpt["samples_seen"], ckpt.get("last_eval", -1))


#: what a run's numbers depend on: a resume with other values would mix two runs (the length,
#: evaluation, saving, logging and where it runs may change)
RUN_SETTINGS = ("data", "model", "pretrained", "data_config", "batch_size", "samples_per_epoch", "buffer_size",
                "lr", "wd", "warmup", "seed", "loader")  # fmt: skip


def _check_same_run(path: Path, old: dict[str, Any], cfg: TrainConfig) -> None:
    said = settings_changes(old, json.loads(json.dumps(asdict(cfg))), RUN_SETTINGS, missing_ok=True)
    if said:
        raise EvalError(f"{path} is a run with other settings ({said}); use another output folder, "
                        "or the same settings to resume")  # fmt: skip


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (a torn last line, from a kill, is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they are redone)."""
    if not path.exists():
        return
    kept = [r for r in read_log(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


class _Log:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# ---------------------------------------------------------------- evaluation
class _Evaluator:
    """Zero-shot evaluation of the model being trained on the configured sets."""

    def __init__(self, cfg: TrainConfig, model: Any, device: torch.device) -> None:
        from laion_hf.eval import load_eval_dataset, load_model

        self.sets = [load_eval_dataset(s) for s in cfg.eval_sets]
        self.embedder = load_model(cfg.model, device=str(device), precision=cfg.eval_precision,
                                   batch_size=max(32, cfg.batch_size))  # fmt: skip
        self.embedder.model = model  # the shell's preprocessing and tokenizer, the live weights
        self.model = model

    def __call__(self) -> dict[str, Any]:
        from laion_hf.eval import evaluate

        self.model.eval()
        try:
            out = {}
            for ds in self.sets:
                name = ds.name if ds.name not in out else f"{ds.name}_{len(out)}"
                out[name] = evaluate(self.embedder, ds)["metrics"]
            return out
        finally:
            self.model.train()


# ---------------------------------------------------------------- the loop
def _loss_step(model: Any, loss_fn: Any, opt: Any, sched: Any, batch: dict, device: torch.device) -> float:
    images = batch["image"].to(device, non_blocking=True)
    texts = batch["text"].to(device, non_blocking=True)
    cast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    with cast:
        out = model(images, texts)
        if isinstance(out, dict):
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        else:
            loss = loss_fn(*out[:3])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.item())


def _batches(loader: Any, st: _State, cfg: TrainConfig) -> Iterator[dict]:
    """Batches until ``steps`` (or the epochs) are done; advances ``st.epoch`` at epoch ends."""
    while st.epoch < cfg.epochs or cfg.steps:
        if cfg.steps and st.step >= cfg.steps:
            return
        loader.dataset.set_epoch(st.epoch)
        n = 0
        for batch in loader:
            n += 1
            yield batch
            if cfg.steps and st.step >= cfg.steps:
                return
        st.epoch += 1
        if not n:
            raise EvalError(f"{cfg.data}: the loader gave no batch in epoch {st.epoch - 1}")


def train(cfg: TrainConfig, on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train (or resume) as ``cfg`` says; returns the last step, samples seen, last loss, last
    zero-shot metrics and the checkpoint path. ``on_record`` sees every log record."""
    import open_clip

    from laion_hf.clip.model import resolve_device

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path, log_path = out / "checkpoints" / LATEST, out / "log.jsonl"
    model, _, opt, sched, loader = _build(cfg, device)
    st = _resume(ckpt_path, cfg, model, opt, sched, loader, device)
    _truncate_log(log_path, st.step)
    log = _Log(log_path)
    evaluator = _Evaluator(cfg, model, device) if cfg.eval_sets else None
    loss_fn = open_clip.ClipLoss()
    emit = _emitter(log, on_record)
    if st.step:
        emit({"step": st.step, "event": "resumed", "epoch": st.epoch, "samples_seen": st.samples})
    loss, t0 = float("nan"), time.perf_counter()
    try:
        model.train()
        for batch in _batches(loader, st, cfg):
            loss = _loss_step(model, loss_fn, opt, sched, batch, device)
            st.step += 1
            st.samples += len(batch["key"])
            if st.step % cfg.log_every == 0:
                emit({"step": st.step, "epoch": st.epoch, "loss": loss, "lr": sched.get_last_lr()[0],
                      "samples_seen": st.samples, "seconds": round(time.perf_counter() - t0, 3)})  # fmt: skip
            if evaluator and cfg.eval_every and st.step % cfg.eval_every == 0:
                _evaluate(evaluator, st, emit)
            if st.step % cfg.save_every == 0:
                _save(ckpt_path, cfg, st, model, opt, sched, loader)
        if evaluator and st.last_eval != st.step:
            _evaluate(evaluator, st, emit)
        _save(ckpt_path, cfg, st, model, opt, sched, loader)
    finally:
        log.close()
    return {
        "step": st.step,
        "samples_seen": st.samples,
        "loss": loss,
        "eval": st.metrics,
        "checkpoint": str(ckpt_path),
    }


def _emitter(log: _Log, on_record: Callable | None) -> Callable[[dict[str, Any]], None]:
    def emit(record: dict[str, Any]) -> None:
        log.write(record)
        if on_record:
            on_record(record)

    return emit


def _evaluate(evaluator: _Evaluator, st: _State, emit: Callable) -> None:
    st.metrics = evaluator()
    st.last_eval = st.step
    emit({"step": st.step, "samples_seen": st.samples, "eval": st.metrics})

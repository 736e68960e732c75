"""The CLIP embedder: an open_clip model resolved offline, on the best device, at the best precision.

``ClipEmbedder("ViT-B-32", "laion2b_s34b_b79k")`` finds the weights in the Hugging Face
cache (or open_clip's own ``~/.cache/clip``) without touching the network, or fails at once
with a :class:`~laion_hf.errors.ModelError` that says how to provide them. ``pretrained`` may
also be a checkpoint file; the model name may be ``local-dir:/path`` or ``hf-hub:org/name``.
Without ``pretrained`` the model is randomly initialised from a fixed seed (benchmarks, tests,
the tiny ``laion-hf-tiny`` config registered by this package).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import open_clip
import torch
from torchvision.transforms import Normalize, ToTensor

from laion_hf.errors import ModelError

__all__ = [
    "ClipEmbedder",
    "RandomInitFilter",
    "TINY_MODEL",
    "encode_text_prefix",
    "quiet_random_init",
    "resolve_device",
    "resolve_precision",
    "resolve_weights",
]

#: name of the tiny random-init config shipped for tests and the demo (~3.5 M parameters)
TINY_MODEL = "laion-hf-tiny"
_CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


def register_tiny_config() -> None:
    """Register the package's open_clip configs (``laion-hf-tiny``) once."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


register_tiny_config()


def shipped_weights(model: str) -> Path | None:
    """The weights laion-hf ships for its own config ``model`` (e.g. the world teacher
    ``laion-hf-world``), or None (then the model is randomly initialised)."""
    path = _CONFIG_DIR.parent / "weights" / f"{model}.safetensors"
    return path if path.is_file() else None


_PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → the first CUDA device when one is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device={device!r} was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → bf16 autocast on GPUs that support it, fp16 on other GPUs, fp32 on the CPU."""
    if precision not in _PRECISIONS:
        raise ModelError(f"precision={precision!r} is not one of {', '.join(_PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@dataclass
class ResolvedWeights:
    """What :func:`resolve_weights` found: arguments for ``open_clip.create_model_and_transforms``."""

    model_name: str
    pretrained: str | None
    kwargs: dict[str, Any]
    source: str  # human-readable: where the weights come from


def _hf_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cached_hf_file(repo_id: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir(cache_dir))
    return path if isinstance(path, str) and os.path.isfile(path) else None


def _how_to_provide(
    model: str, pretrained: str | None, hf_repo: str | None, url: str | None, cache_dir: str | None
) -> str:
    lines = []
    if hf_repo:
        lines.append(
            f"download them once on a machine with internet access: `hf download {hf_repo}` "
            f"(then copy the cache folder, here {_hf_cache_dir(cache_dir)}, or set HF_HUB_CACHE to it)"
        )
    if url:
        lines.append(
            f"or put {os.path.basename(url)} (from {url}) in {cache_dir or os.path.expanduser('~/.cache/clip')}"
        )
    lines.append(
        "or pass a checkpoint file (pretrained=/path/to/weights.safetensors|.bin|.pt), "
        "or model='local-dir:/folder' holding open_clip_config.json and the weights"
    )
    lines.append("or pass allow_download=True (--allow-download) to let open_clip fetch them")
    return "; ".join(lines)


def resolve_weights(
    model: str, pretrained: str | None = None, *, cache_dir: str | None = None, allow_download: bool = False
) -> ResolvedWeights:
    """Find ``model`` + ``pretrained`` on the local disk without any network access.

    Raises :class:`ModelError` at once, naming the model and saying how to provide the
    weights, when they are not there (unless ``allow_download``).
    """
    register_tiny_config()
    if model.startswith("local-dir:"):
        return _resolve_local_dir(model)
    if model.startswith("hf-hub:"):
        return _resolve_hf_hub(model, cache_dir, allow_download)
    name = model.replace("/", "-")
    if name not in open_clip.list_models():
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("ViT-B", "ViT-L", "laion-hf")))
        raise ModelError(
            f"unknown open_clip model {model!r}; use a name from open_clip.list_models() (e.g. {known}), "
            "'hf-hub:org/name' or 'local-dir:/folder'"
        )
    if not pretrained:
        shipped = shipped_weights(name)
        if shipped is not None:
            return ResolvedWeights(name, str(shipped), {}, f"shipped weights {shipped.name}")
        return ResolvedWeights(name, None, {}, "random init")
    if os.path.isfile(pretrained):
        return ResolvedWeights(name, pretrained, {}, pretrained)
    return _resolve_tag(model, name, pretrained, cache_dir, allow_download)


def _resolve_local_dir(model: str) -> ResolvedWeights:
    """``local-dir:/folder``: the folder must hold open_clip_config.json and weights."""
    folder = Path(model[len("local-dir:") :]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise ModelError(
            f"{model}: {folder / 'open_clip_config.json'} not found; a local-dir: model folder needs "
            "open_clip_config.json (with model_cfg) and the weights (open_clip_model.safetensors or "
            "open_clip_pytorch_model.bin), as on the model's Hugging Face repo"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) and not any(folder.glob("*.pth")):
        raise ModelError(f"{model}: no weights (*.safetensors, *.bin, *.pth) in {folder}")
    return ResolvedWeights(f"local-dir:{folder}", None, {}, str(folder))


def _resolve_hf_hub(model: str, cache_dir: str | None, allow_download: bool) -> ResolvedWeights:
    """``hf-hub:org/name``: config and weights from the Hugging Face cache, as a local-dir: model."""
    repo_id = model[len("hf-hub:") :]
    if allow_download:
        return ResolvedWeights(model, None, {"cache_dir": cache_dir}, f"hf-hub {repo_id} (download allowed)")
    config = _cached_hf_file(repo_id, "open_clip_config.json", cache_dir)
    if config is None:
        raise ModelError(
            f"{model}: open_clip_config.json of {repo_id} is not in the Hugging Face cache "
            f"({_hf_cache_dir(cache_dir)}); " + _how_to_provide(model, None, repo_id, None, cache_dir)
        )
    folder = Path(config).parent
    weights = [
        _cached_hf_file(repo_id, name, cache_dir)
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
    ]
    if not any(weights):
        raise ModelError(
            f"{model}: the config of {repo_id} is cached but not its weights; "
            + _how_to_provide(model, None, repo_id, None, cache_dir)
        )
    return ResolvedWeights(f"local-dir:{folder}", None, {}, f"HF cache {folder}")


def _resolve_tag(
    model: str, name: str, pretrained: str, cache_dir: str | None, allow_download: bool
) -> ResolvedWeights:
    """A pretrained tag of open_clip model ``name``: its weights from the HF cache or ``~/.cache/clip``."""
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise ModelError(f"{model}: pretrained checkpoint file {pretrained} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelError(
            f"{model}: pretrained={pretrained!r} is neither a known tag ({', '.join(tags) or 'none'}) nor a file"
        )
    if allow_download:
        return ResolvedWeights(name, pretrained, {"cache_dir": cache_dir}, f"tag {pretrained} (download allowed)")
    url = cfg.get("url", "")
    repo_id, path = _cached_tag_weights(cfg.get("hf_hub", ""), url, cache_dir)
    if path is None:
        raise ModelError(
            f"weights for {model} / {pretrained} are not on this machine (looked in the Hugging Face cache "
            f"{_hf_cache_dir(cache_dir)}"
            + (f" for {repo_id}" if repo_id else "")
            + "); "
            + _how_to_provide(model, pretrained, repo_id, url, cache_dir)
        )
    return ResolvedWeights(name, path, _transform_kwargs(cfg, name), path)


def _cached_tag_weights(hf_hub: str, url: str, cache_dir: str | None) -> tuple[str | None, str | None]:
    """``(repo_id, local weights path or None)`` of a pretrained tag's ``hf_hub`` / ``url``."""
    path = None
    repo_id = None
    if hf_hub:
        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        for cand in candidates:
            path = _cached_hf_file(repo_id, cand, cache_dir)
            if path:
                break
    if path is None and url:
        local = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        path = local if os.path.isfile(local) else None
    return repo_id, path


def _transform_kwargs(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The pretrained config's preprocessing (and quick_gelu) as create_model_and_transforms kwargs."""
    kwargs: dict[str, Any] = {
        "image_mean": cfg.get("mean"),
        "image_std": cfg.get("std"),
        "image_interpolation": cfg.get("interpolation"),
        "image_resize_mode": cfg.get("resize_mode"),
    }
    if cfg.get("quick_gelu") and not name.endswith("quickgelu"):
        kwargs["force_quick_gelu"] = True
    return {k: v for k, v in kwargs.items() if v is not None}


def encode_text_prefix(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised), run on the tokens up to the last pooled
    position of the batch when ``model`` is an open_clip ``CLIP`` with a causal text mask and
    end-of-text pooling (``argmax``/``eos``); other models run their own ``encode_text``."""
    pool = getattr(model, "text_pool_type", None)
    mask = getattr(model, "attn_mask", None)
    if (
        not isinstance(model, open_clip.model.CLIP)
        or pool not in ("argmax", "eos")
        or not isinstance(mask, torch.Tensor)
        or tokens.ndim != 2
        or tokens.shape[1] != model.positional_embedding.shape[0]
        or (pool == "eos" and getattr(model, "text_eos_id", None) is None)
    ):
        return model.encode_text(tokens)
    pos = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(pos.max()) + 1 if tokens.shape[0] else tokens.shape[1]
    if n >= tokens.shape[1]:
        return model.encode_text(tokens)
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :n]).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pos]
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


class RandomInitFilter(logging.Filter):
    """Hide open_clip's "initialized randomly" warning when random init is what was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def quiet_random_init(enabled: bool = True) -> Iterator[None]:
    """Inside the block, open_clip's "initialized randomly" warning is hidden (when ``enabled``:
    random init is what the caller asked for); every other log record passes."""
    quiet = RandomInitFilter() if enabled else None
    root = logging.getLogger()
    if quiet:
        root.addFilter(quiet)
    try:
        yield
    finally:
        if quiet:
            root.removeFilter(quiet)


class ClipEmbedder:
    """An open_clip model ready to embed image batches and captions.

    Args:
        model: open_clip model name (``"ViT-B-32"``), ``"hf-hub:org/name"`` or
            ``"local-dir:/path"``; default the tiny random-init ``laion-hf-tiny``.
        pretrained: a tag (``"laion2b_s34b_b79k"``), a checkpoint file, or None: the weights
            laion-hf ships for its own configs (``laion-hf-world``), else random init.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        precision: ``"auto"`` (bf16/fp16 autocast on GPU, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        batch_size: images per forward pass (default 256 on GPU, 32 on CPU).
        cache_dir: Hugging Face cache to resolve weights from (default ``HF_HUB_CACHE``).
        allow_download: let open_clip download missing weights (off: nothing touches the network).
        seed: seed of the random init when there are no weights (same model in every process).
    """

    def __init__(
        self,
        model: str = TINY_MODEL,
        pretrained: str | None = None,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        cache_dir: str | None = None,
        allow_download: bool = False,
        seed: int = 0,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        resolved = resolve_weights(model, pretrained, cache_dir=cache_dir, allow_download=allow_download)
        self.model_name = model
        self.pretrained = pretrained
        self.weights_source = resolved.source
        random_init = resolved.pretrained is None and "local-dir:" not in resolved.model_name
        try:
            with quiet_random_init(random_init), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                clip_model, _, preprocess = open_clip.create_model_and_transforms(
                    resolved.model_name, pretrained=resolved.pretrained, **resolved.kwargs
                )
        except ModelError:
            raise
        except Exception as e:  # open_clip raises RuntimeError/ValueError/FileNotFoundError/KeyError
            raise ModelError(f"cannot build open_clip model {model!r} (weights: {resolved.source}): {e}") from e
        self.model = clip_model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(resolved.model_name)
        size = self.model.visual.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[assignment]
        self.embed_dim = int(self._probe_dim())
        self.batch_size = int(batch_size or (256 if self.device.type == "cuda" else 32))
        self._split_preprocess()

    # ---- set-up helpers
    def _probe_dim(self) -> int:
        proj = getattr(self.model.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[-1]
        cfg_dim = getattr(self.model, "embed_dim", None)
        if cfg_dim:
            return cfg_dim
        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1]

    def _split_preprocess(self) -> None:
        """Split the model's own transform into a PIL part (run in decode threads) and the
        ToTensor + Normalize tail (run once per batch, on the device). Falls back to running
        the whole transform per image when its shape is unusual."""
        transforms = list(getattr(self.preprocess, "transforms", []))
        idx = next((i for i, t in enumerate(transforms) if isinstance(t, ToTensor)), None)
        tail = transforms[idx + 1 :] if idx is not None else None
        if idx is not None and len(tail) == 1 and isinstance(tail[0], Normalize):
            self.pil_transforms = transforms[:idx]
            self.mean = torch.tensor(tail[0].mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            self.std = torch.tensor(tail[0].std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            self.uint8_path = True
        else:
            self.pil_transforms = transforms
            self.uint8_path = False

    def __repr__(self) -> str:
        return (
            f"ClipEmbedder(model={self.model_name!r}, weights={self.weights_source!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r}, embed_dim={self.embed_dim}, batch_size={self.batch_size})"
        )

    # ---- compute
    def autocast(self):
        """The autocast context for this device and precision (a no-op in fp32)."""
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def pin_memory(self) -> bool:
        """Whether host batches should be pinned (CUDA only)."""
        return self.device.type == "cuda"

    def to_model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """Host batch → normalized float tensor on the device. ``batch`` is uint8 NHWC (the
        fast path) or an already-normalized float NCHW tensor (the fallback path)."""
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = x.sub_(self.mean).div_(self.std)
        return x

    @torch.inference_mode()
    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Encode a host batch (see :meth:`to_model_input`); L2-normalized float32 on the device."""
        x = self.to_model_input(batch)
        with self.autocast():
            feats = self.model.encode_image(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.inference_mode()
    def encode_token_batch(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode tokenized captions; L2-normalized float32 on the device.

        Standard open_clip text towers (causal mask, pooled at the end-of-text token) run on
        the tokens up to the batch's last end-of-text token only: with a causal mask the
        padding after it cannot change the pooled feature, so this is the same computation
        (equal up to float rounding) at a fraction of the cost for short captions."""
        tokens = tokens.to(self.device, non_blocking=True)
        with self.autocast():
            feats = encode_text_prefix(self.model, tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenize captions with the model's tokenizer (pinned on CUDA)."""
        tokens = self.tokenizer(list(texts))
        return tokens.pin_memory() if self.pin_memory else tokens

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions → (n, embed_dim) float32 L2-normalized numpy array."""
        out = [
            self.encode_token_batch(self.tokenize(texts[i : i + self.batch_size])).cpu()
            for i in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_pil(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images → (n, embed_dim) float32 L2-normalized numpy array (no draft decoding)."""
        from laion_hf.clip.decode import preprocess_pil

        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = [preprocess_pil(self, im) for im in images[i : i + self.batch_size]]
            out.append(self.encode_image_batch(torch.stack(chunk)).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

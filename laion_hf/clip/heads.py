"""LAION's score heads, run on L2-normalized CLIP image embeddings.

* :func:`aesthetic_v1` — LAION-Aesthetics Predictor V1, a ``Linear(d, 1)``; the real weights for
  ViT-B/32 (512), ViT-B/16 (512) and ViT-L/14 (768) ship in ``laion_hf/clip/weights/`` (MIT, LAION AI).
* :func:`aesthetic_v2` — the improved predictor (LAION-Aesthetics V2), the MLP
  768→1024→128→64→16→1, loaded from a user-supplied ``.pth`` (e.g. ``sac+logos+ava1-l14-linearMSE.pth``).
* :func:`nsfw_detector` — LAION's CLIP-based NSFW detector (``punsafe``), the PyTorch port of the
  Keras model (B/32: normalization→32→32→1, L/14: normalization→64→512→256→1, H/14: the MLP
  1024→…→1), sigmoid output, loaded from a user-supplied state-dict file.

A head whose input dimension differs from the CLIP model's embedding is a :class:`ModelError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from laion_hf.errors import ModelError

__all__ = [
    "ScoreHead",
    "aesthetic_v1",
    "aesthetic_v2",
    "nsfw_detector",
    "load_head",
    "check_heads",
    "WEIGHTS_DIR",
    "AESTHETIC_V1_FILES",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
AESTHETIC_V1_FILES = {
    "vit_b_32": "sa_0_4_vit_b_32_linear.pth",
    "vit_b_16": "sa_0_4_vit_b_16_linear.pth",
    "vit_l_14": "sa_0_4_vit_l_14_linear.pth",
}


class ScoreHead(nn.Module):
    """A module scoring (n, input_dim) normalized embeddings → (n,) floats, written to ``column``."""

    def __init__(self, net: nn.Module, input_dim: int, column: str, name: str) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.input_dim = int(input_dim)
        self.column = column
        self.name = name

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if emb.shape[-1] != self.input_dim:
            raise ModelError(
                f"score head {self.name!r} takes {self.input_dim}-d embeddings but got {emb.shape[-1]}-d ones"
            )
        return self.net(emb.float()).reshape(-1)

    def __repr__(self) -> str:
        return f"ScoreHead({self.name!r}, input_dim={self.input_dim}, column={self.column!r})"


def _load_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"{what}: weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{what}: cannot read {path}: {type(e).__name__}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelError(f"{what}: {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_into(net: nn.Module, sd: dict[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{what}: {path} does not fit the {what} architecture: {first}") from e


def aesthetic_v1(variant: str | int = 512, *, column: str = "aesthetic_score_v1") -> ScoreHead:
    """The LAION-Aesthetics V1 linear head shipped in the package.

    ``variant``: ``"vit_b_32"``, ``"vit_b_16"``, ``"vit_l_14"``, or an embedding size (512 → B/32,
    768 → L/14).
    """
    if isinstance(variant, int) or str(variant).isdigit():
        by_dim = {512: "vit_b_32", 768: "vit_l_14"}
        if int(variant) not in by_dim:
            raise ModelError(
                f"aesthetic V1 heads exist for 512-d (ViT-B/32, B/16) and 768-d (ViT-L/14) CLIP embeddings, "
                f"not {variant}-d; use a model with one of those sizes or drop the head"
            )
        variant = by_dim[int(variant)]
    variant = str(variant).lower().replace("-", "_").replace("/", "_")
    if variant not in AESTHETIC_V1_FILES:
        raise ModelError(f"unknown aesthetic V1 variant {variant!r}; one of {', '.join(AESTHETIC_V1_FILES)}")
    path = WEIGHTS_DIR / AESTHETIC_V1_FILES[variant]
    sd = _load_state_dict(path, "aesthetic V1")
    dim = sd["weight"].shape[1]
    net = nn.Linear(dim, 1)
    _load_into(net, sd, path, "aesthetic V1")
    return ScoreHead(net, dim, column, f"aesthetic_v1:{variant}").eval()


class AestheticV2MLP(nn.Module):
    """The improved aesthetic predictor's MLP (state-dict keys ``layers.{0,2,4,6,7}``)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def aesthetic_v2(path: str | os.PathLike, *, column: str = "aesthetic_score_v2") -> ScoreHead:
    """LAION-Aesthetics V2 (the 768→1024→128→64→16→1 MLP) from a user-supplied ``.pth``."""
    sd = _load_state_dict(path, "aesthetic V2")
    w0 = sd.get("layers.0.weight")
    if w0 is None:
        raise ModelError(
            f"aesthetic V2: {path} has no 'layers.0.weight'; expected the improved-aesthetic-predictor MLP"
        )
    net = AestheticV2MLP(int(w0.shape[1]))
    _load_into(net, sd, path, "aesthetic V2")
    return ScoreHead(net, int(w0.shape[1]), column, "aesthetic_v2").eval()


class _Normalization(nn.Module):
    """Keras ``Normalization`` layer: (x - mean) / sqrt(variance)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.variance.sqrt() + 1e-10)


class NSFWDetectorB32(nn.Module):
    """LAION's CLIP NSFW detector for ViT-B/32 embeddings (512 → norm → 32 → 32 → 1, sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = _Normalization(512)
        self.linear_1 = nn.Linear(512, 32)
        self.linear_2 = nn.Linear(32, 32)
        self.linear_3 = nn.Linear(32, 1)
        self.dropout = nn.Dropout(0.5)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.linear_1(self.norm(x)))
        x = self.dropout(self.act(self.linear_2(x)))
        return torch.sigmoid(self.linear_3(x))


class NSFWDetectorL14(nn.Module):
    """LAION's CLIP NSFW detector for ViT-L/14 embeddings (768 → norm → 64 → 512 → 256 → 1, sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = _Normalization(768)
        self.linear_1 = nn.Linear(768, 64)
        self.linear_2 = nn.Linear(64, 512)
        self.linear_3 = nn.Linear(512, 256)
        self.linear_4 = nn.Linear(256, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.linear_1(self.norm(x)))
        x = self.act(self.linear_2(x))
        x = self.act(self.linear_3(x))
        return torch.sigmoid(self.linear_4(x))


class NSFWDetectorH14(nn.Module):
    """LAION's CLIP NSFW detector for ViT-H/14 embeddings (1024 → … → 1, sigmoid)."""

    def __init__(self, input_size: int = 1024) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(1024, 2048), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(2048, 1024), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(128, 16),
            nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(x))


_NSFW_ARCHS = {"b32": (NSFWDetectorB32, 512), "l14": (NSFWDetectorL14, 768), "h14": (NSFWDetectorH14, 1024)}


def nsfw_detector(
    path: str | os.PathLike, variant: str | None = None, *, column: str = "punsafe_recomputed"
) -> ScoreHead:
    """LAION's CLIP-based NSFW detector (``punsafe`` in [0, 1]) from a user-supplied state dict.

    ``variant`` (``"b32"``, ``"l14"``, ``"h14"``) is inferred from the file when omitted.
    """
    sd = _load_state_dict(path, "NSFW detector")
    if variant is None:
        if "norm.mean" in sd:
            dim = int(sd["norm.mean"].shape[-1])
            variant = {512: "b32", 768: "l14"}.get(dim)
        elif "layers.0.weight" in sd:
            variant = "h14"
        if variant is None:
            raise ModelError(f"NSFW detector: cannot tell the architecture of {path}; pass variant='b32'|'l14'|'h14'")
    if variant not in _NSFW_ARCHS:
        raise ModelError(f"NSFW detector: unknown variant {variant!r}; one of {', '.join(_NSFW_ARCHS)}")
    cls, dim = _NSFW_ARCHS[variant]
    net = cls()
    _load_into(net, sd, path, f"NSFW detector ({variant})")
    return ScoreHead(net, dim, column, f"nsfw:{variant}").eval()


def load_head(spec: str | ScoreHead, embed_dim: int | None = None, model_name: str | None = None) -> ScoreHead:
    """Build a head from a short spec (what the CLI's ``--head`` takes).

    ``aesthetic_v1`` (picks the weights by model: B/16 by name, else by embedding size),
    ``aesthetic_v1:vit_l_14``, ``aesthetic_v2:/path/model.pth``, ``nsfw:/path/detector.pth``.
    """
    if isinstance(spec, ScoreHead):
        return spec
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("aesthetic_v1", "aesthetic-v1", "aesthetic"):
        if arg:
            return aesthetic_v1(arg)
        if model_name and "B-16" in model_name.replace("/", "-"):
            return aesthetic_v1("vit_b_16")
        if embed_dim is None:
            raise ModelError("aesthetic_v1 without a variant needs the model's embedding size")
        return aesthetic_v1(embed_dim)
    if kind in ("aesthetic_v2", "aesthetic-v2"):
        if not arg:
            raise ModelError(
                "aesthetic_v2 needs its weight file: 'aesthetic_v2:/path/sac+logos+ava1-l14-linearMSE.pth'"
            )
        return aesthetic_v2(arg)
    if kind in ("nsfw", "punsafe"):
        if not arg:
            raise ModelError("nsfw needs its weight file: 'nsfw:/path/nsfw_detector.pth'")
        return nsfw_detector(arg)
    raise ModelError(f"unknown score head {spec!r}; use aesthetic_v1[:variant], aesthetic_v2:PATH or nsfw:PATH")


def check_heads(heads: Sequence[ScoreHead], embed_dim: int, model_name: str) -> None:
    """Raise :class:`ModelError` if a head's input size differs from the model's embedding size,
    or two heads write the same column."""
    seen: set[str] = set()
    for h in heads:
        if h.input_dim != embed_dim:
            raise ModelError(
                f"score head {h.name!r} takes {h.input_dim}-d CLIP embeddings but model {model_name!r} makes "
                f"{embed_dim}-d ones; pick the head trained for this model (aesthetic V1: B/32 and B/16 512-d, "
                f"L/14 768-d; aesthetic V2: L/14 768-d)"
            )
        if h.column in seen:
            raise ModelError(f"two score heads write the column {h.column!r}; give one another column name")
        seen.add(h.column)

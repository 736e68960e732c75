"""LAION score heads: the shipped V1 weights against hand computation, V2 and NSFW from user
files, and dimension mismatches."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import torch

from laion_hf.clip import ClipPipeline, aesthetic_v1, aesthetic_v2, load_head, nsfw_detector, with_clip
from laion_hf.clip.heads import AestheticV2MLP, NSFWDetectorB32, NSFWDetectorL14
from laion_hf.errors import ModelError

WEIGHTS = files("laion_hf.clip") / "weights"


def _v1_weights(name: str) -> tuple[np.ndarray, float]:
    """Read the shipped file directly (not through the head) for the hand computation."""
    sd = torch.load(str(WEIGHTS / name), map_location="cpu", weights_only=True)
    return sd["weight"].double().numpy()[0], float(sd["bias"].double()[0])


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shipped_v1_weights_and_licence_are_in_the_package():
    names = {p.name for p in WEIGHTS.iterdir()}
    assert {
        "sa_0_4_vit_b_32_linear.pth",
        "sa_0_4_vit_b_16_linear.pth",
        "sa_0_4_vit_l_14_linear.pth",
        "LICENSE",
        "README.md",
    } <= names
    assert "LAION AI" in (WEIGHTS / "LICENSE").read_text() and "MIT" in (WEIGHTS / "LICENSE").read_text()
    assert "LAION-AI/aesthetic-predictor" in (WEIGHTS / "README.md").read_text()


@pytest.mark.parametrize(
    "variant,file,dim",
    [("vit_b_32", "sa_0_4_vit_b_32_linear.pth", 512), ("vit_l_14", "sa_0_4_vit_l_14_linear.pth", 768),
     ("vit_b_16", "sa_0_4_vit_b_16_linear.pth", 512)],
)  # fmt: skip
def test_v1_head_equals_hand_computed_values(variant, file, dim):
    w, b = _v1_weights(file)
    head = aesthetic_v1(variant)
    assert head.input_dim == dim and head.column == "aesthetic_score_v1"
    x = _unit(np.random.default_rng(0), 5, dim)
    got = head(torch.from_numpy(x).float()).detach().double().numpy()
    np.testing.assert_allclose(got, x @ w + b, atol=1e-5)
    # one value written out: the score of the first basis vector is weight[0] + bias
    e0 = torch.zeros(1, dim)
    e0[0, 0] = 1.0
    assert abs(float(head(e0)) - (w[0] + b)) < 1e-6


def test_v1_real_b32_value_pinned():
    # pins the shipped file: a change of weights changes this number
    w, b = _v1_weights("sa_0_4_vit_b_32_linear.pth")
    assert abs(b - 3.4215) < 1e-3
    ones = torch.full((1, 512), 1 / np.sqrt(512))
    assert abs(float(aesthetic_v1(512)(ones)) - (w.sum() / np.sqrt(512) + b)) < 1e-5


def test_v1_in_the_stream_scores_the_image_embedding(tiny, h):
    out = with_clip(
        h.image_table([h.jpeg(512, 512, i) for i in range(3)], ["a", "b", "c"]), tiny, heads=["aesthetic_v1"]
    )
    w, b = _v1_weights("sa_0_4_vit_b_32_linear.pth")
    emb = h.as_matrix(out["image_embedding"]).astype(np.float64)
    np.testing.assert_allclose(np.array(out["aesthetic_score_v1"].to_pylist()), emb @ w + b, atol=1e-4)


def test_head_dimension_mismatch_is_a_clear_model_error(tiny):
    with pytest.raises(ModelError) as ei:
        ClipPipeline(tiny, [aesthetic_v1("vit_l_14")])
    msg = str(ei.value)
    assert "768" in msg and "512" in msg and "laion-hf-tiny" in msg
    with pytest.raises(ModelError, match="not 64-d"):
        aesthetic_v1(64)
    with pytest.raises(ModelError, match="takes 768-d"):
        aesthetic_v1("vit_l_14")(torch.zeros(2, 512))


def test_aesthetic_v2_from_a_user_pth(tmp_path, tiny):
    torch.manual_seed(3)
    mlp = AestheticV2MLP(768)
    sd = mlp.state_dict()
    assert list(sd) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]  # LAION's key layout
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(sd, path)
    head = aesthetic_v2(path)
    assert head.input_dim == 768 and head.column == "aesthetic_score_v2"
    x = _unit(np.random.default_rng(1), 4, 768)
    # hand computation: dropout is off at inference, five affine layers with no activation
    y = x
    for i in (0, 2, 4, 6, 7):
        y = y @ sd[f"layers.{i}.weight"].double().numpy().T + sd[f"layers.{i}.bias"].double().numpy()
    np.testing.assert_allclose(head(torch.from_numpy(x).float()).detach().double().numpy(), y[:, 0], atol=1e-4)
    with pytest.raises(ModelError, match="768-d"):
        ClipPipeline(tiny, [head])  # a 768-d head on the 512-d tiny model
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="layers.0.weight"):
        aesthetic_v2(tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="does not exist"):
        aesthetic_v2(tmp_path / "missing.pth")


def _nsfw_hand(sd, x, names):
    y = (x - sd["norm.mean"].double().numpy()) / (np.sqrt(sd["norm.variance"].double().numpy()) + 1e-10)
    for i, n in enumerate(names):
        y = y @ sd[f"{n}.weight"].double().numpy().T + sd[f"{n}.bias"].double().numpy()
        if i < len(names) - 1:
            y = np.maximum(y, 0)
    return 1 / (1 + np.exp(-y[:, 0]))


def test_nsfw_detector_b32_from_a_user_file_in_the_stream(tmp_path, tiny, h):
    torch.manual_seed(4)
    net = NSFWDetectorB32()
    net.norm.mean.normal_(0, 0.01)
    net.norm.variance.uniform_(0.5, 2.0)
    sd = net.state_dict()
    path = tmp_path / "clip_autokeras_nsfw_b32.pth"
    torch.save(sd, path)
    head = nsfw_detector(path)  # variant inferred from the 512-d normalization
    assert head.input_dim == 512 and head.column == "punsafe_recomputed"
    out = with_clip(h.image_table([h.jpeg(300, 300, i) for i in range(4)], list("abcd")), tiny,
                    heads=["aesthetic_v1", f"nsfw:{path}"])  # fmt: skip
    p = np.array(out["punsafe_recomputed"].to_pylist())
    emb = h.as_matrix(out["image_embedding"]).astype(np.float64)
    np.testing.assert_allclose(p, _nsfw_hand(sd, emb, ["linear_1", "linear_2", "linear_3"]), atol=1e-5)
    assert ((p >= 0) & (p <= 1)).all()
    assert out["aesthetic_score_v1"].null_count == 0


def test_nsfw_detector_l14_and_errors(tmp_path, tiny):
    torch.manual_seed(5)
    sd = NSFWDetectorL14().state_dict()
    torch.save(sd, tmp_path / "l14.pth")
    head = nsfw_detector(tmp_path / "l14.pth")
    x = _unit(np.random.default_rng(2), 3, 768)
    got = head(torch.from_numpy(x).float()).detach().double().numpy()
    np.testing.assert_allclose(got, _nsfw_hand(sd, x, ["linear_1", "linear_2", "linear_3", "linear_4"]), atol=1e-5)
    with pytest.raises(ModelError, match="768-d"):
        ClipPipeline(tiny, [head])
    with pytest.raises(ModelError, match="does not fit"):
        nsfw_detector(tmp_path / "l14.pth", variant="b32")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        nsfw_detector(tmp_path / "junk.pth")


def test_head_specs(tiny):
    assert load_head("aesthetic_v1", 512, "ViT-B-32").name == "aesthetic_v1:vit_b_32"
    assert load_head("aesthetic_v1", 512, "ViT-B-16").name == "aesthetic_v1:vit_b_16"
    assert load_head("aesthetic_v1", 768, "ViT-L-14").name == "aesthetic_v1:vit_l_14"
    for bad, match in [("aesthetic_v2", "weight file"), ("nsfw", "weight file"), ("watermark", "unknown score head")]:
        with pytest.raises(ModelError, match=match):
            load_head(bad, 512, "ViT-B-32")
    with pytest.raises(ModelError, match="write the column"):
        ClipPipeline(tiny, ["aesthetic_v1", "aesthetic_v1:vit_b_16"])

"""ClipEmbedder: offline weight resolution (tag, file, local-dir:, hf-hub:), errors, device/precision."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib.resources import files

import numpy as np
import pytest
import torch

from laion_hf.clip import ClipEmbedder, resolve_weights
from laion_hf.clip.model import resolve_device, resolve_precision
from laion_hf.errors import ModelError

TINY_CFG = json.loads((files("laion_hf.clip") / "configs" / "laion-hf-tiny.json").read_text())


def _state(embedder):
    return {k: v.clone() for k, v in embedder.model.state_dict().items()}


def test_import_laion_hf_does_not_import_torch():
    code = "import sys, laion_hf, laion_hf.cli, laion_hf.clip, laion_hf.clip.embed; laion_hf.cli.build_parser(); " \
           "print('torch' in sys.modules, 'open_clip' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tiny_model_on_cpu_auto(tiny):
    e = ClipEmbedder()  # defaults: tiny, device auto, precision auto
    if not torch.cuda.is_available():
        assert e.device.type == "cpu" and e.precision == "fp32" and e.batch_size == 32
        assert not e.pin_memory
    assert e.embed_dim == 512 and e.image_size == (64, 64)
    assert e.weights_source == "random init"
    assert "laion-hf-tiny" in repr(e)


def test_random_init_is_seeded_so_every_process_builds_the_same_model(tiny):
    a, b = ClipEmbedder(device="cpu"), ClipEmbedder(device="cpu", seed=1)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], v) for k, v in _state(tiny).items())
    assert not torch.equal(sa["visual.proj"], sb["visual.proj"])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ClipEmbedder(device="cpu")
    assert torch.equal(torch.rand(3), expected)  # the caller's global RNG is left alone


def test_missing_tag_weights_fail_at_once_with_how_to(tmp_path):
    t = time.perf_counter()
    with pytest.raises(ModelError) as ei:
        ClipEmbedder("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.perf_counter() - t < 5
    msg = str(ei.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert str(tmp_path) in msg and "allow_download" in msg and "local-dir:" in msg


def test_openai_tag_names_both_places_it_looks(tmp_path):
    with pytest.raises(ModelError) as ei:
        resolve_weights("ViT-B-32-quickgelu", "openai", cache_dir=str(tmp_path))
    msg = str(ei.value)
    assert "ViT-B-32.pt" in msg and "timm/vit_base_patch32_clip_224.openai" in msg


def test_unknown_tag_model_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ModelError, match="laion2b_s34b_b79k"):  # lists the known tags
        resolve_weights("ViT-B-32", "no-such-tag")
    with pytest.raises(ModelError, match="unknown open_clip model 'ViT-Q-99'"):
        resolve_weights("ViT-Q-99")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_weights("ViT-B-32", str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="open_clip_config.json"):
        resolve_weights(f"local-dir:{tmp_path}")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        resolve_weights("hf-hub:laion/nothing-here", cache_dir=str(tmp_path))


def test_cached_tag_resolves_to_the_cache_file_with_the_tags_preprocessing(tmp_path):
    # the HF cache layout, written by hand: refs/main -> snapshots/<sha>/file
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    r = resolve_weights("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert r.pretrained == str(snap / "open_clip_model.safetensors")
    assert r.kwargs["force_quick_gelu"] is True  # OpenAI weights use QuickGELU
    assert r.kwargs["image_interpolation"] == "bicubic"


def test_pretrained_file_path_loads_those_weights(tmp_path):
    src = ClipEmbedder(device="cpu", seed=5)
    path = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), path)
    e = ClipEmbedder("laion-hf-tiny", str(path), device="cpu")
    assert e.weights_source == str(path)
    assert all(torch.equal(v, src.model.state_dict()[k]) for k, v in e.model.state_dict().items())


def _write_model_dir(folder, src):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(src.model.state_dict(), folder / "open_clip_pytorch_model.bin")


def test_local_dir_model(tmp_path):
    src = ClipEmbedder(device="cpu", seed=6)
    _write_model_dir(tmp_path / "m", src)
    e = ClipEmbedder(f"local-dir:{tmp_path / 'm'}", device="cpu")
    assert all(torch.equal(v, src.model.state_dict()[k]) for k, v in e.model.state_dict().items())
    assert tuple(round(float(x), 3) for x in e.mean.flatten()) == (0.5, 0.5, 0.5)  # its preprocess_cfg is used


def test_hf_hub_model_from_the_cache_offline(tmp_path):
    src = ClipEmbedder(device="cpu", seed=7)
    sha = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "cache" / "models--laion-hf--tiny-test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    _write_model_dir(repo / "snapshots" / sha, src)
    e = ClipEmbedder("hf-hub:laion-hf/tiny-test", device="cpu", cache_dir=str(tmp_path / "cache"))
    assert "HF cache" in e.weights_source
    assert all(torch.equal(v, src.model.state_dict()[k]) for k, v in e.model.state_dict().items())
    txt = e.encode_text(["a cat", "a dog"])
    np.testing.assert_allclose(txt, src.encode_text(["a cat", "a dog"]), atol=1e-6)


def test_device_and_precision_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ModelError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ModelError, match="no CUDA"):
            resolve_device("cuda")


def test_bf16_autocast_on_cpu_stays_close_to_fp32(tiny):
    e = ClipEmbedder(device="cpu", precision="bf16")
    a = e.encode_text(["a photo of a cat"])
    b = tiny.encode_text(["a photo of a cat"])
    assert a.dtype == np.float32 and float((a * b).sum()) > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_auto_uses_cuda_autocast_pinned_memory_and_matches_cpu(tiny, h):
    from laion_hf.clip import with_clip

    e = ClipEmbedder()
    assert e.device.type == "cuda" and e.precision in ("bf16", "fp16") and e.pin_memory and e.batch_size == 256
    images = [h.jpeg(512, 512, seed=i) for i in range(8)]
    table = h.image_table(images, [f"caption {i}" for i in range(8)])
    gpu = h.as_matrix(with_clip(table, e)["image_embedding"])
    cpu = h.as_matrix(with_clip(table, tiny)["image_embedding"])
    assert ((gpu * cpu).sum(1)).min() > 0.99


def test_text_prefix_forward_equals_the_full_forward_without_running_the_padding(tiny, monkeypatch):
    from laion_hf.clip.model import encode_text_prefix

    tokens = tiny.tokenizer(["a", "a red square on a blue background", "", "a red square on a blue background"])
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        seen = []
        block = tiny.model.transformer.forward
        monkeypatch.setattr(tiny.model.transformer, "forward", lambda x, **kw: seen.append(x.shape) or block(x, **kw))
        monkeypatch.setattr(tiny.model, "encode_text", lambda *a, **k: pytest.fail("fell back to the full forward"))
        short = encode_text_prefix(tiny.model, tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1
    assert n < tokens.shape[1] and seen == [torch.Size([4, n, seen[0][-1]])]  # only the prefix ran
    assert torch.allclose(short, full, atol=1e-5, rtol=1e-5)
    assert torch.equal(short[1], short[3])
    # through the embedder: normalised, same as normalising the full forward
    monkeypatch.undo()
    got = tiny.encode_token_batch(tokens)
    assert torch.allclose(got, torch.nn.functional.normalize(full, dim=-1), atol=1e-6)


def test_text_prefix_forward_falls_back_when_nothing_is_padding(tiny):
    from laion_hf.clip.model import encode_text_prefix

    long = " ".join(["word"] * 200)  # truncated by the tokenizer: the end-of-text token is last
    tokens = tiny.tokenizer([long])
    with torch.inference_mode():
        assert torch.equal(encode_text_prefix(tiny.model, tokens), tiny.model.encode_text(tokens))


def test_quiet_random_init_hides_only_that_warning_and_only_inside(caplog):
    import logging

    from laion_hf.clip.model import quiet_random_init

    root = logging.getLogger()
    with caplog.at_level(logging.WARNING):
        with quiet_random_init():
            root.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
            root.warning("something else")
        with quiet_random_init(enabled=False):
            root.warning("kept: initialized randomly")
        root.warning("after: initialized randomly")
    assert [r.getMessage() for r in caplog.records] == [
        "something else",
        "kept: initialized randomly",
        "after: initialized randomly",
    ]

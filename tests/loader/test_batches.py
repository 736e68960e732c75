"""What a batch holds: open_clip-equivalent pixels, open_clip tokens, pass-through columns, and
corrupt or missing images that are counted or marked without ending the epoch."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from laion_hf.errors import LoaderError
from laion_hf.loader import LaionTorchDataset, fast_clip_preprocess, make_dataloader

CORRUPT = {"000000003", "000000017"}
MISSING = {"000000005"}


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_fast_path_equals_open_clip_preprocess():
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)),  # portrait
        Image.fromarray(rng.integers(0, 255, (180, 333, 3), dtype=np.uint8)),  # landscape, odd crop
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)),  # already the size
        Image.fromarray(rng.integers(0, 255, (100, 120), dtype=np.uint8)),  # grayscale, upscaled
    ]
    blobs = [
        _encode(images[0], "JPEG"),
        _encode(images[1], "PNG"),
        _encode(images[2], "JPEG"),
        _encode(images[3], "JPEG"),
    ]
    preprocess = open_clip.image_transform(224, is_train=False)
    want = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in blobs])
    got, ok, errors = fast_clip_preprocess(blobs, 224, draft=False)
    assert ok.all() and errors == [None] * 4
    assert got.shape == want.shape == (4, 3, 224, 224)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_default_is_exact_on_big_jpegs_and_palette_pngs(tmp_path):
    """Photo-like JPEGs >= 2x the output size (where draft decoding would kick in) and palette
    PNGs (open_clip resizes them in "P" mode, i.e. nearest, before converting to RGB): the
    loader's default pixels equal open_clip.image_transform's exactly."""
    import pyarrow as pa

    from laion_hf.testing.image_server import make_image

    blobs = [
        make_image(1024, 768, "jpg", seed=1),
        make_image(600, 900, "jpg", seed=2),
        make_image(800, 600, "png", seed=3, mode="P"),
        make_image(500, 700, "png", seed=4, mode="P"),
    ]
    assert Image.open(io.BytesIO(blobs[2])).mode == "P"
    want = torch.stack([open_clip.image_transform(224, is_train=False)(Image.open(io.BytesIO(b))) for b in blobs])
    got, ok, _ = fast_clip_preprocess(blobs, 224)
    assert ok.all()
    # float rounding only (~5e-7): one 8-bit level off would be 1 / (255 * std) > 0.014
    assert (got - want).abs().max().item() < 1e-5
    pq.write_table(
        pa.table({"key": [str(i) for i in range(4)], "image": blobs, "caption": ["x"] * 4}),
        tmp_path / "train-00000-of-00001.parquet",
    )
    batch = next(iter(LaionTorchDataset(tmp_path, batch_size=4, shuffle=False, tokenizer=None)))
    assert batch["key"] == ["0", "1", "2", "3"]
    assert (batch["image"] - want).abs().max().item() < 1e-5


def test_draft_decoding_stays_close_to_open_clip():
    yy, xx = np.mgrid[:1024, :768]
    smooth = np.stack([xx / 3, yy / 4, (xx + yy) / 7], -1).astype(np.uint8)
    blob = _encode(Image.fromarray(smooth), "JPEG")
    want = open_clip.image_transform(224, is_train=False)(Image.open(io.BytesIO(blob)))
    got, ok, _ = fast_clip_preprocess([blob], 224, draft=True)
    assert ok.all()
    assert (got[0] - want).abs().mean() < 0.02


def test_tokens_and_extra_columns(parquet_dir):
    ds = LaionTorchDataset(
        parquet_dir, batch_size=32, image_size=32, columns=["image_embedding", "status"], shuffle=False
    )
    batch = next(iter(ds))
    assert torch.equal(batch["text"], open_clip.tokenize(batch["caption"]))
    assert batch["text"].shape == (32, 77) and batch["text"].dtype == torch.long
    assert batch["image"].shape == (32, 3, 32, 32) and batch["image"].dtype == torch.float32
    table = pq.read_table(sorted(parquet_dir.rglob("*.parquet"))[0])
    emb = dict(zip(table["key"].to_pylist(), table["image_embedding"].to_pylist()))
    assert batch["image_embedding"].shape == (32, 4)
    for key, row in zip(batch["key"], batch["image_embedding"]):
        assert row.tolist() == pytest.approx(emb[key])
    assert batch["status"] == ["success"] * 32


def test_custom_preprocess_callable(parquet_dir):
    preprocess = open_clip.image_transform(32, is_train=False)
    slow = next(
        iter(LaionTorchDataset(parquet_dir, batch_size=8, preprocess=preprocess, tokenizer=None, shuffle=False))
    )
    fast = next(
        iter(LaionTorchDataset(parquet_dir, batch_size=8, image_size=32, draft=False, tokenizer=None, shuffle=False))
    )
    assert slow["key"] == fast["key"]
    assert torch.allclose(slow["image"], fast["image"], atol=1e-5)


def test_corrupt_and_missing_images_are_skipped_and_counted(corrupt_dir):
    loader = make_dataloader(corrupt_dir, batch_size=8, image_size=32, buffer_size=10, num_workers=2, tokenizer=None)
    keys, skipped = [], 0
    for batch in loader:
        keys += batch["key"]
        skipped += batch["num_skipped"]
        assert len(batch["key"]) == batch["image"].shape[0]
    assert skipped == 3
    assert len(keys) == 57 == len(set(keys))
    assert not (set(keys) & (CORRUPT | MISSING))


def test_corrupt_and_missing_images_are_marked(corrupt_dir):
    loader = make_dataloader(
        corrupt_dir, batch_size=8, image_size=32, buffer_size=10, num_workers=2, tokenizer=None, on_error="mark"
    )
    seen = {}
    for batch in loader:
        assert batch["num_skipped"] == 0
        for i, key in enumerate(batch["key"]):
            seen[key] = (bool(batch["valid"][i]), batch["error"][i], float(batch["image"][i].abs().sum()))
    assert len(seen) == 60
    bad = {k for k, (valid, _, _) in seen.items() if not valid}
    assert bad == CORRUPT | MISSING
    assert {seen[k][1] for k in CORRUPT} == {"UnidentifiedImageError"}
    assert seen["000000005"][1] == "MissingImage"
    assert all(seen[k][2] == 0.0 for k in bad)
    assert all(seen[k][1] is None and seen[k][2] > 0 for k in seen.keys() - bad)


def test_all_bad_batch_carries_its_count(corrupt_dir):
    # batch_size 1 without shuffling: the corrupt rows are whole batches of their own
    ds = LaionTorchDataset(corrupt_dir, batch_size=1, image_size=32, shuffle=False, tokenizer=None)
    batches = list(ds)
    assert len(batches) == 57
    assert sum(b["num_skipped"] for b in batches) == 3
    after = {b["key"][0]: b["num_skipped"] for b in batches}
    assert after["000000004"] == 1 and after["000000006"] == 1 and after["000000018"] == 1
    assert ds.state_dict()["stats"] == {"rows": 60, "skipped": 3, "marked": 0}


def test_loader_demo_summary(parquet_dir):
    from laion_hf.loader import loader_demo

    out = loader_demo(parquet_dir, batch_size=8, image_size=32)
    assert out["resume_exact"] is True
    assert out["image"] == [8, 3, 32, 32] and out["text"] == [8, 77]
    assert out["batches_read"] == 3 and len(out["first_keys"]) == 4 and out["samples_per_s"] > 0


def test_webdataset_json_passes_through(wds_dir):
    import json

    ds = LaionTorchDataset(wds_dir, batch_size=8, image_size=32, columns=["json"], shuffle=False, tokenizer=None)
    batch = next(iter(ds))
    metas = [json.loads(m) for m in batch["json"]]
    assert [m["key"] for m in metas] == batch["key"]
    assert [m["caption"] for m in metas] == batch["caption"]


def test_on_error_raise_names_the_first_bad_row(corrupt_dir):
    """The one on_error vocabulary (issue 17): the loader also takes ``raise``."""
    ds = LaionTorchDataset(corrupt_dir, batch_size=60, image_size=32, buffer_size=1, tokenizer=None, on_error="raise")
    with pytest.raises(LoaderError, match=r"row '0000000(03|05|17)'.*(UnidentifiedImageError|MissingImage)"):
        list(ds)


def test_an_unknown_on_error_gets_the_one_message(corrupt_dir):
    with pytest.raises(LoaderError, match=r"the loader: on_error='ignore' is unknown; use one of 'raise', 'skip'"):
        LaionTorchDataset(corrupt_dir, on_error="ignore")

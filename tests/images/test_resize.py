"""Decode, EXIF orientation, RGB conversion, resize modes, size filters and encoding."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.resize import ResizeConfig, process_image, sniff_format
from laion_hf.testing.image_server import bomb_png, make_image


@pytest.mark.parametrize(
    "mode,size",
    [
        ("no", (300, 100)),
        ("border", (64, 64)),
        ("keep_ratio", (192, 64)),
        ("keep_ratio_largest", (64, 21)),
        ("center_crop", (64, 64)),
    ],
)
def test_resize_modes(mode, size):
    r = process_image(make_image(300, 100, "jpg"), ResizeConfig(image_size=64, resize_mode=mode))
    assert r.status == st.SUCCESS
    assert (r.width, r.height) == size and (r.original_width, r.original_height) == (300, 100)
    assert Image.open(io.BytesIO(r.data)).size == size
    assert r.sha256 == hashlib.sha256(r.data).hexdigest()


def test_border_pads_with_black():
    r = process_image(make_image(300, 100, "png"), ResizeConfig(image_size=60, resize_mode="border"))
    img = Image.open(io.BytesIO(r.data))
    assert img.getpixel((30, 2)) == (0, 0, 0) and img.getpixel((30, 57)) == (0, 0, 0)


def test_resize_only_if_bigger_never_upscales():
    r = process_image(
        make_image(40, 30, "jpg"), ResizeConfig(image_size=64, resize_mode="keep_ratio", resize_only_if_bigger=True)
    )
    assert (r.width, r.height) == (40, 30)


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "gif", "bmp", "tiff"])
def test_formats_are_sniffed_and_decoded(fmt):
    data = make_image(90, 70, fmt)
    assert sniff_format(data) is not None
    r = process_image(data, ResizeConfig(resize_mode="no"))
    assert r.status == st.SUCCESS and (r.width, r.height) == (90, 70)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_converted_to_rgb(mode):
    fmt = "jpg" if mode == "CMYK" else "png"
    r = process_image(make_image(50, 40, fmt, mode=mode), ResizeConfig(resize_mode="no", encode_format="png"))
    assert Image.open(io.BytesIO(r.data)).mode == "RGB"


def test_exif_orientation_is_applied():
    r = process_image(make_image(64, 32, "jpg", exif_orientation=6), ResizeConfig(resize_mode="no"))
    assert (r.width, r.height) == (32, 64) and (r.original_width, r.original_height) == (32, 64)


def test_size_filters():
    img = make_image(200, 20, "png")
    assert process_image(img, ResizeConfig(min_image_size=50)).status == st.IMAGE_TOO_SMALL
    assert process_image(img, ResizeConfig(max_image_area=3000)).status == st.IMAGE_AREA_TOO_LARGE
    assert process_image(img, ResizeConfig(max_aspect_ratio=5)).status == st.ASPECT_RATIO_TOO_LARGE
    assert process_image(img, ResizeConfig(min_image_size=10, max_aspect_ratio=10)).status == st.SUCCESS


def test_bomb_is_refused_before_decoding():
    r = process_image(bomb_png(), ResizeConfig())
    assert r.status == st.DECOMPRESSION_BOMB


@pytest.mark.parametrize("fmt,magic", [("jpg", b"\xff\xd8\xff"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    r = process_image(make_image(100, 100, "png"), ResizeConfig(image_size=50, encode_format=fmt))
    assert r.data.startswith(magic)


def test_skip_reencode_keeps_the_original_bytes():
    data = make_image(128, 96, "jpg")
    r = process_image(data, ResizeConfig(resize_mode="no", skip_reencode=True))
    assert r.data == data and r.sha256 == hashlib.sha256(data).hexdigest()
    r2 = process_image(data, ResizeConfig(resize_mode="no"))
    assert r2.data != data


def test_not_an_image_and_corrupt():
    assert process_image(b"<html></html>", ResizeConfig()).status == st.NOT_AN_IMAGE
    assert process_image(b"", ResizeConfig()).status == st.NOT_AN_IMAGE
    good = make_image(200, 200, "png")
    assert process_image(good[:300], ResizeConfig()).status == st.DECODE_ERROR


def test_bad_config_is_a_clear_error():
    with pytest.raises(FetchError, match="resize_mode"):
        ResizeConfig(resize_mode="fit")
    with pytest.raises(FetchError, match="encode_format"):
        ResizeConfig(encode_format="avif")


def test_error_text_has_no_object_addresses():
    """The same bad image gives the same error text on every run (no '<... at 0x7f..>')."""
    from laion_hf.images.resize import _describe

    class Thing:
        pass

    text = _describe(OSError(f"cannot identify image file {Thing()!r}"))
    assert " at 0x" not in text and text.startswith("OSError: cannot identify image file <")

"""Decode, check, resize and re-encode one image (Pillow), img2dataset's resize semantics.

The format is sniffed from the body's magic bytes (headers are not trusted) and Pillow is
only allowed to open that one format, so a hostile body cannot reach an exotic decoder.
The declared size is checked against ``max_pixels`` *before* any pixel is decoded
(decompression bombs). JPEGs that will be shrunk are decoded at a reduced DCT scale
(``Image.draft``), which is most of the speed of this stage.

Decoding memory is bounded by bytes, not only pixels: a 13,000 x 13,000 1-bit PNG is 20 KB on
the wire and under ``max_pixels``, yet decoding and converting it to RGB takes ~850 MB. From
the header (after ``draft``) :func:`decode_cost` estimates the bytes Pillow will hold; above
``max_decode_bytes`` the row is ``decode_too_large`` and nothing is decoded. Decodes in one
process together stay within ``decode_memory_budget``: a decode waits for its bytes from a
:class:`DecodeBudget` shared by the process's decoding threads.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

from PIL import Image, ImageOps

from laion_hf.errors import FetchError
from laion_hf.images import status as st

# We enforce our own pixel limit (ResizeConfig.max_pixels) and report it as a status.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
ENCODE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
INTERPOLATIONS = {
    "area": Image.BOX,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "nearest": Image.NEAREST,
}

# magic bytes -> Pillow format name
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
)


def sniff_format(data: bytes) -> Optional[str]:
    """The Pillow format name of ``data`` from its magic bytes, or None when it is no image."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


@dataclass(frozen=True)
class ResizeConfig:
    """How fetched images are checked, resized and encoded (img2dataset's options and defaults).

    Attributes:
        image_size: target side in pixels.
        resize_mode: ``no``, ``border`` (fit inside, pad to a square with black),
            ``keep_ratio`` (smaller side = image_size), ``keep_ratio_largest`` (larger side =
            image_size) or ``center_crop`` (smaller side = image_size, then a centred square).
        resize_only_if_bigger: never upscale.
        encode_format: ``jpg``, ``png`` or ``webp``.
        encode_quality: JPEG/WebP quality (0-100); PNG uses compress level ``min(9, quality // 10)``.
        skip_reencode: keep the original bytes when the image needs no resize and is already
            in ``encode_format`` (``resize_mode="no"`` + ``skip_reencode=True`` keeps originals).
        min_image_size: refuse images whose smaller side is below this.
        max_image_area: refuse images with more pixels than this.
        max_aspect_ratio: refuse images with max(w, h) / min(w, h) above this.
        max_pixels: decompression-bomb limit on the declared pixel count.
        fast_decode: decode JPEGs at a reduced DCT scale when they will be shrunk.
        max_decode_bytes: refuse (``decode_too_large``) an image whose decode and RGB
            conversion would hold more bytes than this (see :func:`decode_cost`).
        decode_memory_budget: bytes that all decodes of one process may hold at once; a
            decode waits until its estimate fits (not part of the output: not fingerprinted).
        downscale_interpolation / upscale_interpolation: ``area`` (box, img2dataset's
            default for shrinking), ``bilinear``, ``bicubic``, ``lanczos`` or ``nearest``.
    """

    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    skip_reencode: bool = False
    min_image_size: int = 0
    max_image_area: float = math.inf
    max_aspect_ratio: float = math.inf
    max_pixels: int = 178_956_970
    fast_decode: bool = True
    max_decode_bytes: int = 512 * 2**20
    decode_memory_budget: int = 2 * 2**30
    downscale_interpolation: str = "area"
    upscale_interpolation: str = "lanczos"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise FetchError(f"resize_mode={self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.encode_format not in ENCODE_FORMATS:
            raise FetchError(f"encode_format={self.encode_format!r} is not one of {', '.join(ENCODE_FORMATS)}")
        if self.image_size <= 0 and self.resize_mode != "no":
            raise FetchError(f"image_size must be > 0 with resize_mode={self.resize_mode!r}, got {self.image_size}")
        for name in ("downscale_interpolation", "upscale_interpolation"):
            if getattr(self, name) not in INTERPOLATIONS:
                raise FetchError(f"{name}={getattr(self, name)!r} is not one of {', '.join(INTERPOLATIONS)}")
        if not 0 <= self.encode_quality <= 100:
            raise FetchError(f"encode_quality must be within 0..100, got {self.encode_quality}")
        for name in ("max_decode_bytes", "decode_memory_budget"):
            if not getattr(self, name) > 0:
                raise FetchError(f"{name} must be > 0 bytes, got {getattr(self, name)}")

    def fingerprint(self) -> str:
        """A stable string of every setting that changes the output (part of the cache key)."""
        d = asdict(self)
        del d["decode_memory_budget"]  # only paces decodes, never changes a result
        return json.dumps(d, sort_keys=True, default=str)


class ImageResult:
    """What :func:`process_image` returns: a status and, on success, the encoded image."""

    __slots__ = ("status", "error", "data", "width", "height", "original_width", "original_height", "sha256")

    def __init__(
        self,
        status: str,
        error: Optional[str] = None,
        data: Optional[bytes] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        original_width: Optional[int] = None,
        original_height: Optional[int] = None,
        sha256: Optional[str] = None,
    ) -> None:
        self.status, self.error, self.data = status, error, data
        self.width, self.height = width, height
        self.original_width, self.original_height = original_width, original_height
        self.sha256 = sha256

    def __repr__(self) -> str:
        size = f" {self.width}x{self.height}" if self.width else ""
        return f"ImageResult({self.status}{size}{', ' + repr(self.error) if self.error else ''})"


def _target_size(w: int, h: int, cfg: ResizeConfig) -> tuple[int, int]:
    """Size the image is scaled to before cropping/padding."""
    s = cfg.image_size
    if cfg.resize_mode in ("keep_ratio", "center_crop"):
        scale = s / min(w, h)
    else:  # border, keep_ratio_largest
        scale = s / max(w, h)
    if cfg.resize_only_if_bigger and scale >= 1:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def _bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow keeps per pixel of ``mode`` (RGB is stored in 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_cost(img: Image.Image, orientation: int = 1) -> int:
    """Bytes that decoding ``img`` (opened, not loaded; after any ``draft``), converting it to
    RGB and applying its EXIF orientation hold at the peak: width * height * bytes per pixel."""
    w, h = img.size
    px = w * h
    cost = px * _bytes_per_pixel(img.mode)
    if img.mode != "RGB":
        alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
        cost += px * (9 if alpha else 4)  # RGBA copy + RGB canvas + mask, or the RGB copy
    if orientation != 1:
        cost += px * 4  # exif_transpose makes a copy
    return cost


class DecodeBudget:
    """Bytes that decodes in one process may hold together; :meth:`hold` waits for room.

    A decode larger than the whole budget runs alone rather than never. ``peak`` is the most
    bytes ever held at once (for tests and diagnostics).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the block."""
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + nbytes <= self.capacity)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


_BUDGETS: dict[int, DecodeBudget] = {}
_BUDGETS_LOCK = threading.Lock()
_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_M_TRIM_THRESHOLD = -1
_MMAP_FLOOR = 4 * 2**20  # decodes this large come from mmap and go back to the system when freed
_TRIM_PAD = 32 * 2**20  # free heap kept at the top of an arena before it is trimmed


def _give_freed_decodes_back() -> None:
    """Make glibc serve allocations of 4 MiB and more (Pillow's image blocks) from ``mmap``,
    so a freed decode goes back to the system at once. By default glibc raises that threshold
    after the first large free and keeps later decodes in per-thread arenas: then the resident
    size grows to threads x the largest decode and the budget would bound live bytes only.

    Fixing the mmap threshold also freezes glibc's trim threshold at 128 KiB, and then every
    free at an arena's top gives its pages back, to be faulted in (zeroed) again by the next
    allocation: 16x the page faults and ~20 % more CPU per downloaded image. A 32 MiB trim
    threshold keeps the small allocations' pages (what glibc's dynamic default would do)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_FLOOR)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_PAD)
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        pass


def process_budget(capacity: int) -> DecodeBudget:
    """This process's :class:`DecodeBudget` of ``capacity`` bytes (one per capacity)."""
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(capacity)
        if budget is None:
            if not _BUDGETS:
                _give_freed_decodes_back()
            budget = _BUDGETS[capacity] = DecodeBudget(capacity)
        return budget


def _orientation(img: Image.Image, fmt: str) -> int:
    """The EXIF orientation (1-8) of an opened image, read without decoding its pixels.

    Pillow's ``PngImageFile.getexif`` decodes the whole image to look for an ``eXIf`` chunk
    after the pixel data; only one before the pixels (where browsers read it) is used here.
    """
    if fmt == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(e: BaseException) -> str:
    """``Type: message`` without object addresses (Pillow names ``<_io.BytesIO object at 0x..>``),
    so the same bad image gives the same error text on every run and machine."""
    return _ADDRESS.sub("", f"{type(e).__name__}: {e}")


def process_image(data: bytes, cfg: ResizeConfig, budget: Optional[DecodeBudget] = None) -> ImageResult:
    """Sniff, decode (EXIF-oriented, RGB), check, resize and encode ``data`` per ``cfg``.

    The decode holds its estimated bytes of ``budget`` (default: the process's budget of
    ``cfg.decode_memory_budget``). Never raises for bad images: the status says what went wrong.
    """
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:16]
        what = "an empty body" if not data else f"no image magic bytes (starts with {head!r})"
        return ImageResult(st.NOT_AN_IMAGE, f"body is {what}")
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as e:
        return ImageResult(st.DECOMPRESSION_BOMB, f"{fmt}: {e}")
    except Exception as e:
        return ImageResult(st.DECODE_ERROR, f"{fmt} header cannot be read: {_describe(e)}")
    try:
        ow, oh = img.size
        if ow <= 0 or oh <= 0:
            return ImageResult(st.DECODE_ERROR, f"{fmt} declares an empty size {ow}x{oh}")
        if ow * oh > cfg.max_pixels:
            return ImageResult(
                st.DECOMPRESSION_BOMB,
                f"{fmt} declares {ow}x{oh} = {ow * oh} pixels, above max_pixels={cfg.max_pixels}",
                original_width=ow,
                original_height=oh,
            )
        orientation = _orientation(img, fmt)
        if orientation in (5, 6, 7, 8):
            ow, oh = oh, ow  # the displayed size
        if cfg.min_image_size and min(ow, oh) < cfg.min_image_size:
            return ImageResult(
                st.IMAGE_TOO_SMALL,
                f"{ow}x{oh} is smaller than min_image_size={cfg.min_image_size}",
                original_width=ow,
                original_height=oh,
            )
        if ow * oh > cfg.max_image_area:
            return ImageResult(
                st.IMAGE_AREA_TOO_LARGE,
                f"{ow}x{oh} is above max_image_area={cfg.max_image_area}",
                original_width=ow,
                original_height=oh,
            )
        if max(ow, oh) / min(ow, oh) > cfg.max_aspect_ratio:
            return ImageResult(
                st.ASPECT_RATIO_TOO_LARGE,
                f"{ow}x{oh} aspect ratio is above max_aspect_ratio={cfg.max_aspect_ratio}",
                original_width=ow,
                original_height=oh,
            )
        needs_resize = cfg.resize_mode != "no" and (
            _target_size(ow, oh, cfg) != (ow, oh)
            or (cfg.resize_mode in ("center_crop", "border") and (ow, oh) != (cfg.image_size, cfg.image_size))
        )
        out_pil = ENCODE_FORMATS[cfg.encode_format]
        if cfg.skip_reencode and not needs_resize and fmt == out_pil:
            img.close()
            return ImageResult(st.SUCCESS, None, data, ow, oh, ow, oh, hashlib.sha256(data).hexdigest())
        if needs_resize and fmt == "JPEG" and cfg.fast_decode:
            s = cfg.image_size
            img.draft("RGB", (s, s))  # decode at 1/2, 1/4 or 1/8 scale, still >= s on both sides
        cost = decode_cost(img, orientation)
        if cost > cfg.max_decode_bytes:
            return ImageResult(
                st.DECODE_TOO_LARGE,
                f"{fmt} {img.size[0]}x{img.size[1]} mode {img.mode} needs ~{cost / 2**20:.0f} MiB "
                f"to decode and convert to RGB, above max_decode_bytes={cfg.max_decode_bytes}",
                original_width=ow,
                original_height=oh,
            )
        with (budget or process_budget(cfg.decode_memory_budget)).hold(cost):  # until encoded
            return _decode_encode(img, fmt, orientation, needs_resize, ow, oh, cfg)
    finally:
        try:
            img.close()
        except Exception:
            pass


def _decode_encode(
    img: Image.Image, fmt: str, orientation: int, needs_resize: bool, ow: int, oh: int, cfg: ResizeConfig
) -> ImageResult:
    """Decode an opened image, orient it, make it RGB, resize it and encode it per ``cfg``."""
    opened = img
    try:
        img.load()
        img = ImageOps.exif_transpose(img) if orientation != 1 else img
        img = _to_rgb(img)
    except Image.DecompressionBombError as e:
        return ImageResult(st.DECOMPRESSION_BOMB, str(e), original_width=ow, original_height=oh)
    except Exception as e:
        return ImageResult(
            st.DECODE_ERROR, f"{fmt} data cannot be decoded: {_describe(e)}", original_width=ow, original_height=oh
        )
    if needs_resize:
        img = _resize(img, ow, oh, cfg)
    if img is not opened:
        opened.close()  # free the full-size decode before encoding
    w, h = img.size
    buf = io.BytesIO()
    out_pil = ENCODE_FORMATS[cfg.encode_format]
    try:
        if out_pil == "PNG":
            img.save(buf, format="PNG", compress_level=min(9, cfg.encode_quality // 10))
        else:
            img.save(buf, format=out_pil, quality=cfg.encode_quality)
    except Exception as e:
        return ImageResult(
            st.ENCODE_ERROR,
            f"encoding {cfg.encode_format} failed: {_describe(e)}",
            original_width=ow,
            original_height=oh,
        )
    out = buf.getvalue()
    return ImageResult(st.SUCCESS, None, out, w, h, ow, oh, hashlib.sha256(out).hexdigest())


def _resize(img: Image.Image, ow: int, oh: int, cfg: ResizeConfig) -> Image.Image:
    """Apply ``cfg.resize_mode`` to a decoded image whose original (displayed) size is ow x oh."""
    tw, th = _target_size(ow, oh, cfg)
    if img.size != (tw, th):
        down = tw * th < img.size[0] * img.size[1]
        name = cfg.downscale_interpolation if down else cfg.upscale_interpolation
        img = img.resize((tw, th), INTERPOLATIONS[name])
    s = cfg.image_size
    if cfg.resize_mode == "center_crop" and (tw, th) != (s, s):
        if tw >= s and th >= s:
            left, top = (tw - s) // 2, (th - s) // 2
            img = img.crop((left, top, left + s, top + s))
        else:  # resize_only_if_bigger kept a small image: pad it like border
            img = _pad(img, s)
    elif cfg.resize_mode == "border" and (tw, th) != (s, s):
        img = _pad(img, s)
    return img


def _pad(img: Image.Image, s: int) -> Image.Image:
    w, h = img.size
    if w > s or h > s:
        img = img.crop(
            (
                (w - min(w, s)) // 2,
                (h - min(h, s)) // 2,
                (w - min(w, s)) // 2 + min(w, s),
                (h - min(h, s)) // 2 + min(h, s),
            )
        )
        w, h = img.size
    canvas = Image.new("RGB", (s, s), (0, 0, 0))
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas

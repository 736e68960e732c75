"""A loopback image server (aiohttp.web) for tests, benchmarks and the demo.

It binds to 127.0.0.1 only, serves generated images of many sizes and formats with a
configurable latency, and every fault an image fetcher meets on the web::

    from laion_hf.testing.image_server import ImageServer

    with ImageServer(latency=(0.02, 0.1)) as srv:      # background thread, own loop
        srv.base_url                                   # "http://127.0.0.1:PORT"
        srv.image_url(640, 480, "jpg")                 # a generated JPEG
        srv.fault_url("404")                           # any name in FAULTS
        srv.rewrite_url("https://cdn.example.com/a/b.jpg?x=1")
        #  -> "http://127.0.0.1:PORT/a/b.jpg?x=1"  (scheme+host replaced, path/query kept)
        srv.request_count, srv.requests                # what reached the server

Routes
------
``/img/{W}x{H}.{fmt}``      generated image; fmt in jpg, png, webp, gif, bmp, tiff;
                            query: ``seed``, ``quality``, ``mode`` (RGB, RGBA, L, P, CMYK),
                            ``exif`` (EXIF orientation 1-8), ``header`` (X-Robots-Tag value)
``/pool/{anything}``        one of a pool of realistic JPEGs (50-300 KB, 300-1,500 px),
                            picked by the path's hash (benchmarks)
``/status/{code}``          an empty response with that HTTP status
``/world/{key}.jpg``        the world image ``key`` (:func:`laion_hf.world.render`, byte-identical)
``/_server/stats``          ``{"request_count": N}`` (for a server run as ``python -m``)
``/fault/{name}``           see :data:`FAULTS`
anything else               404 (``catch_all="404"``) or a pool image (``catch_all="image"``,
                            for the demo's rewritten URLs)

Nothing here is faked: responses go over real TCP sockets on the loopback interface.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import random
import struct
import threading
import time
import zlib
from collections import deque
from functools import lru_cache
from typing import Any, Iterable
from urllib.parse import urlsplit

import numpy as np
from aiohttp import ClientConnectionResetError, web
from PIL import Image

__all__ = ["ImageServer", "FAULTS", "make_image", "bomb_png"]

#: Fault names accepted by :meth:`ImageServer.fault_url` (``/fault/{name}``).
FAULTS = {
    "404": "HTTP 404 Not Found",
    "410": "HTTP 410 Gone",
    "500": "HTTP 500 Internal Server Error",
    "503": "HTTP 503 Service Unavailable",
    "429": "HTTP 429 with Retry-After (query: retry_after seconds, times = how many 429s before the image, key)",
    "flaky": "fails with `code` (default 503) `times` times for `key`, then serves an image",
    "slow-body": "sends the image in `chunks` pieces with `delay` seconds between them",
    "hang": "accepts the request and never answers (for `seconds`, default 60)",
    "reset": "closes the TCP connection without answering",
    "truncated": "announces a Content-Length, sends half the body and closes",
    "corrupt-jpeg": "a JPEG header followed by garbage",
    "html-as-image": "an HTML page served with Content-Type: image/jpeg",
    "wrong-type": "a valid PNG served with Content-Type: text/html",
    "redirect": "a chain of `n` redirects (default 3) ending at an image",
    "redirect-loop": "redirects to itself forever",
    "redirect-private": "redirects to a private address (`to`, default http://10.0.0.1/x.jpg)",
    "huge-no-length": "streams `mb` MB (default 64) with no Content-Length",
    "bomb-png": "a small PNG that declares 16,000 x 16,000 pixels (a decompression bomb)",
    "robots": "an image with X-Robots-Tag set to `tag` (default noai)",
    "gzip": "an image sent with Content-Encoding: gzip",
    "set-cookie": "sets a cookie and redirects to no-cookie",
    "no-cookie": "serves an image only when the request carries no Cookie/Authorization (else 400)",
    "user-agent": "serves an image only when the User-Agent contains `want` (default laion-hf), else 403",
    "empty": "a 200 with an empty body",
    "big-png": "a valid 1-bit PNG of `w` x `h` zeros (default 13,000 x 13,000: ~20 KB, under "
    "the pixel limit, ~850 MB to decode and convert to RGB)",
}

_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def _pixels(width: int, height: int, seed: int, noise: float = 6.0) -> np.ndarray:
    """A deterministic photo-like RGB array: smooth colour fields plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    gh, gw = max(2, height // 64 + 2), max(2, width // 64 + 2)
    coarse = rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    if noise:
        smooth += rng.normal(0.0, noise, size=smooth.shape).astype(np.float32)
    return np.clip(smooth, 0, 255).astype(np.uint8)


@lru_cache(maxsize=512)
def make_image(
    width: int,
    height: int,
    fmt: str = "jpg",
    seed: int = 0,
    mode: str = "RGB",
    quality: int = 85,
    exif_orientation: int | None = None,
    noise: float = 6.0,
) -> bytes:
    """Encode a deterministic generated image of ``width`` x ``height`` in ``fmt``."""
    pil_format = _FORMATS[fmt.lower()]
    img = Image.fromarray(_pixels(width, height, seed, noise))
    if mode != "RGB":
        img = img.convert(mode)
    kwargs: dict[str, Any] = {}
    if pil_format in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = int(exif_orientation)
        kwargs["exif"] = exif.tobytes()
    if pil_format == "JPEG" and img.mode in ("RGBA", "P", "LA"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **kwargs)
    return buf.getvalue()


@lru_cache(maxsize=4)
def bomb_png(width: int = 16_000, height: int = 16_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zeros: a few KB that decode to ~width*height pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _pool(size: int, seed: int, min_side: int, max_side: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(size):
        w, h = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
        out.append(make_image.__wrapped__(w, h, "jpg", seed * 100_003 + i, "RGB", rng.randint(80, 92), None, 7.0))
    return out


def _world_jpeg(key: str) -> bytes:
    from laion_hf.world import render

    return render(key)


class ImageServer:
    """A loopback HTTP server of generated images and faults, run in a background thread.

    Args:
        latency: seconds added before each answer: a number, or ``(min, max)`` drawn uniformly.
        catch_all: what unknown paths get: ``"404"`` (default) or ``"image"`` (a pool JPEG).
        pool_size: how many distinct realistic JPEGs back ``/pool/`` and ``catch_all="image"``.
        pool_sides: (min, max) side in pixels of the pool images.
        fault_rate: with ``catch_all="image"``, the share of unknown paths (picked by the
            path's hash, so reruns agree) answered 404 instead, for a realistic success ratio.
        seed: makes generated images and latencies reproducible.
        port: 0 picks a free port.
        log_limit: how many requests :attr:`requests` remembers.
        ssl_context: serve HTTPS with this server-side ``ssl.SSLContext`` (see
            :func:`laion_hf.testing.tls.make_certificates`); the base URL is then ``https://``.
    """

    def __init__(
        self,
        latency: float | tuple[float, float] = 0.0,
        catch_all: str = "404",
        pool_size: int = 32,
        pool_sides: tuple[int, int] = (300, 1500),
        fault_rate: float = 0.0,
        seed: int = 0,
        port: int = 0,
        log_limit: int = 100_000,
        ssl_context: Any = None,
    ) -> None:
        if catch_all not in ("404", "image"):
            raise ValueError(f"catch_all must be '404' or 'image', got {catch_all!r}")
        self.latency = (
            (float(latency), float(latency)) if isinstance(latency, (int, float)) else tuple(map(float, latency))
        )
        self.catch_all = catch_all
        self.pool_size = pool_size
        self.pool_sides = pool_sides
        self.fault_rate = float(fault_rate)
        self.seed = seed
        self._port = port
        self._ssl_context = ssl_context
        self._rng = random.Random(seed)
        self._pool: list[bytes] | None = None
        self._counters: dict[str, int] = {}
        self.requests: deque[tuple[str, str, dict[str, str]]] = deque(maxlen=log_limit)
        self.request_count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Start serving in a daemon thread; returns the base URL (``http://127.0.0.1:PORT``,
        or ``https://`` with an ``ssl_context``)."""
        if self._thread is not None:
            return self.base_url
        if self.catch_all == "image":
            self.pool()  # generate before serving, so latencies are the network's, not numpy's
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as e:  # pragma: no cover - reported to start()
                error.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._serve_stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="laion-hf-image-server", daemon=True)
        self._thread.start()
        ready.wait(60)
        if error:
            raise error[0]
        return self.base_url

    def stop(self) -> None:
        """Stop the server and join its thread (hung handlers are cancelled)."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop

        def _stop() -> None:
            if self._stopping is not None:
                self._stopping.set()
            loop.stop()

        loop.call_soon_threadsafe(_stop)
        self._thread.join(30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "ImageServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _serve_start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/img/{w:\\d+}x{h:\\d+}.{fmt}", self._img)
        app.router.add_route("*", "/pool/{tail:.*}", self._pool_image)
        app.router.add_route("*", "/status/{code:\\d+}", self._status)
        app.router.add_route("*", "/world/{key:[A-Za-z0-9_~.-]+}.jpg", self._world_image)
        app.router.add_route("GET", "/_server/stats", self._stats)
        app.router.add_route("*", "/fault/{name}", self._fault)
        app.router.add_route("*", "/fault/{name}/{rest:.*}", self._fault)
        app.router.add_route("*", "/{tail:.*}", self._catch_all)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self._port, backlog=1024, reuse_address=True, ssl_context=self._ssl_context
        )
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"{'https' if self._ssl_context is not None else 'http'}://127.0.0.1:{port}"

    async def _serve_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ URLs
    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (``/...``) on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def image_url(self, width: int, height: int, fmt: str = "jpg", **query: Any) -> str:
        """URL of a generated ``width`` x ``height`` image in ``fmt`` (query: seed, quality, mode, exif, header)."""
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return self.url(f"/img/{width}x{height}.{fmt}") + (f"?{q}" if q else "")

    def fault_url(self, name: str, **query: Any) -> str:
        """URL of the fault ``name`` (a key of :data:`FAULTS`), with its query parameters."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return self.url(f"/fault/{name}") + (f"?{q}" if q else "")

    def rewrite_url(self, url: str) -> str:
        """Map ``url``'s scheme and host to this server, keeping path, query and odd characters.

        Raises ValueError when ``url`` has no ``scheme://host`` part: such a URL is never sent
        anywhere (so a real host cannot be reached by accident).
        """
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"cannot rewrite {url!r}: it has no scheme://host part")
        rest = url.split("://", 1)[1]
        cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
        tail = rest[cut:]
        if not tail.startswith("/"):
            tail = "/" + tail
        return self.base_url + tail

    def rewrite_urls(self, urls: Iterable[str | None]) -> list[str | None]:
        """:meth:`rewrite_url` over many URLs; unrewritable ones become ``None``-safe invalid markers."""
        out: list[str | None] = []
        for u in urls:
            if u is None:
                out.append(None)
                continue
            try:
                out.append(self.rewrite_url(u))
            except ValueError:
                out.append("invalid-url:" + u)
        return out

    def rewrite_column(self, table: Any, column: str = "url") -> Any:
        """``table`` (a ``pyarrow.Table``) with ``column``'s URLs rewritten to this server."""
        import pyarrow as pa

        i = table.schema.get_field_index(column)
        if i < 0:
            raise ValueError(f"column {column!r} not in {table.column_names}")
        urls = self.rewrite_urls(table.column(column).to_pylist())
        return table.set_column(i, table.schema.field(i), pa.array(urls, table.schema.field(i).type))

    def reset_log(self) -> None:
        """Forget logged requests and fault counters."""
        self.requests.clear()
        self.request_count = 0
        self._counters.clear()

    def pool(self) -> list[bytes]:
        """The pool of realistic JPEGs (generated once)."""
        if self._pool is None:
            self._pool = _pool(max(1, self.pool_size), self.seed, *self.pool_sides)
        return self._pool

    # ------------------------------------------------------------------ handlers
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.request_count += 1
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        lo, hi = self.latency
        if hi > 0:
            await asyncio.sleep(lo if hi <= lo else self._rng.uniform(lo, hi))
        try:
            return await handler(request)
        except (ConnectionError, ClientConnectionResetError):
            # the client went away mid-answer (a fetcher cutting off a huge body): nothing to log
            raise asyncio.CancelledError() from None

    def _count(self, key: str) -> int:
        n = self._counters.get(key, 0)
        self._counters[key] = n + 1
        return n

    async def _img(self, request: web.Request) -> web.Response:
        w, h = int(request.match_info["w"]), int(request.match_info["h"])
        fmt = request.match_info["fmt"].lower()
        if fmt not in _FORMATS or w <= 0 or h <= 0 or w * h > 40_000_000:
            return web.Response(status=404, text="unknown image")
        q = request.query
        data = make_image(
            w,
            h,
            fmt,
            int(q.get("seed", 0)),
            q.get("mode", "RGB"),
            int(q.get("quality", 85)),
            int(q["exif"]) if "exif" in q else None,
        )
        headers = {"X-Robots-Tag": q["header"]} if "header" in q else None
        return web.Response(body=data, content_type=_MIME[_FORMATS[fmt]], headers=headers)

    async def _pool_image(self, request: web.Request) -> web.Response:
        pool = self.pool()
        idx = int.from_bytes(hashlib.blake2b(request.path_qs.encode(), digest_size=8).digest(), "little") % len(pool)
        return web.Response(body=pool[idx], content_type="image/jpeg")

    # ---- the embedded world (laion_hf.world): /world/{key}.jpg
    def world_url(self, key: str) -> str:
        """URL of the world image ``key`` on this server."""
        return self.url(f"/world/{key}.jpg")

    def prerender_world(self, keys: Iterable[str]) -> int:
        """Render world images ahead of their requests (the demo does, so that fetch latencies
        are the network's, not the renderer's); returns how many are held."""
        from concurrent.futures import ThreadPoolExecutor

        cache = self.__dict__.setdefault("_world_cache", {})
        todo = sorted(set(keys) - set(cache))
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            cache.update(zip(todo, pool.map(_world_jpeg, todo)))
        return len(cache)

    async def _world_image(self, request: web.Request) -> web.Response:
        from laion_hf.world import key_from_path

        key = key_from_path(request.path)
        if key is None:
            return web.Response(status=404, text="not a world image path")
        data = self.__dict__.get("_world_cache", {}).get(key)
        if data is None:
            data = await asyncio.get_running_loop().run_in_executor(None, _world_jpeg, key)
        return web.Response(body=data, content_type="image/jpeg")

    async def _stats(self, request: web.Request) -> web.Response:
        """Request count (this request excluded), for a server run in another process."""
        self.request_count -= 1
        self.requests.pop()
        return web.json_response({"request_count": self.request_count})

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    async def _catch_all(self, request: web.Request) -> web.StreamResponse:
        if self.catch_all == "image" and self.fault_rate > 0:
            h = int.from_bytes(hashlib.blake2b(b"fault" + request.path_qs.encode(), digest_size=8).digest(), "little")
            if (h % 10_000) < self.fault_rate * 10_000:
                return web.Response(status=404, text="not found")
        if self.catch_all == "image":
            return await self._pool_image(request)
        return web.Response(status=404, text="not found")

    async def _fault(self, request: web.Request) -> web.StreamResponse:  # noqa: C901 - one branch per fault
        name = request.match_info["name"]
        q = request.query
        small = make_image(64, 48, "jpg", 7)
        if name in ("404", "410", "500", "503"):
            return web.Response(status=int(name), text=f"fault {name}")
        if name == "429":
            times = int(q.get("times", 10**9))
            if self._count("429:" + q.get("key", "")) < times:
                return web.Response(status=429, headers={"Retry-After": q.get("retry_after", "1")}, text="slow down")
            return web.Response(body=small, content_type="image/jpeg")
        if name == "flaky":
            if self._count("flaky:" + q.get("key", "")) < int(q.get("times", 2)):
                return web.Response(status=int(q.get("code", 503)), text="try again")
            return web.Response(body=small, content_type="image/jpeg")
        if name == "slow-body":
            data = make_image(320, 240, "jpg", 3)
            chunks, delay = int(q.get("chunks", 20)), float(q.get("delay", 0.5))
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
            await resp.prepare(request)
            step = max(1, len(data) // chunks + 1)
            for i in range(0, len(data), step):
                await resp.write(data[i : i + step])
                await asyncio.sleep(delay)
            await resp.write_eof()
            return resp
        if name == "hang":
            assert self._stopping is not None
            try:
                await asyncio.wait_for(self._stopping.wait(), float(q.get("seconds", 60)))
            except asyncio.TimeoutError:
                pass
            return web.Response(body=small, content_type="image/jpeg")
        if name == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()  # handler_cancellation: nothing more is sent
        if name == "truncated":
            data = make_image(320, 240, "jpg", 4)
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.05)
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError()
        if name == "corrupt-jpeg":
            body = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) * 20
            return web.Response(body=body, content_type="image/jpeg")
        if name == "html-as-image":
            return web.Response(body=b"<!DOCTYPE html><html><body>Not found</body></html>", content_type="image/jpeg")
        if name == "wrong-type":
            return web.Response(body=make_image(50, 40, "png", 5), content_type="text/html")
        if name == "redirect":
            n = int(q.get("n", 3))
            if n <= 0:
                return web.Response(body=small, content_type="image/jpeg")
            raise web.HTTPFound(f"/fault/redirect?n={n - 1}")
        if name == "redirect-loop":
            raise web.HTTPFound("/fault/redirect-loop")
        if name == "redirect-private":
            raise web.HTTPFound(q.get("to", "http://10.0.0.1/x.jpg"))
        if name == "huge-no-length":
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            block = b"\xff\xd8\xff" + b"\x00" * (1 << 20)
            for _ in range(int(q.get("mb", 64))):
                await resp.write(block)
            await resp.write_eof()
            return resp
        if name == "bomb-png":
            return web.Response(body=bomb_png(), content_type="image/png")
        if name == "robots":
            return web.Response(body=small, content_type="image/jpeg", headers={"X-Robots-Tag": q.get("tag", "noai")})
        if name == "gzip":
            data = make_image(200, 150, "jpg", 6)
            return web.Response(
                body=gzip.compress(data), content_type="image/jpeg", headers={"Content-Encoding": "gzip"}
            )
        if name == "set-cookie":
            resp = web.HTTPFound("/fault/no-cookie")
            resp.set_cookie("session", "secret", path="/")
            raise resp
        if name == "no-cookie":
            if "Cookie" in request.headers or "Authorization" in request.headers:
                return web.Response(status=400, text="credentials were sent")
            return web.Response(body=small, content_type="image/jpeg")
        if name == "user-agent":
            if q.get("want", "laion-hf") not in request.headers.get("User-Agent", ""):
                return web.Response(status=403, text="bad user agent")
            return web.Response(body=small, content_type="image/jpeg")
        if name == "empty":
            return web.Response(body=b"", content_type="image/jpeg")
        if name == "big-png":
            body = bomb_png(int(q.get("w", 13_000)), int(q.get("h", 13_000)))
            return web.Response(body=body, content_type="image/png")
        return web.Response(status=404, text=f"unknown fault {name}")


def _main() -> None:  # pragma: no cover - manual use: python -m laion_hf.testing.image_server
    import argparse

    p = argparse.ArgumentParser(description="Serve generated images and faults on 127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0))
    p.add_argument("--catch-all", choices=["404", "image"], default="404")
    p.add_argument("--pool-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with ImageServer(
        latency=tuple(a.latency), catch_all=a.catch_all, port=a.port, pool_size=a.pool_size, seed=a.seed
    ) as srv:
        print(srv.base_url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover
    _main()

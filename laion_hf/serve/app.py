"""clip back's HTTP API over our index folders, on aiohttp (:func:`make_app`).

Routes: ``POST /knn-service``, ``POST /metadata``, ``GET /indices-list``, ``GET /config.json``,
``GET /health``; ``/`` is left free for a web page mounted on the same app. clip-retrieval's
``ClipClient`` and front end work unchanged; where clip back misbehaves this does not:

* a bad request (missing or mistyped field, ``aesthetic_score: null``, an oversized body, an
  unknown index, an image that does not decode) is a 400 with a message naming the field;
* ``image_url`` is fetched by our guarded fetcher (SSRF guard, size cap, timeouts,
  X-Robots-Tag), private addresses refused unless allowed;
* a filter asked for but unavailable (no safety column, no violence detector, no aesthetic
  rating embeddings, no mclip) is named in the ``X-Unavailable-Filters`` header and logged;
* ids are row numbers of metadata checked against the index's fingerprint at start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from laion_hf.errors import KnnIndexError, LaionHFError
from laion_hf.index.query import IndexFolder, jsonable
from laion_hf.index.search import duplicates

LOG = logging.getLogger("laion_hf.serve")
UNAVAILABLE_HEADER = "X-Unavailable-Filters"
SAFETY_THRESHOLD = 0.5


@dataclass(frozen=True)
class ServeConfig:
    """Limits and policies of the search service.

    Attributes:
        max_body_bytes: largest request body (a base64 image included).
        max_num_images: largest ``num_images`` (results with metadata).
        max_result_ids: largest ``num_result_ids`` (results searched and filtered).
        allow_private_image_urls: ``image_url`` may reach private/loopback addresses
            (False, True, or CIDR networks), as ``FetchConfig.allow_private_networks``.
        image_url_timeout: seconds to fetch an ``image_url``.
        max_image_bytes: largest ``image_url`` body.
        threads: worker threads for model inference and searches.
        url_column: the metadata column ``/config.json`` names for the front end.
    """

    max_body_bytes: int = 16 * 2**20
    max_num_images: int = 10_000
    max_result_ids: int = 100_000
    allow_private_image_urls: bool | tuple = False
    image_url_timeout: float = 10.0
    max_image_bytes: int = 16 * 2**20
    threads: int = 4
    url_column: str = "url"


class BadRequest(Exception):
    """A request the service refuses (answered with a 400 and this message)."""


@dataclass
class KnnRequest:
    """A validated ``/knn-service`` body."""

    folder: IndexFolder
    modality: str
    num_images: int
    num_result_ids: int
    text: str | None = None
    image: bytes | None = None
    image_url: str | None = None
    embedding: np.ndarray | None = None
    deduplicate: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    use_mclip: bool = False
    aesthetic_score: int | None = None
    aesthetic_weight: float = 0.5
    unavailable: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- parsing
def _get(body: dict, name: str, types: tuple, default: Any = None, what: str = "") -> Any:
    if name not in body:
        return default
    value = body[name]
    if isinstance(value, bool) and bool not in types:
        raise BadRequest(f"{name} must be {what}, got {json.dumps(value)}")
    if not isinstance(value, types):
        raise BadRequest(f"{name} must be {what}, got {json.dumps(value)[:80]}")
    return value


def _count(body: dict, name: str, default: int | None, limit: int) -> int:
    value = _get(body, name, (int,), default, "an integer")
    if value is None:
        raise BadRequest(f"missing field {name} (an integer >= 1)")
    if not 1 <= value <= limit:
        raise BadRequest(f"{name} must be between 1 and {limit}, got {value}")
    return value


def _aesthetic(body: dict) -> tuple[int | None, float]:
    score = body.get("aesthetic_score", "")
    if score is None:
        raise BadRequest('aesthetic_score must be an integer 0-9, or "" for none; got null')
    if isinstance(score, str) and score.strip() == "":
        score = None
    elif isinstance(score, bool) or not isinstance(score, (int, str)):
        raise BadRequest(f'aesthetic_score must be an integer 0-9, or "" for none; got {json.dumps(score)[:40]}')
    else:
        try:
            score = int(score)
        except ValueError:
            raise BadRequest(f"aesthetic_score must be an integer 0-9, got {score!r}") from None
        if not 0 <= score <= 9:
            raise BadRequest(f"aesthetic_score must be between 0 and 9, got {score}")
    weight = body.get("aesthetic_weight", 0.5)
    if isinstance(weight, str) and weight.strip() == "":
        weight = 0.5
    if isinstance(weight, bool) or not isinstance(weight, (int, float, str)):
        raise BadRequest(f"aesthetic_weight must be a number, got {json.dumps(weight)[:40]}")
    try:
        return score, float(weight)
    except ValueError:
        raise BadRequest(f"aesthetic_weight must be a number, got {weight!r}") from None


def _folder(indices: Mapping[str, IndexFolder], body: dict) -> IndexFolder:
    name = _get(body, "indice_name", (str, type(None)), None, "an index name (string) or null")
    if name is None:
        return next(iter(indices.values()))
    if name not in indices:
        raise BadRequest(f"unknown index {name!r}: this service has {', '.join(indices)}")
    return indices[name]


def _query_fields(req: KnnRequest, body: dict) -> None:
    text = _get(body, "text", (str, type(None)), None, "a string")
    image = _get(body, "image", (str, type(None)), None, "a base64 string")
    url = _get(body, "image_url", (str, type(None)), None, "a URL string")
    emb = _get(body, "embedding_input", (list, type(None)), None, "a list of numbers")
    if text:
        req.text = text
    elif image:
        try:
            req.image = base64.b64decode(image.split(",", 1)[-1] if image.startswith("data:") else image,
                                         validate=True)  # fmt: skip
        except (binascii.Error, ValueError):
            raise BadRequest("image is not valid base64") from None
    elif url:
        req.image_url = url
    elif emb is not None:
        dim = req.folder.infos["dim"]
        if len(emb) != dim or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in emb):
            raise BadRequest(f"embedding_input must be a list of {dim} numbers (this index's dimension)")
        req.embedding = np.asarray(emb, dtype=np.float32).reshape(1, -1)
        if not np.isfinite(req.embedding).all() or not np.abs(req.embedding).sum() > 0:
            raise BadRequest("embedding_input must be finite and not all zeros")
    else:
        raise BadRequest("give one of text, image (base64), image_url or embedding_input")


def parse_knn(body: Any, indices: Mapping[str, IndexFolder], config: ServeConfig) -> KnnRequest:
    """Validate a ``/knn-service`` body (clip back's fields); :class:`BadRequest` names the culprit."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    folder = _folder(indices, body)
    modality = _get(body, "modality", (str,), None, '"image" or "text"')
    if modality not in ("image", "text"):
        raise BadRequest('missing or invalid field modality: use "image" or "text"' if modality is None
                         else f'modality must be "image" or "text", got {modality!r}')  # fmt: skip
    num_images = _count(body, "num_images", None, config.max_num_images)
    num_ids = _count(body, "num_result_ids", num_images, config.max_result_ids)
    flags = {n: _get(body, n, (bool,), False, "true or false")
             for n in ("deduplicate", "use_safety_model", "use_violence_detector", "use_mclip")}  # fmt: skip
    score, weight = _aesthetic(body)
    req = KnnRequest(folder, modality, num_images, max(num_ids, 1), aesthetic_score=score,
                     aesthetic_weight=weight, **flags)  # fmt: skip
    _query_fields(req, body)
    return req


# ---------------------------------------------------------------------------- the service
class KnnService:
    """The state behind the routes: index folders, a thread pool, the image_url fetcher."""

    def __init__(self, indices: Mapping[str, IndexFolder], config: ServeConfig) -> None:
        if not indices:
            raise KnnIndexError("serve needs at least one index folder")
        self.indices, self.config = dict(indices), config
        self.pool = ThreadPoolExecutor(max(1, config.threads), thread_name_prefix="laion-hf-serve")
        self.model_lock = threading.Lock()
        self.fetcher: Any = None

    async def start(self, app: web.Application) -> None:
        """Open the guarded fetcher in the server's loop."""
        from laion_hf.images.fetch import FetchConfig, HttpFetcher

        cfg = FetchConfig(allow_private_networks=self.config.allow_private_image_urls, retries=0,
                          timeout=self.config.image_url_timeout, max_body_bytes=self.config.max_image_bytes,
                          concurrency=16)  # fmt: skip
        self.fetcher = await HttpFetcher(cfg).__aenter__()
        for folder in self.indices.values():  # load the CLIP models now, not on the first query
            if folder.model:
                asyncio.get_running_loop().run_in_executor(self.pool, self._warm, folder)

    def _warm(self, folder: IndexFolder) -> None:
        try:
            with self.model_lock:
                folder.embedder()
        except (
            LaionHFError,
            ImportError,
            OSError,
            RuntimeError,
        ) as e:  # a 400 for the queries needing it
            LOG.warning("%s: text and image queries unavailable: %s", folder.out, e)

    async def stop(self, app: web.Application) -> None:
        """Close the fetcher and the threads."""
        if self.fetcher is not None:
            await self.fetcher.__aexit__(None, None, None)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _embed(self, fn: Any, arg: Any) -> np.ndarray:
        with self.model_lock:
            return fn(arg)

    async def query_vector(self, req: KnnRequest) -> np.ndarray:
        """The request's query embedding (text, image, image_url or given), L2-normalized."""
        q = await self._query_vector(req)
        if q.shape[1] != req.folder.infos["dim"]:
            raise BadRequest(f"the model {req.folder.model} embeds into {q.shape[1]} dimensions, the index holds "
                             f"{req.folder.infos['dim']}: the index names the wrong CLIP model")  # fmt: skip
        return q

    async def _query_vector(self, req: KnnRequest) -> np.ndarray:
        folder = req.folder
        try:
            if req.use_mclip:
                req.unavailable["use_mclip"] = "no multilingual text model; the index's own CLIP model was used"
            if req.text is not None:
                return await self._run(self._embed, folder.embed_text, req.text)
            if req.image_url is not None:
                result = await self.fetcher.fetch(req.image_url)
                if result.status != "success":
                    raise BadRequest(f"image_url not fetched ({result.status}): {result.error}")
                req.image = result.body
            if req.image is not None:
                return await self._run(self._embed, folder.embed_image, req.image)
        except KnnIndexError as e:
            raise BadRequest(str(e)) from None
        return req.embedding / np.linalg.norm(req.embedding)

    def apply_aesthetic(self, req: KnnRequest, q: np.ndarray) -> np.ndarray:
        """clip back's aesthetic weighting, where the folder has rating embeddings."""
        if req.aesthetic_score is None:
            return q
        ratings = req.folder.aesthetic
        if ratings is None:
            req.unavailable["aesthetic_score"] = (
                f"no aesthetic rating embeddings for {req.folder.model or 'this model'}"
            )
            return q
        q = q + ratings[req.aesthetic_score] * req.aesthetic_weight
        return q / np.linalg.norm(q)

    def search(self, req: KnnRequest, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search, then drop duplicates and unsafe results as asked (in a worker thread)."""
        index = req.folder.index(req.modality)
        if index.kind != ("image" if req.modality == "image" else "text"):
            req.unavailable["modality"] = f"no {req.modality} index here; the {index.kind} index was searched"
        sims, ids = index.search(q, req.num_result_ids)[0]
        drop = np.zeros(len(ids), dtype=bool)
        if req.deduplicate and len(ids) > 1:
            drop |= duplicates(index.reconstruct(ids))
        if req.use_safety_model:
            if req.folder.safety is None:
                req.unavailable["use_safety_model"] = "the metadata has no punsafe column"
            else:
                drop |= req.folder.safety[ids] > SAFETY_THRESHOLD
        if req.use_violence_detector:
            req.unavailable["use_violence_detector"] = "no violence detector is available"
        return sims[~drop], ids[~drop]

    def results(self, req: KnnRequest, sims: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
        """clip back's response items: metadata (+ base64 image) for the first num_images."""
        head = ids[: req.num_images]
        metas = req.folder.rows_of(head)
        images = req.folder.images.take(head.tolist()).to_pylist() if req.folder.images is not None else None
        out = []
        for n, (s, i) in enumerate(zip(sims.tolist(), ids.tolist())):
            item = dict(metas[n]) if n < len(metas) else {}
            if images is not None and n < len(images) and images[n] is not None:
                item["image"] = base64.b64encode(images[n]).decode("ascii")
            item["id"], item["similarity"] = int(i), float(s)
            out.append(item)
        return out

    async def knn(self, body: Any) -> tuple[list, dict]:
        """Answer a ``/knn-service`` body: ``(items, unavailable filters)``."""
        req = parse_knn(body, self.indices, self.config)
        q = self.apply_aesthetic(req, await self.query_vector(req))
        sims, ids = await self._run(self.search, req, q)
        items = await self._run(self.results, req, sims, ids)
        return items, req.unavailable


# ---------------------------------------------------------------------------- routes
SERVICE = web.AppKey("laion_hf_knn_service", KnnService)


async def _body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVICE].config.max_body_bytes
        raise BadRequest(f"the request body is larger than {limit:,} bytes") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None


def _json(data: Any, headers: dict | None = None) -> web.Response:
    text = json.dumps(data, default=jsonable)
    return web.Response(text=text, content_type="application/json", headers=headers)


async def knn_service(request: web.Request) -> web.Response:
    """``POST /knn-service``."""
    service = request.app[SERVICE]
    items, unavailable = await service.knn(await _body(request))
    headers = {}
    if unavailable:
        headers[UNAVAILABLE_HEADER] = "; ".join(f"{k}: {v}" for k, v in unavailable.items())
        LOG.warning("filters asked for but unavailable: %s", headers[UNAVAILABLE_HEADER])
    return _json(items, headers)


async def metadata_service(request: web.Request) -> web.Response:
    """``POST /metadata``: ``{ids, indice_name}`` -> ``[{id, metadata}]``."""
    service = request.app[SERVICE]
    body = await _body(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    folder = _folder(service.indices, body)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRequest("missing or invalid field ids: a list of integers")
    bad = [i for i in ids if not 0 <= i < folder.rows]
    if bad:
        raise BadRequest(f"id {bad[0]} is out of range: this index has ids 0..{folder.rows - 1}")
    if len(ids) > service.config.max_result_ids:
        raise BadRequest(f"at most {service.config.max_result_ids} ids per request")
    metas = folder.rows_of(ids)
    return _json([{"id": i, "metadata": m} for i, m in zip(ids, metas)])


async def indices_list(request: web.Request) -> web.Response:
    """``GET /indices-list``."""
    return _json(list(request.app[SERVICE].indices))


async def config_json(request: web.Request) -> web.Response:
    """``GET /config.json``: what clip-retrieval's front end reads at start."""
    service = request.app[SERVICE]
    return _json({"defaultBackend": str(request.url.origin()), "defaultIndex": next(iter(service.indices)),
                  "urlColumn": service.config.url_column})  # fmt: skip


async def health(request: web.Request) -> web.Response:
    """``GET /health``."""
    return web.Response(text="ok")


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight of the POST routes (clip back allows any origin)."""
    return web.Response(status=204, headers={"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                                             "Access-Control-Allow-Headers": "Content-Type"})  # fmt: skip


@web.middleware
async def errors_and_cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bad requests as 400 JSON errors; CORS headers on clip back's API routes."""
    try:
        response = await handler(request)
    except BadRequest as e:
        response = web.json_response({"error": str(e)}, status=400)
    except web.HTTPException as e:
        if e.status == 413:
            limit = request.app[SERVICE].config.max_body_bytes
            response = web.json_response({"error": f"the request body is larger than {limit:,} bytes"}, status=400)
        else:
            raise
    if request.path in CORS_PATHS:  # clip back's API, for clip front on another origin; the page's
        # own routes (export, images, overview) stay same-origin, so no web site can read them
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        response.headers.setdefault("Access-Control-Expose-Headers", UNAVAILABLE_HEADER)
    return response


#: The routes of clip back's API, which any origin may call (as clip back allows).
CORS_PATHS = frozenset({"/knn-service", "/metadata", "/indices-list", "/config.json", "/health"})


def _name(path: str) -> tuple[str, str]:
    if "=" in path and not os.path.exists(path):
        name, path = path.split("=", 1)
        return name, path
    return Path(path).resolve().name, path


def load_indices(paths: Sequence[str | os.PathLike] | Mapping[str, Any], **kwargs: Any) -> dict[str, IndexFolder]:
    """Index folders by name: ``NAME=DIR`` or ``DIR`` (named after the folder), or a mapping
    name -> folder path or :class:`IndexFolder`. ``kwargs`` go to :class:`IndexFolder`."""
    items = list(paths.items()) if isinstance(paths, Mapping) else [_name(os.fspath(p)) for p in paths]
    out: dict[str, IndexFolder] = {}
    for name, value in items:
        if name in out:
            raise KnnIndexError(f"two indexes are named {name!r}: name them NAME=DIR")
        out[name] = value if isinstance(value, IndexFolder) else IndexFolder(value, **kwargs)
    return out


def make_app(
    indices: Sequence[str | os.PathLike] | Mapping[str, Any],
    config: ServeConfig | None = None,
    **folder_kwargs: Any,
) -> web.Application:
    """The aiohttp app serving clip back's API over ``indices`` (see :func:`load_indices`).

    Other routes (a web page at ``/``) can be added to the returned app before it runs;
    ``app[SERVICE]`` is the :class:`KnnService` behind the API.
    """
    config = config or ServeConfig()
    service = KnnService(load_indices(indices, **folder_kwargs), config)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[errors_and_cors])
    app[SERVICE] = service
    app.on_startup.append(service.start)
    app.on_cleanup.append(service.stop)
    app.router.add_post("/knn-service", knn_service)
    app.router.add_post("/metadata", metadata_service)
    for path in ("/knn-service", "/metadata"):
        app.router.add_route("OPTIONS", path, preflight)
    app.router.add_get("/indices-list", indices_list)
    app.router.add_get("/config.json", config_json)
    app.router.add_get("/health", health)
    return app


async def start_server(app: web.Application, host: str = "127.0.0.1", port: int = 1234) -> tuple[web.AppRunner, str]:
    """Start ``app`` on ``host:port`` (0 = any free port); returns the runner and the base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sock = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    shown = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
    return runner, f"http://{shown}:{sock[1]}"

"""A minimal clip back (the documented routes of ECOSYSTEM.md) over exact numpy search, used by
the page tests only while ``laion_hf.serve.make_app`` is not there. Real search, real model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pyarrow.dataset as ds
from aiohttp import web


def make_minimal_app(subset_dir, embedder, name: str = "subset") -> web.Application:
    files = sorted(str(p) for p in (subset_dir / "data").rglob("*.parquet"))
    dataset = ds.dataset(files, format="parquet")
    table = dataset.to_table()
    vectors = {m: np.array(table.column(f"{m}_embedding").to_pylist(), np.float32) for m in ("image", "text")}
    meta_cols = [c for c in table.column_names if c not in ("image", "image_embedding", "text_embedding")]
    meta = table.select(meta_cols).to_pylist()

    async def knn(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        from PIL import Image

        if body.get("text"):
            q = embedder.encode_text([body["text"]])[0]
        elif body.get("image"):
            q = embedder.encode_pil([Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB")])[0]
        else:
            raise web.HTTPBadRequest(text="give text or image")
        sims = vectors[body.get("modality", "image")] @ q
        order = np.argsort(-sims)[: int(body.get("num_result_ids", 40))]
        num_images = int(body.get("num_images", 40))
        out = []
        for rank, i in enumerate(order.tolist()):
            item = {"id": i, "similarity": float(sims[i])}
            if rank < num_images:
                item.update(meta[i])
            out.append(item)
        return web.json_response(out)

    async def metadata(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return web.json_response([{"id": i, "metadata": meta[i]} for i in body["ids"]])

    def constant(value):
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(value)

        return handler

    app = web.Application()
    app.router.add_post("/knn-service", knn)
    app.router.add_post("/metadata", metadata)
    app.router.add_get("/indices-list", constant([name]))
    app.router.add_get("/config.json", constant({"defaultIndex": name, "urlColumn": "url"}))
    app.router.add_get("/health", constant({"status": "ok"}))
    return app

"""The demo's publishing step: start the local Hub-compatible server (loopback), publish a
stream there, reload it with plain ``datasets.load_dataset`` and show a few rows."""

from __future__ import annotations

import os
from typing import Any

from laion_hf.hub.client import configure_client
from laion_hf.hub.publishing import publish, reload
from laion_hf.testing.hub_server import DEFAULT_TEST_TOKEN, HubServer


def publish_local(
    data: Any,
    out_dir: str | os.PathLike,
    repo_id: str = "laion-hf/demo-subset",
    *,
    provenance: dict[str, Any] | None = None,
    show: int = 3,
    format: str = "parquet",
    hub_root: str | os.PathLike | None = None,
    **shard_kwargs: Any,
) -> dict[str, Any]:
    """Demo helper: start the local Hub-compatible server (loopback), :func:`publish` ``data`` to
    ``repo_id`` there, reload it with plain ``datasets.load_dataset(repo_id, streaming=True)``,
    print ``show`` rows, stop the server. Returns a summary (rows written, files, commits, rows
    reloaded, the printed sample). Nothing leaves 127.0.0.1."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return _publish_local(data, out_dir, repo_id, provenance, show, format, hub_root, shard_kwargs)
    finally:
        if not bars_were_off:
            enable_progress_bars()


def _publish_local(data, out_dir, repo_id, provenance, show, format, hub_root, shard_kwargs) -> dict[str, Any]:
    with HubServer(hub_root) as hub:
        configure_client(hub.url)
        out = publish(
            data,
            out_dir,
            repo_id,
            format=format,
            provenance=provenance,
            token=DEFAULT_TEST_TOKEN,
            endpoint=hub.url,
            progress=False,
            **shard_kwargs,
        )
        res, stats = out["push"], out["stats"]
        print(
            f"   wrote {stats['num_shards']} {format} shard(s), {stats['rows_written']:,} of {stats['rows']:,} rows "
            f"({stats['bytes']:,} bytes) + README.md card + stats.json -> {out_dir}"
        )
        print(f"   pushed {len(res['to_upload'])} file(s) in {len(res['commits'])} commit(s) to {res['url']}")
        ds = reload(repo_id, token=DEFAULT_TEST_TOKEN)
        print(
            f"   datasets.load_dataset({repo_id!r}, streaming=True) -> {type(ds).__name__}, "
            f"{ds.num_shards} shard(s), columns {list(ds.features or {})}"
        )
        sample, n = [], 0
        for row in ds:
            if n < show:
                img = row.get("image", row.get("jpg"))
                emb = row.get("image_embedding", row.get("npy"))
                item = {
                    "key": row.get("key", row.get("__key__")),
                    "caption": str(row.get("caption", row.get("txt")))[:60],
                    "status": row.get("status", "success"),
                    "image": None if img is None else f"{img.size[0]}x{img.size[1]} {img.mode}",
                    "embedding": None if emb is None else f"{len(emb)}-d",
                }
                sample.append(item)
                print(f"   {item}")
            n += 1
        print(f"   reloaded {n:,} rows (written: {stats['rows_written']:,})")
    return {
        "repo_id": repo_id,
        "rows": stats["rows"],
        "rows_written": stats["rows_written"],
        "num_shards": stats["num_shards"],
        "files": res["to_upload"],
        "commits": len(res["commits"]),
        "reloaded_rows": n,
        "sample": sample,
    }

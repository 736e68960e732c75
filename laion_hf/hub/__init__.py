"""Publish shard folders to the Hugging Face Hub: dataset cards, ``push``, ``publish``, ``reload``.

- :func:`render_card` renders ``DIR/README.md`` (+ ``assets/score_histograms.png``) from
  ``DIR/stats.json`` with the Jinja2 template ``dataset_cards/laion_subset.md.j2``.
- :func:`push` uploads ``DIR`` to a dataset repo, resumably (``laion-hf push DIR REPO_ID``).
- :func:`publish` = ``write_shards`` + ``render_card`` + ``push`` from one stream.
- :func:`publish_local` (for the demo): start the local Hub server, publish, reload, print rows.
- :func:`reload` = plain ``datasets.load_dataset(repo_id, streaming=True)`` (optionally against a
  given endpoint, e.g. the local test server).
"""

from __future__ import annotations

import os
from typing import Any

import importlib

_LAZY = {"render_card": "laion_hf.hub.card", "push": "laion_hf.hub.upload", "PushResult": "laion_hf.hub.upload",
         "redact": "laion_hf.hub.upload", "resolve_token": "laion_hf.hub.upload",
         "validate_repo_id": "laion_hf.hub.upload"}

__all__ = ["render_card", "push", "publish", "publish_local", "reload", "PushResult", "redact", "resolve_token", "validate_repo_id"]


def __getattr__(name: str) -> Any:  # imported lazily so `laion-hf --help` stays fast
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'laion_hf.hub' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def publish(
    data: Any,
    out_dir: str | os.PathLike,
    repo_id: str,
    *,
    format: str = "parquet",
    config: str = "default",
    provenance: dict[str, Any] | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    overwrite: bool = False,
    **shard_kwargs: Any,
) -> dict[str, Any]:
    """Write ``data`` as shards of ``config`` in ``out_dir``, render the card and push it to
    ``repo_id``. Returns ``{"stats": <config stats>, "push": PushResult.as_dict()}``."""
    from laion_hf.shards import write_shards

    from laion_hf.hub.card import render_card
    from laion_hf.hub.upload import push

    stats = write_shards(data, out_dir, format=format, config=config, provenance=provenance,
                         overwrite=overwrite, **shard_kwargs)
    render_card(out_dir, repo_id)
    result = push(out_dir, repo_id, private=private, token=token, endpoint=endpoint)
    return {"stats": stats, "push": result.as_dict()}


def reload(
    repo_id: str,
    config: str | None = None,
    *,
    split: str = "train",
    streaming: bool = True,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
):
    """``datasets.load_dataset(repo_id, config, split=split, streaming=streaming)``, nothing more:
    the published repo needs no code of ours. ``endpoint`` points huggingface_hub/datasets at
    another Hub (e.g. :class:`laion_hf.testing.hub_server.HubServer`) first."""
    if endpoint is not None:
        from laion_hf.testing.hub_server import configure_client

        configure_client(endpoint)
    import datasets

    return datasets.load_dataset(repo_id, config, split=split, streaming=streaming, token=token, revision=revision)


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
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from laion_hf.testing.hub_server import DEFAULT_TEST_TOKEN, HubServer, configure_client

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return _publish_local(data, out_dir, repo_id, provenance, show, format, hub_root, shard_kwargs,
                              HubServer, configure_client, DEFAULT_TEST_TOKEN)
    finally:
        if not bars_were_off:
            enable_progress_bars()


def _publish_local(data, out_dir, repo_id, provenance, show, format, hub_root, shard_kwargs,
                   HubServer, configure_client, DEFAULT_TEST_TOKEN) -> dict[str, Any]:  # noqa: N803
    with HubServer(hub_root) as hub:
        configure_client(hub.url)
        out = publish(data, out_dir, repo_id, format=format, provenance=provenance, token=DEFAULT_TEST_TOKEN,
                      endpoint=hub.url, progress=False, **shard_kwargs)
        res, stats = out["push"], out["stats"]
        print(f"   wrote {stats['num_shards']} {format} shard(s), {stats['rows_written']:,} of {stats['rows']:,} rows "
              f"({stats['bytes']:,} bytes) + README.md card + stats.json -> {out_dir}")
        print(f"   pushed {len(res['to_upload'])} file(s) in {len(res['commits'])} commit(s) to {res['url']}")
        ds = reload(repo_id, token=DEFAULT_TEST_TOKEN)
        print(f"   datasets.load_dataset({repo_id!r}, streaming=True) -> {type(ds).__name__}, "
              f"{ds.num_shards} shard(s), columns {list(ds.features or {})}")
        sample, n = [], 0
        for row in ds:
            if n < show:
                img = row.get("image", row.get("jpg"))
                emb = row.get("image_embedding", row.get("npy"))
                item = {"key": row.get("key", row.get("__key__")),
                        "caption": str(row.get("caption", row.get("txt")))[:60],
                        "status": row.get("status", "success"),
                        "image": None if img is None else f"{img.size[0]}x{img.size[1]} {img.mode}",
                        "embedding": None if emb is None else f"{len(emb)}-d"}
                sample.append(item)
                print(f"   {item}")
            n += 1
        print(f"   reloaded {n:,} rows (written: {stats['rows_written']:,})")
    return {"repo_id": repo_id, "rows": stats["rows"], "rows_written": stats["rows_written"],
            "num_shards": stats["num_shards"], "files": res["to_upload"], "commits": len(res["commits"]),
            "reloaded_rows": n, "sample": sample}

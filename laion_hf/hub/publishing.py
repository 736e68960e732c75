"""``publish`` (shards + card + push from one stream) and ``reload`` (plain ``load_dataset``)."""

from __future__ import annotations

import os
from typing import Any


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
    from laion_hf.hub.card import render_card
    from laion_hf.hub.upload import push
    from laion_hf.shards import write_shards

    stats = write_shards(
        data, out_dir, format=format, config=config, provenance=provenance, overwrite=overwrite, **shard_kwargs
    )
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
    another Hub (e.g. the local test server of ``laion_hf.testing``) first."""
    if endpoint is not None:
        from laion_hf.hub.client import configure_client

        configure_client(endpoint)
    import datasets

    return datasets.load_dataset(repo_id, config, split=split, streaming=streaming, token=token, revision=revision)

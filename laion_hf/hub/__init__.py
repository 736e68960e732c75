"""Publish shard folders to the Hugging Face Hub: dataset cards, ``push``, ``publish``, ``reload``.

- :func:`render_card` renders ``DIR/README.md`` (+ ``assets/score_histograms.png``) from
  ``DIR/stats.json`` with the Jinja2 template ``dataset_cards/laion_subset.md.j2``.
- :func:`push` uploads ``DIR`` to a dataset repo, resumably (``laion-hf push DIR REPO_ID``).
- :func:`publish` = ``write_shards`` + ``render_card`` + ``push`` from one stream.
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

__all__ = ["render_card", "push", "publish", "reload", "PushResult", "redact", "resolve_token", "validate_repo_id"]


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

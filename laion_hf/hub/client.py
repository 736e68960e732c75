"""Point ``huggingface_hub`` and ``datasets`` at a Hub-compatible endpoint."""

from __future__ import annotations

import os
from urllib.parse import urlsplit


def configure_client(endpoint: str, *, disable_xet: bool = True) -> None:
    """Point ``huggingface_hub`` and ``datasets`` at ``endpoint``.

    Sets ``HF_ENDPOINT``/``HF_HUB_DISABLE_XET`` for processes started later and, because both
    libraries read them at import time, also updates the module constants of an already imported
    ``huggingface_hub``/``datasets`` in this process.
    """
    import sys

    endpoint = endpoint.rstrip("/")
    os.environ["HF_ENDPOINT"] = endpoint
    if disable_xet:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
    hh = sys.modules.get("huggingface_hub.constants")
    if hh is not None:
        hh.ENDPOINT = endpoint
        hh.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        if disable_xet:
            hh.HF_HUB_DISABLE_XET = True
        host = urlsplit(endpoint).hostname
        hosts = getattr(hh, "HF_URL_HOSTS", None)
        if isinstance(hosts, frozenset) and host and host not in hosts:
            hh.HF_URL_HOSTS = hosts | {host}
    dc = sys.modules.get("datasets.config")
    if dc is not None:
        dc.HF_ENDPOINT = endpoint
        dc.HUB_DATASETS_URL = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        dc.USE_PARQUET_EXPORT = False

"""The files of an index folder and the index families we build (shared by build and search)."""

from __future__ import annotations

from pathlib import Path

from laion_hf.errors import KnnIndexError

INFOS = "infos.json"
IMAGES_FILE = "images.arrow"


def index_family(key: str) -> str:
    """``flat``, ``hnsw`` or ``ivf`` for a faiss factory string we can build."""
    if key == "Flat":
        return "flat"
    if key.startswith("HNSW") and "," not in key:
        return "hnsw"
    if "IVF" in key:
        return "ivf"
    raise KnnIndexError(f"index key {key!r} is not supported: use Flat, HNSW<M>, or an IVF factory string")


def index_file(out: Path, kind: str) -> Path:
    """The index file of ``kind`` under ``out``."""
    return Path(out) / f"{kind}.index"

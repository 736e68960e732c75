"""Atomic writes: every file laion-hf writes goes through a temporary file beside it and a
rename (``os.replace``), so a reader sees the old file, the new one or none, never a torn one,
and a failed write leaves no temporary file behind."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> None:
    """Write ``value`` as JSON (``json.dumps(value, **dumps)``) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, **dumps))

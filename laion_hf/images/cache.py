"""An on-disk cache of processed images, safe with several processes.

One file per entry, ``ROOT/ab/<sha256 of url + settings>``: a small JSON header (status,
sizes, hash, expiry) then the encoded image bytes. Entries are written to a temporary
file in the same folder and renamed into place (``os.replace`` is atomic), so a reader in
another process sees the old entry, the new one or none, never a torn one. A size cap is
kept by evicting the least recently used entries (hits refresh the file's mtime); several
processes may evict at once (a vanished file is simply skipped). Permanent failures
(404, 410, robots opt-out by default) are cached *negatively* with a time to live, so a
second run does not ask the host again; transient failures (timeouts, 5xx) are not cached.
Only files in that layout that start with the cache's magic bytes are ever counted or evicted,
so a cache folder shared with other files (``~/.cache``, say) never loses them; the root holds
a ``CACHEDIR.TAG`` marker (backup tools skip it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.resize import ImageResult

_MAGIC = b"LHC1"
_HEX2 = re.compile(r"[0-9a-f]{2}")
_KEY = re.compile(r"[0-9a-f]{64}")
MARKER = "CACHEDIR.TAG"
_MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This folder holds a laion-hf image cache (entries ab/<sha256>); laion-hf evicts only those.\n"
)


class ImageCache:
    """Atomic, size-capped, multi-process on-disk cache of :class:`ImageResult` by key.

    Args:
        root: the cache folder (created if missing).
        max_bytes: size cap; the oldest entries are evicted down to 90 % of it.
        negative_ttl: seconds a cached permanent failure is trusted.
        negative_statuses: which failure statuses are cached.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        max_bytes: int = 20 * 2**30,
        negative_ttl: float = 7 * 24 * 3600,
        negative_statuses: Iterable[str] = st.DEFAULT_NEGATIVE_STATUSES,
    ) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FetchError(f"cannot create the image cache folder {str(self.root)!r}: {e}") from e
        marker = self.root / MARKER
        if not marker.exists():
            try:
                marker.write_text(_MARKER_TEXT)
            except OSError:
                pass  # a read-only cache still serves hits
        if max_bytes <= 0:
            raise FetchError(f"cache max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.negative_ttl = float(negative_ttl)
        self.negative_statuses = frozenset(negative_statuses)
        self._lock = threading.Lock()
        self._written_since_check = 0
        self._check_every = max(1, self.max_bytes // 20)

    # ------------------------------------------------------------------ keys
    @staticmethod
    def key(url: str, settings: str) -> str:
        """The cache key of ``url`` fetched and processed with ``settings`` (a fingerprint)."""
        return hashlib.sha256(url.encode("utf-8", "surrogatepass") + b"\x00" + settings.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    # ------------------------------------------------------------------ read/write
    def get(self, key: str) -> Optional[ImageResult]:
        """The cached result for ``key``, or None (missing, expired or unreadable)."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            return None
        res = self._decode(raw)
        if res is None:
            _unlink(path)  # torn by a crashed writer of an old version, or expired
            return None
        try:
            os.utime(path)  # LRU: a hit makes the entry young again
        except OSError:
            pass
        return res

    def _decode(self, raw: bytes) -> Optional[ImageResult]:
        if len(raw) < 8 or raw[:4] != _MAGIC:
            return None
        (hlen,) = struct.unpack(">I", raw[4:8])
        try:
            head = json.loads(raw[8 : 8 + hlen])
        except ValueError:
            return None
        data = raw[8 + hlen :]
        if len(data) != head.get("n", -1):
            return None
        exp = head.get("exp")
        if exp is not None and exp < time.time():
            return None
        r = ImageResult(
            head["s"],
            head.get("e"),
            data if head["s"] == st.SUCCESS else None,
            head.get("w"),
            head.get("h"),
            head.get("ow"),
            head.get("oh"),
            head.get("sha"),
        )
        if exp is not None and r.error:
            r.error = r.error + " (cached)"
        return r

    def cacheable(self, result: ImageResult) -> bool:
        """Whether ``result`` is stored: successes and the configured permanent failures."""
        return result.status == st.SUCCESS or result.status in self.negative_statuses

    def put(self, key: str, result: ImageResult) -> bool:
        """Store ``result`` atomically; returns False when it is not cacheable."""
        if not self.cacheable(result):
            return False
        data = (result.data or b"") if result.status == st.SUCCESS else b""
        head = {
            "s": result.status,
            "e": result.error,
            "w": result.width,
            "h": result.height,
            "ow": result.original_width,
            "oh": result.original_height,
            "sha": result.sha256,
            "n": len(data),
        }
        if result.status != st.SUCCESS:
            head["exp"] = time.time() + self.negative_ttl
        hb = json.dumps(head, separators=(",", ":")).encode()
        path = self._path(key)
        try:
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC + struct.pack(">I", len(hb)) + hb + data)
                os.replace(tmp, path)
            except BaseException:
                _unlink(Path(tmp))
                raise
        except OSError:
            return False  # a full or read-only disk must not fail the fetch
        size = 8 + len(hb) + len(data)
        with self._lock:
            self._written_since_check += size
            check = self._written_since_check >= self._check_every
            if check:
                self._written_since_check = 0
        if check:
            self.evict()
        return True

    # ------------------------------------------------------------------ size cap
    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry: only files in the cache's own layout
        (``ab/<64 hex digits starting with ab>``); anything else in the folder is never
        counted nor evicted."""
        out = []
        for sub in os.scandir(self.root):
            if not (sub.is_dir(follow_symlinks=False) and _HEX2.fullmatch(sub.name)):
                continue
            for e in os.scandir(sub.path):
                if not (_KEY.fullmatch(e.name) and e.name.startswith(sub.name) and e.is_file(follow_symlinks=False)):
                    continue
                try:
                    s = e.stat()
                except OSError:
                    continue
                out.append((s.st_mtime, s.st_size, Path(e.path)))
        return out

    def size(self) -> int:
        """Total bytes of the entries now on disk."""
        return sum(s for _, s, _ in self.entries())

    def evict(self) -> int:
        """Delete the least recently used entries until the cache is under 90 % of its cap.

        Returns the number of bytes freed.
        """
        entries = self.entries()
        total = sum(s for _, s, _ in entries)
        if total <= self.max_bytes:
            return 0
        goal = int(self.max_bytes * 0.9)
        freed = 0
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total - freed <= goal:
                break
            if _is_entry(path) and _unlink(path):
                freed += size
        return freed


def _is_entry(path: Path) -> bool:
    """Whether ``path`` starts with the cache's magic bytes (checked before deleting it)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False

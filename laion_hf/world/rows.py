"""World rows as an Arrow table: key, URL, caption, size and the ground truth."""

from __future__ import annotations

import re

import pyarrow as pa

from laion_hf.errors import LaionHFError
from laion_hf.world.attributes import attributes, key_seed, world_key
from laion_hf.world.captions import caption_for

#: URL path prefix under which world images are served (``/world/<key>.jpg``).
URL_PREFIX = "/world/"
_HOSTS = [f"img{i}.shapes.example" for i in range(8)] + [f"cdn{i}.posters.example" for i in range(8)]
_KEY_RE = re.compile(r"^[A-Za-z0-9_~.-]{1,128}$")
_TRUTH = ("shape", "colour", "count", "size", "position", "background", "word")

#: Column types of :func:`world_rows`.
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("matched", pa.bool_()),
        ("noise_kind", pa.string()),
        ("caption_style", pa.string()),
        ("shape", pa.string()),
        ("colour", pa.string()),
        ("count", pa.int8()),
        ("size", pa.string()),
        ("position", pa.string()),
        ("background", pa.string()),
        ("word", pa.string()),
    ]
)


def world_url(key: str) -> str:
    """The public-looking URL of image ``key`` (a reserved ``*.example`` host)."""
    return f"https://{_HOSTS[key_seed(key, 'host') % len(_HOSTS)]}{URL_PREFIX}{key}.jpg"


def key_from_path(path: str) -> str | None:
    """The key in a ``/world/<key>.jpg`` URL path, or None when ``path`` is not one."""
    if not path.startswith(URL_PREFIX) or not path.endswith(".jpg"):
        return None
    key = path[len(URL_PREFIX) : -len(".jpg")]
    return key if _KEY_RE.match(key) else None


def world_rows(n: int, seed: int = 0, noise: float = 0.3, *, start: int = 0) -> pa.Table:
    """Rows ``start .. start+n`` of the world drawn with ``seed``, a fraction ``noise`` of them noisy.

    Columns: ``key``, ``url``, ``caption``, ``width``, ``height`` and the ground truth kept as
    passthrough columns: ``matched``, ``noise_kind``, ``caption_style`` and the image's
    attributes (``shape``, ``colour``, ``count``, ``size``, ``position``, ``background``, ``word``).
    Different seeds give disjoint keys (``w{seed}-{index}``).
    """
    if n < 0 or start < 0:
        raise LaionHFError(f"world_rows needs n >= 0 and start >= 0 (got n={n}, start={start})")
    if not 0.0 <= noise <= 1.0:
        raise LaionHFError(f"world noise must be a fraction in [0, 1], got {noise}")
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for i in range(start, start + n):
        key = world_key(seed, i)
        a = attributes(key)
        cap = caption_for(key, noise)
        row = {"key": key, "url": world_url(key), "width": a.width, "height": a.height, **cap}
        row.update({f: getattr(a, f) for f in _TRUTH})
        for name in SCHEMA.names:
            cols[name].append(row[name])
    return pa.table(cols, schema=SCHEMA)

"""One canonical schema for every LAION release.

Each release names its columns differently (``URL``/``TEXT`` upper-case in LAION-400M and
laion2B, lower-case ``url``/``caption`` in Re-LAION-5B copies, ``uid``/``text``/
``clip_b32_similarity_score`` in DataComp pools) and stores sizes as int32 in some copies
and float64 in others. :func:`normalize_table` maps all of them onto
:data:`CANONICAL_FEATURES`; columns it does not know pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from laion_hf.errors import SchemaError

#: The canonical columns, their order and Arrow types.
CANONICAL_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("similarity", pa.float64()),
        ("punsafe", pa.float64()),
        ("pwatermark", pa.float64()),
        ("aesthetic", pa.float64()),
        ("language", pa.string()),
        ("license", pa.string()),
        ("nsfw", pa.string()),
        ("hash", pa.int64()),
    ]
)
CANONICAL_COLUMNS = tuple(CANONICAL_SCHEMA.names)


#: Source column names recognised for each canonical column, in order of preference.
ALIASES: dict[str, tuple[str, ...]] = {
    "key": ("key", "SAMPLE_ID", "sample_id", "uid", "id", "__key__"),
    "url": ("url", "URL", "Url", "image_url"),
    "caption": ("caption", "TEXT", "text", "Caption", "top_caption", "txt"),
    "width": ("width", "WIDTH", "original_width"),
    "height": ("height", "HEIGHT", "original_height"),
    "similarity": ("similarity", "clip_b32_similarity_score", "SIMILARITY"),
    "punsafe": ("punsafe", "PUNSAFE"),
    "pwatermark": ("pwatermark", "PWATERMARK"),
    "aesthetic": ("aesthetic", "AESTHETIC_SCORE", "aesthetic_score"),
    "language": ("language", "LANGUAGE", "lang"),
    "license": ("license", "LICENSE"),
    "nsfw": ("nsfw", "NSFW"),
    "hash": ("hash", "HASH"),
}


#: The one image column type: ``datasets``' ``Image()`` storage (encoded bytes + optional path).
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

#: Names of an image column in shards and streams (not part of the metadata schema).
IMAGE_ALIASES: tuple[str, ...] = ("image", "jpg", "jpeg", "png", "webp", "img")


def pick_column(
    names: Sequence[str],
    wanted: str | None,
    what: str,
    *,
    where: str = "input",
    required: bool = True,
    error: type[Exception] = SchemaError,
) -> str | None:
    """The column of ``names`` holding ``what`` (a canonical column or ``"image"``): ``wanted``
    when given (it must exist), else the first of its aliases (:data:`ALIASES`,
    :data:`IMAGE_ALIASES`) present. A missing required column raises ``error`` naming ``where``,
    the names looked for and the columns present; an optional one gives None."""
    if wanted is not None:
        if wanted not in names:
            raise error(f"{where}: no {what} column {wanted!r}; columns are {list(names)}")
        return wanted
    candidates = IMAGE_ALIASES if what == "image" else ALIASES.get(what, ())
    for name in candidates:
        if name in names:
            return name
    if required:
        raise error(
            f"{where}: no {what} column (looked for {', '.join(candidates)}); columns are "
            f"{list(names)}; pass {what}_column= (--{what}-col) to name it"
        )
    return None


@dataclass(frozen=True)
class Release:
    """A LAION release: its name, the columns that identify it, and where it is documented."""

    name: str
    signature: frozenset[str]
    description: str


#: Known releases, most specific first. Detection picks the first whose signature columns
#: are all present.
RELEASES: tuple[Release, ...] = (
    Release(
        "datacomp",
        frozenset({"uid", "text", "clip_b32_similarity_score"}),
        "DataComp pools (uid, url, text, original_width/height, clip_*_similarity_score)",
    ),
    Release(
        "laion-aesthetics",
        frozenset({"URL", "TEXT", "aesthetic"}),
        "LAION-Aesthetics: laion2B-en-joined columns + aesthetic",
    ),
    Release(
        "laion2b-multi-joined",
        frozenset({"URL", "TEXT", "punsafe", "pwatermark", "LANGUAGE"}),
        "laion2B-multi-joined: URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark, LANGUAGE",
    ),
    Release(
        "laion-joined",
        frozenset({"URL", "TEXT", "punsafe", "pwatermark"}),
        "laion2B-en-joined / laion1B-nolang-joined: URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark",
    ),
    Release(
        "laion2b-multi",
        frozenset({"SAMPLE_ID", "URL", "TEXT", "LANGUAGE"}),
        "laion2B-multi original parts (LAION-400M columns + LANGUAGE)",
    ),
    Release(
        "laion-original",
        frozenset({"SAMPLE_ID", "URL", "TEXT", "NSFW"}),
        "LAION-400M / laion2B-en / laion1B-nolang originals: SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity",
    ),
    Release("relaion", frozenset({"url", "caption"}), "Re-LAION-5B and other lower-case copies (url, caption, ...)"),
    Release("url-text", frozenset({"URL", "TEXT"}), "any URL/TEXT table (img2dataset input)"),
)
_RELEASES_BY_NAME = {r.name: r for r in RELEASES}


def detect_release(column_names: list[str] | tuple[str, ...]) -> str:
    """Name the LAION release whose columns match ``column_names`` ("unknown" if none)."""
    present = set(column_names)
    for release in RELEASES:
        if release.signature <= present:
            return release.name
    return "unknown"


def resolve_columns(column_names: list[str] | tuple[str, ...], *, where: str = "input") -> dict[str, str | None]:
    """Map each canonical column to the source column that provides it (or None).

    Raises :class:`SchemaError` when no URL column exists, listing the columns seen.
    """
    present = list(column_names)
    mapping: dict[str, str | None] = {}
    for canonical, aliases in ALIASES.items():
        mapping[canonical] = next((a for a in aliases if a in present), None)
    if mapping["url"] is None:
        raise SchemaError(
            f"{where}: no URL column found (looked for {', '.join(ALIASES['url'])}); "
            f"columns present: {', '.join(present) or '(none)'}"
        )
    return mapping


def passthrough_columns(column_names: list[str] | tuple[str, ...], mapping: dict[str, str | None]) -> list[str]:
    """Source columns that are not mapped to a canonical column (kept as they are)."""
    used = {v for v in mapping.values() if v is not None}
    return [c for c in column_names if c not in used and c not in CANONICAL_COLUMNS]


def _to_string(col: pa.ChunkedArray | pa.Array, name: str, where: str) -> pa.Array:
    """Cast to UTF-8 strings; invalid UTF-8 bytes become U+FFFD instead of failing the batch."""
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
        return pc.cast(col, pa.string())
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:
            return pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = [None if v is None else v.decode("utf-8", errors="replace") for v in col.to_pylist()]
            return pa.array(values, pa.string())
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.string())
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SchemaError(f"{where}: column {name!r} of type {col.type} cannot be read as text: {e}") from None


def _to_number(col: pa.ChunkedArray | pa.Array, target: pa.DataType, name: str, where: str) -> pa.Array:
    """Cast sizes/scores to ``target``: float sizes are rounded, NaN becomes null, strings parse."""
    if col.type == target:
        return col
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), target)
    try:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
        if pa.types.is_integer(target) and pa.types.is_floating(col.type):
            nan = pc.is_nan(col)
            col = pc.if_else(nan, pa.scalar(None, col.type), col)
            col = pc.round(col)
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SchemaError(f"{where}: column {name!r} of type {col.type} cannot be cast to {target}: {e}") from None


def generated_keys(prefix: str, start: int, n: int) -> pa.Array:
    """Keys ``f"{prefix}{start + i:09d}"`` for rows without a key column (vectorized)."""
    import numpy as np

    return keys_for_rows(prefix, pa.array(np.arange(start, start + n, dtype=np.int64)))


def keys_for_rows(prefix: str, rows: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Keys ``f"{prefix}{row:09d}"`` for the given row numbers (vectorized: the fixed-width
    text is written digit by digit into one buffer with numpy)."""
    import numpy as np

    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    head = prefix.encode()
    values = None if rows.null_count else rows.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if values is None or not head.isascii() or (values.size and (values.min() < 0 or values.max() > 999_999_999)):
        numbers = pc.cast(rows, pa.string())  # rare: not 9 digits; same text, slower path
        return pc.binary_join_element_wise(prefix, pc.utf8_lpad(numbers, width=9, padding="0"), "")
    n, width = values.size, len(head) + 9
    text = np.empty((n, width), dtype=np.uint8)
    text[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    rest = values.copy()
    for col in range(width - 1, len(head) - 1, -1):
        rest, digit = np.divmod(rest, 10)
        text[:, col] = digit + 48
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def normalize_table(
    table: pa.Table,
    *,
    mapping: dict[str, str | None] | None = None,
    where: str = "input",
    key_prefix: str | None = None,
    row_offset: int = 0,
) -> pa.Table:
    """Return ``table`` in the canonical schema, followed by its passthrough columns.

    ``mapping`` (from :func:`resolve_columns`) is computed from the table when omitted.
    Rows with no key column get ``f"{key_prefix}{row_offset + i:09d}"`` (deterministic per
    file and position) when ``key_prefix`` is given, else null.
    """
    if mapping is None:
        mapping = resolve_columns(table.column_names, where=where)
    n = table.num_rows
    arrays: list[pa.Array] = []
    for field in CANONICAL_SCHEMA:
        source = mapping.get(field.name)
        if source is None or source not in table.column_names:
            if field.name == "key" and key_prefix is not None:
                arrays.append(generated_keys(key_prefix, row_offset, n))
            else:
                arrays.append(pa.nulls(n, field.type))
            continue
        col = table.column(source)
        if pa.types.is_string(field.type):
            arrays.append(_to_string(col, source, where))
        else:
            arrays.append(_to_number(col, field.type, source, where))
    names = list(CANONICAL_COLUMNS)
    for extra in passthrough_columns(table.column_names, mapping):
        arrays.append(table.column(extra))
        names.append(extra)
    return pa.Table.from_arrays(arrays, names=names)


def output_schema(source_schema: pa.Schema, mapping: dict[str, str | None]) -> pa.Schema:
    """The schema :func:`normalize_table` produces for a source with ``source_schema``."""
    fields = list(CANONICAL_SCHEMA)
    for extra in passthrough_columns(source_schema.names, mapping):
        fields.append(source_schema.field(extra))
    return pa.schema(fields)


def release_info(name: str) -> Release:
    """Look up a release by name (raises :class:`SchemaError` listing the known names)."""
    try:
        return _RELEASES_BY_NAME[name]
    except KeyError:
        raise SchemaError(f"unknown release {name!r}; known: {', '.join(_RELEASES_BY_NAME)}") from None


def __getattr__(name: str):
    """``CANONICAL_FEATURES`` is built on first use: importing ``datasets`` costs ~0.5 s of CPU
    in every download worker, which only needs the Arrow schema."""
    if name == "CANONICAL_FEATURES":
        import datasets

        globals()[name] = features = datasets.Features.from_arrow_schema(CANONICAL_SCHEMA)
        return features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

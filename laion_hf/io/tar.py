"""The one webdataset / img2dataset tar reader of laion-hf.

Members are read with :mod:`tarfile` in streaming mode and grouped into samples by
webdataset's :func:`~webdataset.tariterators.group_by_keys` (``{key}.jpg`` + ``{key}.txt`` +
``{key}.json`` -> one sample). Unlike a plain ``tarfile`` loop, a tar that ends early (inside a
header, inside member data, or without its end-of-archive block) or holds a corrupt header
raises a :class:`~laion_hf.errors.ShardError` naming the file: ``tarfile`` itself reads such
a tar as if it ended at the last whole member, losing the rest without a word.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from laion_hf.errors import ShardError

__all__ = ["iter_members", "iter_samples"]

#: names webdataset skips: ``__key__``-style metadata members
_SKIP_META = re.compile(r"__[^/]*__($|/)")


class _BrokenTar(Exception):
    """Raised from inside ``tarfile`` (which ends the archive quietly on header errors)."""


class _StrictTarInfo(tarfile.TarInfo):
    """A header that is cut short, missing or corrupt after the first member is an error, not
    the end of the archive (only a zero block ends a tar)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EmptyHeaderError as e:
            if tar.offset == 0:
                raise
            raise _BrokenTar(f"ends at byte {tar.offset} without the end-of-archive block (cut short?)") from e
        except tarfile.TruncatedHeaderError as e:
            if tar.offset == 0:
                raise
            raise _BrokenTar(f"ends inside the member header at byte {tar.offset} (cut short)") from e
        except tarfile.InvalidHeaderError as e:
            if tar.offset == 0:
                raise
            raise _BrokenTar(f"corrupt member header at byte {tar.offset} ({e})") from e


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, tarfile.ReadError) and "unexpected end of data" in text:
        return "ends inside member data (cut short)"
    return text if isinstance(exc, _BrokenTar) else f"{type(exc).__name__}: {text}"


def iter_members(
    fileobj: IO[bytes], name: str, select: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of every regular file of the tar read from ``fileobj`` (a binary
    stream, read once, front to back), skipping webdataset's ``__...__`` metadata members and,
    with ``select``, the members it returns False for (passed over unread, but still checked).

    Raises :class:`ShardError` naming ``name`` when the tar is empty, cut short or corrupt; the
    error comes when the reader reaches the damage, after the members before it were yielded.
    """
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                if not member.isreg() or _SKIP_META.match(member.name):
                    continue
                if select is not None and not select(member.name):
                    continue
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                yield member.name, data
                tar.members = []  # streaming: do not keep every header
    except (_BrokenTar, tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ShardError(f"{name}: cannot read the tar shard: {_describe(e)}") from e


def iter_samples(
    fileobj: IO[bytes], name: str, select: Callable[[str], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """webdataset samples of a tar: dicts with ``__key__`` (the member path up to the first dot
    of its base name), ``__url__`` (``name``) and one ``bytes`` value per lower-cased extension
    (``jpg``, ``txt``, ``json``...); ``select`` as in :func:`iter_members`. Errors as
    :func:`iter_members`; a sample that repeats an extension is a :class:`ShardError` too."""
    from webdataset.tariterators import group_by_keys

    files = ({"fname": n, "data": d, "__url__": name} for n, d in iter_members(fileobj, name, select))
    try:
        yield from group_by_keys(files)
    except ValueError as e:
        raise ShardError(f"{name}: not a webdataset tar: {e.args[0] if e.args else e}") from e


def open_samples(path: str, fs: Any = None, select: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """:func:`iter_samples` of the tar at ``path`` (a local path, or a path on fsspec ``fs``)."""
    try:
        fh = fs.open(path, "rb") if fs is not None else open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ShardError(f"{path}: cannot open the tar shard: {e}") from e
    with fh:
        yield from iter_samples(fh, path, select)


def count_samples(path: str, fs: Any = None) -> int:
    """The number of webdataset samples (runs of members sharing a key) of the tar at ``path``,
    read from its headers: member data is passed over, damage still raises :class:`ShardError`."""
    count, last = 0, None

    def seen(member: str) -> bool:
        nonlocal count, last
        dirname, base = posixpath.split(member)
        key = posixpath.join(dirname, base.partition(".")[0])
        if not base.startswith(".") and key != last:
            count, last = count + 1, key
        return False

    try:
        fh = fs.open(path, "rb") if fs is not None else open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ShardError(f"{path}: cannot open the tar shard: {e}") from e
    with fh:
        for _ in iter_members(fh, path, select=seen):
            pass
    return count

"""Output folders that never lose a user's file.

laion-hf writes a run's files into a hidden staging folder inside the output folder, then
swaps them in at the end. A manifest (``.laion-hf-manifest.json``) lists the files that
laion-hf itself wrote there; a rerun replaces only those, never files matching a pattern.
An output folder that contains or overlaps the run's inputs is refused before anything is
written or removed. While the swap runs the manifest says ``complete: false``, so output of
an interrupted swap is marked as incomplete, and a killed run leaves only its staging
folder (removed by the next run), never complete-looking parts.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

from laion_hf._util.atomic import atomic_write_text
from laion_hf.errors import OutputError

MANIFEST = ".laion-hf-manifest.json"
STAGING_PREFIX = ".laion-hf-staging-"
_STAGING_MARKER = ".laion-hf-staging"


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Check that ``out_dir`` is (or can be created as) a writable folder; return its path.

    Raises :class:`OutputError` naming the path when it is a file, sits below a file or
    cannot be written.
    """
    path = _real(out_dir)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"output {os.fspath(out_dir)!r}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"output {os.fspath(out_dir)!r}: {probe} is not writable")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Check that ``path`` can be written as a file (not a folder; its folder writable)."""
    target = _real(path)
    if target.is_dir():
        raise OutputError(f"output file {os.fspath(path)!r} is a folder")
    check_output_dir(target.parent)
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"output file {os.fspath(path)!r} is not writable")
    return target


def check_disjoint(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> None:
    """Refuse an output folder that contains, equals or lies inside one of the local ``inputs``
    (files or folders; URLs are ignored). Raises :class:`OutputError` naming both."""
    out = _real(out_dir)
    for item in inputs:
        text = os.fspath(item)
        if "://" in text:
            continue
        for path in _expand(text):
            if _inside(path, out) or (path.is_dir() and _inside(out, path)):
                raise OutputError(
                    f"output folder {os.fspath(out_dir)!r} overlaps the input {text!r}: "
                    "write the output to a folder outside the inputs"
                )


def _expand(text: str) -> list[Path]:
    import glob

    if any(c in text for c in "*?["):
        return [_real(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
    return [_real(text)]


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of ``out_dir`` (``{"files": [], "complete": True}`` when there is none)."""
    path = Path(out_dir) / MANIFEST
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"files": [], "complete": True}
    except (OSError, ValueError) as e:
        raise OutputError(f"{path}: unreadable manifest ({e}); remove it by hand") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise OutputError(f"{path}: not a laion-hf manifest; remove it by hand")
    return data


def _write_manifest(out_dir: Path, files: list[str], complete: bool, kind: str) -> None:
    body = {"tool": "laion-hf", "kind": kind, "complete": complete, "files": sorted(set(files))}
    atomic_write_text(out_dir / MANIFEST, json.dumps(body, indent=2))


def remove_stale_staging(out_dir: str | os.PathLike) -> None:
    """Remove staging folders that killed runs left in ``out_dir`` (only ours: they hold our
    marker file)."""
    root = Path(out_dir)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and (entry / _STAGING_MARKER).is_file():
            shutil.rmtree(entry, ignore_errors=True)


class OutputDir:
    """A run's output folder: stage files with :meth:`path`, then :meth:`commit` them.

    Use as a context manager; the staging folder is removed when the block ends, whether the
    run committed, raised or was interrupted::

        with OutputDir(out, inputs=[src], kind="filter") as out_dir:
            write(out_dir.path("part-00000.parquet"))
            out_dir.commit(["part-00000.parquet"], final={"stats.json": json_text})
    """

    def __init__(self, out_dir: str | os.PathLike, *, inputs: Iterable[Any] = (), kind: str) -> None:
        self.out_dir = Path(out_dir)
        self.kind = kind
        check_output_dir(out_dir)
        check_disjoint([i for i in inputs if isinstance(i, (str, os.PathLike))], out_dir)
        self.staging = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> "OutputDir":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.out_dir)
            self.staging.mkdir()
            (self.staging / _STAGING_MARKER).touch()
        except OSError as e:
            raise OutputError(f"output {os.fspath(self.out_dir)!r}: {e.strerror or e}") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def path(self, name: str) -> str:
        """Where to write the output file ``name`` during the run (inside the staging folder)."""
        return os.fspath(self.staging / name)

    def commit(self, names: list[str], final: dict[str, str] | None = None) -> None:
        """Swap the staged files ``names`` in, replacing only files of earlier laion-hf runs,
        then write each ``final`` file (name -> text; e.g. ``stats.json``) last."""
        final = final or {}
        old = read_manifest(self.out_dir)
        ours = set(old["files"])
        for name in [*names, *final]:
            target = self.out_dir / name
            if (target.exists() or target.is_symlink()) and name not in ours:
                raise OutputError(
                    f"{target} exists and was not written by laion-hf: refusing to replace it; "
                    "choose an empty output folder"
                )
        new = [*names, *final]
        _write_manifest(self.out_dir, sorted(ours | set(new)), complete=False, kind=self.kind)
        for name in [*final, *sorted(ours - set(new))]:  # the old "complete" markers go first
            _unlink(self.out_dir / name)
        for name in names:
            os.replace(self.staging / name, self.out_dir / name)
        for name, text in final.items():
            atomic_write_text(self.out_dir / name, text)
        _write_manifest(self.out_dir, new, complete=True, kind=self.kind)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OutputError(f"cannot remove {path}: {e.strerror or e}") from None

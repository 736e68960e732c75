"""Comparing the settings a folder was made with against the settings of a rerun."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def settings_changes(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str], *,
                     missing_ok: bool = False) -> str:  # fmt: skip
    """``"lr 0.001 there, 0.002 now, ..."`` for each of ``keys`` whose value differs between the
    recorded ``old`` and the rerun's ``new`` (JSON-normalised values); ``""`` when none does.
    ``missing_ok``: a key ``old`` lacks (recorded by an older version) is not a change."""
    diff = [k for k in keys if not (missing_ok and k not in old) and old.get(k) != new[k]]
    return ", ".join(f"{k} {old.get(k)!r} there, {new[k]!r} now" for k in diff)

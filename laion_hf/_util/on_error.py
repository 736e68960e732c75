"""The one ``on_error`` vocabulary of the library (issue 17).

=========  ===================================================================================
``raise``  stop at the first bad input with our error naming it (a file, a row's key)
``skip``   drop the bad input and count it (the builder: a file's rows in ``rows_lost`` and a
           warning line; the loader: ``num_skipped`` of the batch)
``mark``   keep every row, flag the bad ones (``valid`` / ``error``, like the images stage's
           ``status`` and ``error_class`` columns); only where a row can be kept
=========  ===================================================================================

Each stage accepts the values that make sense for it (a metadata file that cannot be read has
no rows to mark). The builder's old ``"warn"`` is ``"skip"`` (which now always logs) and is
accepted for one release with a deprecation warning.
"""

from __future__ import annotations

import warnings
from typing import Literal

OnError = Literal["raise", "skip", "mark"]
ON_ERROR: tuple[str, ...] = ("raise", "skip", "mark")
_DEPRECATED = {"warn": "skip"}


def check_on_error(value: str, allowed: tuple[str, ...], owner: str, error: type[Exception]) -> str:
    """``value`` as one of ``allowed`` (a subset of :data:`ON_ERROR`); a deprecated spelling is
    mapped with a ``DeprecationWarning``; anything else raises ``error`` naming ``owner``."""
    if value in _DEPRECATED:
        new = _DEPRECATED[value]
        warnings.warn(
            f"{owner}: on_error={value!r} is deprecated, use on_error={new!r} (it logs each skipped input)",
            DeprecationWarning,
            stacklevel=3,
        )
        value = new
    if value not in allowed:
        choices = ", ".join(repr(v) for v in allowed)
        known = "not supported here" if value in ON_ERROR else "unknown"
        raise error(f"{owner}: on_error={value!r} is {known}; use one of {choices}")
    return value

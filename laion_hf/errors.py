"""laion-hf's exception classes. Every error names its culprit (file, column, URL, repo) and
says what to do about it."""

from __future__ import annotations


class LaionHFError(Exception):
    """Base class of every error raised by laion-hf."""


class SourceError(LaionHFError):
    """A metadata source cannot be read: missing, empty, corrupt or not parquet."""


class SchemaError(LaionHFError):
    """A column is missing or has a type that cannot be cast to the canonical schema."""


class FilterError(LaionHFError):
    """A filter expression, preset or keyword filter is invalid."""


class BlocklistError(LaionHFError):
    """A blocklist file cannot be read or holds something that is not a hex digest."""


class FetchError(LaionHFError):
    """Image fetching was misconfigured (per-row fetch failures are statuses, not raised)."""


class ModelError(LaionHFError):
    """A CLIP model or score head cannot be built or loaded."""


class ShardError(LaionHFError):
    """Shards cannot be written or read back."""


class HubError(LaionHFError):
    """Publishing to the Hub failed; the message never contains a token."""


class LoaderError(LaionHFError):
    """A training data loader is misconfigured, or a saved loader state does not fit it."""


class CardError(HubError):
    """A dataset card cannot be rendered (template error, missing stats) or would be invalid."""


class EngineError(LaionHFError):
    """An execution engine (``--engine ray``) is missing, unreachable or failed."""


class OutputError(LaionHFError):
    """An output path cannot be used: it is a file, not writable, overlaps the inputs, or
    holds files that laion-hf did not write."""


class KnnIndexError(LaionHFError):
    """A kNN index cannot be built, loaded or searched, or a metadata folder does not match it."""


class EvalError(LaionHFError):
    """A zero-shot evaluation or training run cannot go on: a dataset without class names or
    labels, a bad template, ``k`` larger than the set, a checkpoint that does not fit."""

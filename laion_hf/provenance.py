"""The provenance record every stage writes beside its output, and the next stage extends.

``laion-hf filter``, ``download`` and ``embed`` write ``OUT/_laion_hf_provenance.json``; the next
stage reads the record of its input (:func:`read_provenance`), adds what it did
(:func:`merge`) and writes it beside its own output; ``write_shards`` stores it in ``stats.json``
and the dataset card renders it. So ``filter → download → embed → shards --card`` gives a
complete card with no ``--provenance``. The record is a JSON object (``RECORD_SCHEMA``); every
key is optional:

- ``sources``: the metadata read, as strings or ``{"repo", "files", "num_files"}``;
- ``release``: the LAION release name; ``preset``: preset names; ``filters``: filter texts
  (``"preset NAME: EXPR"`` for presets); ``sample``: fractions kept by key hash;
- ``blocklists``: ``{"name", "entries", "column", "removed"}``;
- ``scan``: ``rows_in, rows_kept, removed_by_filter, removed_by_blocklist, removed_by_sample``
  (chained selections: the first ``rows_in``, the removals summed, the last ``rows_kept``);
- ``fetch``: ``rows, success, failed, errors`` (status -> rows), ``robots_skipped``;
- ``robots``: ``disallowed_header_directives, user_agent, skipped``;
- ``clip``: ``model, pretrained, embedding_dim, scores``; ``embed``: ``rows, embedded, failed``;
- ``stages``: the stages that produced the data, in order.

Local paths never enter a record (file names only); this module reads and writes JSON only.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from laion_hf._util.atomic import atomic_write_json

FILENAME = "_laion_hf_provenance.json"
RECORD_SCHEMA = "laion-hf/provenance/1"
_SCAN_KEYS = (
    "rows_in",
    "rows_kept",
    "removed_by_filter",
    "removed_by_blocklist",
    "removed_by_sample",
)
_LIST_KEYS = ("preset", "filters", "sample", "blocklists", "stages")
_MAX_FILES = 100
_GENERIC_RELEASES = (
    "url-text",
)  # detected for any URL/TEXT table: not a LAION release  # file names kept per source; ``num_files`` keeps the count


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def local_name(value: Any) -> Any:
    """A local path as its last component; URLs and anything else as they are."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or "://" in value:
        return value
    if os.path.isabs(value) or value.startswith(("~", "./", "../")):
        return os.path.basename(value.rstrip("/\\")) or value
    return value


def _record_dir(path: str) -> Path | None:
    """The folder whose record describes ``path`` (a file, folder or glob), if it has one."""
    if any(ch in path for ch in "*?["):
        path = os.path.dirname(path.split("*")[0].split("?")[0].split("[")[0]) or "."
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / FILENAME).is_file():
        return folder
    if (folder.parent / FILENAME).is_file() and (folder.parent / "embed_config.json").is_file():
        return folder.parent  # clip-retrieval layout: OUT/metadata/*.parquet, the record in OUT
    return None


def read_provenance(source: Any) -> dict[str, Any]:
    """The provenance record of ``source`` (a path, glob or list of them: the record in its
    folder); ``{}`` for in-memory data or a folder without one. Several inputs with different
    records give their :func:`combine`."""
    items = source if isinstance(source, (list, tuple)) else [source]
    if not items or not all(isinstance(s, (str, os.PathLike)) for s in items):
        return {}
    folders = {d for s in items if "://" not in os.fspath(s) and (d := _record_dir(os.fspath(s))) is not None}
    records = []
    for folder in sorted(folders):
        try:
            rec = json.loads((folder / FILENAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable record is no record: the card then says "not recorded"
        if isinstance(rec, dict) and rec not in records:
            records.append(rec)
    out = combine(records) if len(records) > 1 else (records[0] if records else {})
    out.pop("schema", None)
    return out


def write_provenance(out_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``out_dir/_laion_hf_provenance.json`` (atomically); its path."""
    path = Path(out_dir) / FILENAME
    atomic_write_json(path, {"schema": RECORD_SCHEMA, **record}, indent=1, default=str)
    return path


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _chain_scan(first: Mapping[str, Any], then: Mapping[str, Any]) -> dict[str, Any]:
    if not first:
        return dict(then)
    if not then:
        return dict(first)
    out = {k: int(first.get(k) or 0) + int(then.get(k) or 0) for k in _SCAN_KEYS[2:]}
    out.update(rows_in=first.get("rows_in"), rows_kept=then.get("rows_kept"))
    return out


def merge(upstream: Mapping[str, Any], stage: Mapping[str, Any]) -> dict[str, Any]:
    """``upstream``'s record extended by a later ``stage``'s: list keys appended (no
    duplicates), scans chained, ``sources``/``release`` kept from upstream when it has them,
    everything else replaced by the later stage's."""
    out = dict(upstream)
    for key, value in stage.items():
        if key in _LIST_KEYS:
            out[key] = _unique(_as_list(upstream.get(key)) + _as_list(value))
        elif key == "scan":
            out[key] = _chain_scan(upstream.get("scan") or {}, value or {})
        elif key in ("sources", "release") and upstream.get(key):
            continue
        else:
            out[key] = value
    return out


def combine(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Records of inputs read side by side: sources and list keys joined, counts summed,
    other keys from the first record that has them."""
    out: dict[str, Any] = {}
    for rec in records:
        for key, value in rec.items():
            if key in _LIST_KEYS or key == "sources":
                out[key] = _unique(_as_list(out.get(key)) + _as_list(value))
            elif key in ("scan", "fetch", "embed") and isinstance(value, dict):
                acc = out.setdefault(key, {})
                for k, v in value.items():
                    if isinstance(v, dict):
                        sub = acc.setdefault(k, {})
                        for kk, vv in v.items():
                            sub[kk] = sub.get(kk, 0) + vv
                    elif isinstance(v, (int, float)) and not isinstance(v, bool):
                        acc[k] = acc.get(k, 0) + v
            else:
                out.setdefault(key, value)
    return out


def _source_entry(source: Any, files: Sequence[str] | None) -> list[Any]:
    names = [local_name(os.fspath(s)) for s in _as_list(source) if isinstance(s, (str, os.PathLike))]
    if not files or [os.path.basename(f) for f in files] == [os.path.basename(n) for n in names]:
        return names
    shown = [local_name(f) for f in files[:_MAX_FILES]]
    return [
        {
            "repo": ", ".join(names) or "metadata",
            "files": shown,
            "num_files": len(files),
        }
    ]


def _release(builder: Any, scan: Mapping[str, Any] | None, load_kwargs: Mapping[str, Any]) -> str | None:
    name = getattr(builder, "release", None) or (scan or {}).get("release") or load_kwargs.get("release")
    return None if name in _GENERIC_RELEASES else name


def selection_record(
    source: Any,
    load_kwargs: Mapping[str, Any],
    scan: Mapping[str, Any] | None,
    builder: Any = None,
    stage: str = "filter",
) -> dict[str, Any]:
    """What a metadata selection did (``laion-hf filter``, or ``download --where/--preset``):
    ``load_kwargs`` as :func:`laion_hf.load_laion` takes them, ``scan`` its counts
    (``ScanStats.as_dict()``, or the filter's stats), ``builder`` (optional) for the file list,
    the detected release, the filter texts and the blocklist's size."""
    from laion_hf.filters import combine_filters

    spec = getattr(builder, "filter_spec", None)
    texts = list((scan or {}).get("filters") or (spec.descriptions if spec is not None else []))
    if not texts:
        texts = combine_filters(load_kwargs.get("where"), load_kwargs.get("preset")).descriptions
    files = None
    if builder is not None:
        data_files = getattr(builder.config, "data_files", None)
        files = list(data_files["train"] if isinstance(data_files, dict) else data_files or [])
    rec: dict[str, Any] = {
        "sources": _source_entry(source, files),
        "release": _release(builder, scan, load_kwargs),
        "preset": _as_list(load_kwargs.get("preset")),
        "filters": texts,
        "stages": [stage],
    }
    if load_kwargs.get("sample") is not None:
        rec["sample"] = [float(load_kwargs["sample"])]
    bl = load_kwargs.get("blocklist")
    if bl:
        loaded = getattr(builder, "config", None) and getattr(builder.config, "blocklist", None)
        names = getattr(loaded, "sources", None) or [local_name(os.fspath(p)) for p in _as_list(bl)]
        rec["blocklists"] = [
            {
                "name": ", ".join(names),
                "entries": len(loaded) if loaded is not None else None,
                "column": load_kwargs.get("blocklist_column") or "url",
                "removed": (scan or {}).get("removed_by_blocklist"),
            }
        ]
    if scan:
        rec["scan"] = {k: int(scan.get(k) or 0) for k in _SCAN_KEYS}
    return {k: v for k, v in rec.items() if v not in (None, [])}


def fetch_record(stats: Mapping[str, Any], directives: Sequence[str], user_agent: str) -> dict[str, Any]:
    """What ``laion-hf download`` did: its run ``stats`` (``count, successes, status_dict``) and
    its robots policy (the ``X-Robots-Tag`` directives honoured, the User-Agent sent)."""
    status = dict(stats.get("status_dict") or {})
    skipped = int(status.get("robots_optout", 0))
    count, success = int(stats.get("count", 0)), int(stats.get("successes", 0))
    return {
        "fetch": {
            "rows": count,
            "success": success,
            "failed": count - success,
            "errors": {k: int(v) for k, v in status.items() if k != "success"},
            "robots_skipped": skipped,
        },
        "robots": {
            "disallowed_header_directives": list(directives),
            "user_agent": user_agent,
            "skipped": skipped,
        },
        "stages": ["download"],
    }


def write_download_provenance(
    out_dir: str | os.PathLike,
    stats: Mapping[str, Any],
    fetch: Any,
    *,
    source: Any = None,
    selection: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a download folder's record: its ``source``'s record (a path), then ``selection``
    (rows chosen from the metadata in this run, see :func:`selection_record`), then the fetch
    counts and robots policy of ``fetch`` (a :class:`laion_hf.images.fetch.FetchConfig`)."""
    rec = read_provenance(source) if source is not None else {}
    if not rec and not selection and isinstance(source, (str, os.PathLike, list, tuple)):
        rec = {"sources": _source_entry(source, None)}
    if selection:
        rec = merge(rec, selection)
    rec = merge(rec, fetch_record(stats, fetch.disallowed_header_directives, fetch.user_agent))
    write_provenance(out_dir, rec)
    return rec


def write_embed_provenance(out_dir: str | os.PathLike, sources: Any, totals: Mapping[str, Any]) -> dict[str, Any]:
    """Write an ``embed`` folder's record: its inputs' record plus the CLIP model of
    ``out_dir/embed_config.json`` and the embed counts in ``totals``."""
    cfg = json.loads((Path(out_dir) / "embed_config.json").read_text())
    parts = sorted(glob.glob(os.path.join(os.fspath(out_dir), "stats", "stats_*.json")))
    counts = {"rows": 0, "embedded": 0, "failed": 0}
    for p in parts:  # every finished part, this run's and a resumed run's
        s = json.loads(Path(p).read_text())
        for k, src in (
            ("rows", "count"),
            ("embedded", "embedded"),
            ("failed", "failed"),
        ):
            counts[k] += int(s.get(src, 0))
    if not parts:
        counts = {
            "rows": totals.get("count", 0),
            "embedded": totals.get("embedded", 0),
            "failed": totals.get("failed", 0),
        }
    clip = {
        "model": cfg.get("model"),
        "pretrained": local_name(cfg.get("pretrained")),
        "embedding_dim": cfg.get("embed_dim"),
        "scores": list(cfg.get("heads") or []),
    }
    rec = merge(read_provenance(sources), {"clip": clip, "embed": counts, "stages": ["embed"]})
    write_provenance(out_dir, rec)
    return rec

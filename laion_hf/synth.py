"""Realistic synthetic LAION metadata, for the demo, tests and benchmarks.

Scores and sizes are drawn from plausible distributions (similarity around LAION's 0.28
cut, log-normal image sizes with a High-Resolution tail, punsafe/pwatermark skewed to 0,
aesthetic around 5, a LAION-like language mix). Captions and URL paths come from the
embedded sample of 1,000 real alt-text/URL pairs (``laion_hf/data/web_url_caption_1k.parquet``,
from img2dataset's test files, MIT), with hosts replaced by reserved ``*.example`` names, so
that no synthetic URL points to a real server.
"""

from __future__ import annotations

import os
from importlib import resources
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from laion_hf.errors import LaionHFError
from laion_hf.sampling import stable_hash64

SAMPLE_FILE = "web_url_caption_1k.parquet"

#: Column layouts of the releases the synthesizer can imitate.
LAYOUTS = ("laion-aesthetics", "laion-original", "laion2b-multi-joined", "relaion", "datacomp")

_LANGUAGES = np.array(["en", "de", "fr", "es", "ru", "ja", "zh", "pt", "it", "nl", "pl", "ko"])
_LANG_P = np.array([0.46, 0.08, 0.07, 0.07, 0.06, 0.05, 0.05, 0.04, 0.04, 0.03, 0.03, 0.02])
_LICENSES = np.array(["?", "?", "?", "?", "?", "?", "?", "?", "creativecommons.org/licenses/by/4.0/", "?"])
_HOSTS = [f"img{i}.cdn.example" for i in range(40)] + [f"static{i}.photos.example" for i in range(24)]


def embedded_sample() -> pa.Table:
    """The embedded 1,000 real (URL, TEXT) pairs (never fetch these URLs)."""
    path = resources.files("laion_hf") / "data" / SAMPLE_FILE
    with resources.as_file(path) as p:
        return pq.read_table(p, columns=["URL", "TEXT"])


def _paths(urls: list[str]) -> list[str]:
    out = []
    for u in urls:
        parts = urlsplit(u)
        path = parts.path or "/image.jpg"
        out.append(path + (f"?{parts.query}" if parts.query else ""))
    return out


def synthesize_table(
    rows: int,
    *,
    seed: int = 0,
    layout: str = "laion-aesthetics",
    start: int = 0,
    world: bool = False,
    noise: float = 0.3,
) -> pa.Table:
    """One table of ``rows`` synthetic rows in the column layout of ``layout``.

    ``world``: captions, URL paths (``/world/<key>.jpg``) and sizes come from the embedded
    world (:mod:`laion_hf.world`, a fraction ``noise`` of captions noisy), with its ground
    truth in passthrough columns (:data:`WORLD_COLUMNS`).
    """
    if layout not in LAYOUTS:
        raise LaionHFError(f"unknown synth layout {layout!r}; known: {', '.join(LAYOUTS)}")
    rng = np.random.default_rng([seed, start])
    truth = _world_truth(rows, seed, start, noise) if world else None
    v = _values(rows, start, rng, truth)
    cols = _LAYOUT_COLUMNS[layout](v, rng, rows)
    if truth is not None:
        cols.update({name: truth.column(src) for name, src in WORLD_COLUMNS.items()})
    return pa.table(cols)


def _values(rows: int, start: int, rng: np.random.Generator, truth: pa.Table | None) -> dict:
    """The values every layout shares (drawn in a fixed order: same seed, same rows)."""
    sample = embedded_sample()
    captions = sample.column("TEXT").combine_chunks()
    paths = pa.array(_paths(sample.column("URL").to_pylist()))
    pick = rng.integers(0, len(captions), rows)
    ids = np.arange(start, start + rows, dtype=np.int64)
    hosts = pa.array(_HOSTS).take(pa.array(rng.integers(0, len(_HOSTS), rows)))
    path_col = paths.take(pa.array(pick))
    sep = pc.if_else(pc.match_substring(path_col, "?"), "&", "?")
    url = pc.binary_join_element_wise(
        "https://", hosts, path_col, sep, "laion_id=", pc.cast(pa.array(ids), pa.string()), ""
    )
    caption = captions.take(pa.array(pick))
    if truth is not None:
        url, caption = truth.column("url"), truth.column("caption")
    # sizes: log-normal around 500 px with a High-Resolution tail, aspect ratios 1:3..3:1
    long_side = np.clip(np.exp(rng.normal(np.log(520), 0.55, rows)), 64, 8000)
    aspect = np.exp(rng.normal(0, 0.35, rows))
    width = np.maximum(1, np.round(np.where(aspect >= 1, long_side, long_side * aspect))).astype(np.int32)
    height = np.maximum(1, np.round(np.where(aspect >= 1, long_side / aspect, long_side))).astype(np.int32)
    if truth is not None:
        width, height = truth.column("width").to_numpy(), truth.column("height").to_numpy()
    return {
        "ids": ids,
        "url": url,
        "caption": caption,
        "width": width,
        "height": height,
        "similarity": np.clip(rng.normal(0.305, 0.035, rows), 0.05, 0.55),
        "punsafe": np.clip(rng.beta(0.35, 6.0, rows), 0, 1).astype(np.float32),
        "pwatermark": np.clip(rng.beta(0.6, 3.0, rows), 0, 1).astype(np.float32),
        "aesthetic": np.clip(rng.normal(5.0, 0.85, rows), 1, 10).astype(np.float32),
        "language": _LANGUAGES[rng.choice(len(_LANGUAGES), rows, p=_LANG_P)],
        "hash": stable_hash64(pc.binary_join_element_wise(url, caption, "")).view(np.int64),
    }


def _aesthetics_columns(v: dict, rng: np.random.Generator, rows: int) -> dict:
    return {
        "URL": v["url"],
        "TEXT": v["caption"],
        "WIDTH": v["width"].astype(np.float64),
        "HEIGHT": v["height"].astype(np.float64),
        "similarity": v["similarity"],
        "hash": v["hash"],
        "punsafe": v["punsafe"],
        "pwatermark": v["pwatermark"],
        "LANGUAGE": v["language"],
        "aesthetic": v["aesthetic"],
    }


def _original_columns(v: dict, rng: np.random.Generator, rows: int) -> dict:
    punsafe = v["punsafe"]
    nsfw = np.where(punsafe > 0.5, "NSFW", np.where(punsafe > 0.3, "UNSURE", "UNLIKELY"))
    return {
        "SAMPLE_ID": v["ids"],
        "URL": v["url"],
        "TEXT": v["caption"],
        "HEIGHT": v["height"],
        "WIDTH": v["width"],
        "LICENSE": _LICENSES[rng.integers(0, len(_LICENSES), rows)],
        "NSFW": nsfw,
        "similarity": v["similarity"],
    }


def _multi_joined_columns(v: dict, rng: np.random.Generator, rows: int) -> dict:
    names = ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "LANGUAGE")
    keys = ("url", "caption", "width", "height", "similarity", "hash", "punsafe", "pwatermark", "language")
    return {name: v[key] for name, key in zip(names, keys)}


def _relaion_columns(v: dict, rng: np.random.Generator, rows: int) -> dict:
    keys = ("url", "caption", "width", "height", "similarity", "hash", "punsafe", "pwatermark")
    return {key: v[key] for key in keys}


def _datacomp_columns(v: dict, rng: np.random.Generator, rows: int) -> dict:
    similarity = v["similarity"]
    l14 = np.clip(similarity - 0.02 + rng.normal(0, 0.01, rows), 0, 1).astype(np.float32)
    return {
        "uid": pc.utf8_lpad(pc.cast(pa.array(v["ids"]), pa.string()), 32, "0"),
        "url": v["url"],
        "text": v["caption"],
        "original_width": v["width"],
        "original_height": v["height"],
        "clip_b32_similarity_score": similarity.astype(np.float32),
        "clip_l14_similarity_score": l14,
    }


_LAYOUT_COLUMNS = {
    "laion-aesthetics": _aesthetics_columns,
    "laion-original": _original_columns,
    "laion2b-multi-joined": _multi_joined_columns,
    "relaion": _relaion_columns,
    "datacomp": _datacomp_columns,
}


#: Passthrough columns of ``--world`` rows (name -> column of :func:`laion_hf.world.world_rows`).
WORLD_COLUMNS = {
    "world_key": "key",
    "matched": "matched",
    "noise_kind": "noise_kind",
    "caption_style": "caption_style",
    "shape": "shape",
    "colour": "colour",
    "count": "count",
    "size": "size",
    "position": "position",
    "background": "background",
    "word": "word",
}


def _world_truth(rows: int, seed: int, start: int, noise: float) -> pa.Table:
    from laion_hf.world import world_rows

    return world_rows(rows, seed=seed, noise=noise, start=start)


def synthesize(
    rows: int,
    out_dir: str | os.PathLike,
    *,
    files: int = 1,
    seed: int = 0,
    layout: str = "laion-aesthetics",
    row_group_size: int = 100_000,
    world: bool = False,
    noise: float = 0.3,
) -> list[str]:
    """Write ``rows`` synthetic LAION rows as ``files`` parquet parts (``part-00000.parquet``, ...).

    Memory stays bounded: each file is generated in row-group-sized chunks.
    """
    if rows < 0 or files < 1 or row_group_size < 1:
        raise LaionHFError(
            f"rows must be >= 0, files >= 1 and row_group_size >= 1 "
            f"(got rows={rows}, files={files}, row_group_size={row_group_size})"
        )
    from laion_hf._util.outdir import OutputDir

    per_file = [rows // files + (1 if i < rows % files else 0) for i in range(files)]
    names = [f"part-{i:05d}.parquet" for i in range(files)]
    with OutputDir(out_dir, kind="synth") as out:  # staged, swapped in whole: never mixes runs
        start = 0
        for name, n in zip(names, per_file):
            _write_part(
                out.path(name),
                n,
                start,
                seed=seed,
                layout=layout,
                row_group_size=row_group_size,
                world=world,
                noise=noise,
            )
            start += n
        out.commit(names)
    return [os.path.join(os.fspath(out_dir), name) for name in names]


def _write_part(
    path: str,
    n: int,
    start: int,
    *,
    seed: int,
    layout: str,
    row_group_size: int,
    world: bool = False,
    noise: float = 0.3,
) -> None:
    """Write rows ``start .. start + n`` as one parquet file, one row group at a time."""
    writer = None
    try:
        done = 0
        while done < n or writer is None:
            chunk = min(row_group_size, n - done)
            table = synthesize_table(chunk, seed=seed, layout=layout, start=start + done, world=world, noise=noise)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=row_group_size)
            done += chunk
    finally:
        if writer is not None:
            writer.close()

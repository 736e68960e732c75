#!/usr/bin/env python
"""Stream laion2B-en at LAION's own cut (CLIP ViT-B/32 similarity >= 0.28), batch by batch.

    python loading_scripts/stream_laion2b_en.py --source "hf://datasets/laion/relaion2B-en-research-safe/*.parquet"
    python loading_scripts/stream_laion2b_en.py --source sample      # the embedded sample, offline

Dataset loading scripts inside Hub repos are no longer run by `datasets` (>= 4.0), so this
is a script you run: it builds on `laion_hf.load_laion`, which returns a plain
`datasets.IterableDataset` you can pass to anything that takes one.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

from laion_hf import load_laion
from laion_hf.synth import synthesize


def resolve(source: str, tmp: str) -> str:
    """``sample`` means: synthesize the embedded sample into ``tmp``."""
    if source == "sample":
        synthesize(5000, tmp, files=2, seed=0, row_group_size=1000)
        return tmp
    return source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="sample", help="parquet file/folder/glob/URL, or 'sample'")
    p.add_argument("--batches", type=int, default=3, help="how many Arrow batches to print (0 = all)")
    p.add_argument("--batch-size", type=int, default=1000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_laion(resolve(args.source, tmp), preset="laion2b-en", columns=["key", "url", "caption", "similarity"])
        batches = ds.with_format("arrow").iter(batch_size=args.batch_size)
        total = 0
        for i, batch in enumerate(itertools.islice(batches, args.batches or None)):
            total += batch.num_rows
            low = min(batch.column("similarity").to_pylist())
            print(
                f"batch {i}: {batch.num_rows} rows, min similarity {low:.4f}, first caption: "
                f"{batch.column('caption')[0].as_py()!r}"
            )
        print(f"streamed {total} rows with similarity >= 0.28")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

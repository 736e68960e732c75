#!/usr/bin/env python
"""Build the LAION-High-Resolution subset (both sides >= 1024 px) as parquet shards.

    python loading_scripts/build_high_resolution.py --source "hf://datasets/laion/relaion2B-en-research-safe/*.parquet" --out hires/
    python loading_scripts/build_high_resolution.py --source sample --out hires/

Add `--research-safe` to also drop punsafe > 0.45. The output folder holds parquet parts
in laion-hf's canonical schema and a stats.json whose counts sum to the input rows; feed it
to `laion-hf download` for the images.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from laion_hf.export import filter_to_parquet
from laion_hf.synth import synthesize


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="sample", help="parquet file/folder/glob/URL, or 'sample'")
    p.add_argument("--out", required=True)
    p.add_argument("--research-safe", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source == "sample":
            synthesize(20_000, tmp, files=2, seed=0)
            source = tmp
        presets = ["high-resolution"] + (["research-safe"] if args.research_safe else [])
        stats = filter_to_parquet(source, args.out, preset=presets, progress=False)
    print(json.dumps({k: stats[k] for k in ("rows_in", "rows_kept", "removed_by_filter", "filters")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Build a LAION-Aesthetics V2 subset (aesthetic >= 5, 6 or 6.5; also 4.5, 4.75, 6.25).

    python loading_scripts/build_aesthetics_subset.py --threshold 6.5 --source "hf://datasets/<org>/<laion-aesthetics-parquet>/*.parquet" --out aes65/
    python loading_scripts/build_aesthetics_subset.py --threshold 6 --source sample --out aes6/

The thresholds are LAION's own (laion.ai/blog/laion-aesthetics); `--v1` builds the V1
"laion-aesthetic" subset instead (score > 7 after punsafe < 0.5 and pwatermark < 0.8).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from laion_hf.export import filter_to_parquet
from laion_hf.synth import synthesize

THRESHOLDS = {
    "4.5": "aesthetics-v2-4.5plus",
    "4.75": "aesthetics-v2-4.75plus",
    "5": "aesthetics-v2-5plus",
    "6": "aesthetics-v2-6plus",
    "6.25": "aesthetics-v2-6.25plus",
    "6.5": "aesthetics-v2-6.5plus",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="sample", help="parquet file/folder/glob/URL, or 'sample'")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", choices=sorted(THRESHOLDS), default="6")
    p.add_argument("--v1", action="store_true", help="LAION-Aesthetics V1 'laion-aesthetic' instead")
    args = p.parse_args(argv)
    preset = "laion-aesthetic" if args.v1 else THRESHOLDS[args.threshold]
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source == "sample":
            synthesize(20_000, tmp, files=2, seed=0)
            source = tmp
        stats = filter_to_parquet(source, args.out, preset=preset, progress=False)
    print(json.dumps({k: stats[k] for k in ("rows_in", "rows_kept", "removed_by_filter", "filters")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

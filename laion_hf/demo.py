"""``laion-hf demo``: the whole pipeline, end to end, on the embedded sample.

synthesize metadata -> stream + filter (preset, expression, blocklist) -> stats. Later
stages (fetch from the loopback image server, CLIP features, shards + card, push to the
local Hub server, reload) run when their modules are present. Nothing leaves loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def run_demo(out_dir: str = "demo_out", rows: int = 2000, *, seed: int = 0, keep: bool = False) -> dict[str, Any]:
    """Run the demo into ``out_dir``; return a summary dict (also written as ``summary.json``)."""
    from laion_hf.blocklist import Blocklist
    from laion_hf.builder import make_builder
    from laion_hf.stats import StatsAccumulator, format_stats
    from laion_hf.synth import synthesize

    if os.path.isdir(out_dir) and not keep:
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    summary: dict[str, Any] = {}

    t = _step(f"1. synthesize {rows:,} rows of LAION metadata (captions/paths from the embedded sample)")
    meta_dir = os.path.join(out_dir, "metadata")
    synthesize(rows, meta_dir, files=2, seed=seed, row_group_size=max(1, rows // 4))
    print(f"   wrote {meta_dir} in {time.time() - t:.2f}s")

    t = _step("2. stream (LaionBuilder, as load_laion): preset laion2b-en + 'punsafe < 0.5 and min(width, height) >= 256' + blocklist")
    first_urls = make_builder(meta_dir, columns=["url"]).iter_tables()
    urls = next(first_urls).column("url").to_pylist()[:5]
    import hashlib

    blocklist_path = os.path.join(out_dir, "blocklist_md5.txt")
    with open(blocklist_path, "w") as f:
        f.write("# demo blocklist: MD5 of 5 URLs\n")
        f.writelines(hashlib.md5(u.encode()).hexdigest() + "\n" for u in urls)
    builder = make_builder(
        meta_dir, preset="laion2b-en", where="punsafe < 0.5 and min(width, height) >= 256",
        blocklist=Blocklist.from_files(blocklist_path),
    )
    acc = StatsAccumulator()
    tables = []
    for table in builder.iter_tables():
        acc.update(table)
        tables.append(table)
    scan = builder.stats.as_dict()
    print(f"   release detected: {builder.release}; filters: {builder.filter_spec.descriptions}")
    print(f"   rows in {scan['rows_in']:,} -> kept {scan['rows_kept']:,} (filter -{scan['removed_by_filter']:,}, "
          f"blocklist -{scan['removed_by_blocklist']:,}) in {time.time() - t:.2f}s")
    assert scan["rows_in"] == scan["rows_kept"] + scan["removed_by_filter"] + scan["removed_by_blocklist"] \
        + scan["removed_by_sample"], "stats must sum to the input count"
    summary["scan"] = scan

    _step("3. stats of the filtered stream")
    stats = acc.result()
    print(format_stats(stats))
    summary["stats"] = {"rows": stats["rows"], "languages": stats["languages"]}

    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"\ndemo done: {os.path.join(out_dir, 'summary.json')}")
    return summary


def register_cli(sub) -> None:
    """``laion-hf demo``."""
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded sample (loopback only)",
                       description=__doc__)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out, replaced)")
    p.add_argument("--rows", type=int, default=2000, help="synthetic rows (default 2,000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(a.out, a.rows, seed=a.seed) and 0)

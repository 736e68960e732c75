#!/usr/bin/env python
"""Metadata scan throughput: laion-hf vs a raw pyarrow scan (the limit) vs the naive `datasets` way.

Synthesizes N rows (default 5 M) in >= 8 parquet files, then measures rows/s with one filter:
  (a) raw  pyarrow.dataset scan with the same filter (on the source column names)
  (b) ours load_laion(..., where=...) iterated in Arrow batches (canonical schema)
  (c) naive load_dataset("parquet", streaming=True).filter(lambda row: ...) row by row,
      timed on the first --naive-rows rows (it is ~100x slower; running it on all rows
      would take many minutes and measure the same rate)
and the peak RSS of (b) in a fresh process at each --rss-rows size, of (a) at --rows, and of
both on files of one row group each (like Spark-written LAION parquet, whose row groups hold
~1 M rows). The last line prints b/a, b/c and the RSS figures.

    python benchmarks/metadata_scan.py                      # 5 M rows, RSS at 5 M and 20 M
    python benchmarks/metadata_scan.py --rows 1000000 --rss-rows 1000000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WHERE = "similarity >= 0.28 and punsafe < 0.1 and min(width, height) >= 256"


def raw_expression():
    import pyarrow.compute as pc

    return (
        (pc.field("similarity") >= 0.28)
        & (pc.field("punsafe") < 0.1)
        & (pc.min_element_wise(pc.field("WIDTH"), pc.field("HEIGHT")) >= 256)
    )


def run_raw(folder: str) -> tuple[int, float]:
    import pyarrow.dataset as pads

    t = time.perf_counter()
    n = 0
    for batch in pads.dataset(folder, format="parquet").to_batches(filter=raw_expression(), batch_size=65_536):
        n += batch.num_rows
    return n, time.perf_counter() - t


def run_ours(folder: str) -> tuple[int, float]:
    from laion_hf import load_laion

    t = time.perf_counter()
    n = 0
    for batch in load_laion(folder, where=WHERE).with_format("arrow").iter(batch_size=65_536):
        n += batch.num_rows
    return n, time.perf_counter() - t


def run_naive(folder: str, limit: int) -> tuple[int, float]:
    from datasets import load_dataset

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet"))
    t = time.perf_counter()
    ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
    ds = ds.take(limit).filter(
        lambda r: r["similarity"] >= 0.28 and r["punsafe"] < 0.1 and min(r["WIDTH"], r["HEIGHT"]) >= 256
    )
    sum(1 for _ in ds)
    return limit, time.perf_counter() - t


_PEAK_RSS = """
import resource, sys
sys.path.insert(0, {here!r})


def hwm():
    try:  # VmHWM is this process's own high-water mark; ru_maxrss would include the parent's,
        # since Linux keeps it across fork + exec
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


from laion_hf import load_laion
load_laion({folder!r})  # imports datasets (and torch, which datasets imports when installed)
base = hwm()
from metadata_scan import {run}
n, dt = {run}({folder!r})
print(n, base, hwm())
"""


def peak_rss(folder: str, run: str = "run_ours") -> tuple[float, float]:
    """Peak RSS (MiB) of a fresh process that runs ``run`` ((b) by default, or (a)
    ``run_raw``) over ``folder`` after the same imports, and the part of it reached before
    the first row (importing datasets/torch, planning)."""
    code = _PEAK_RSS.format(here=os.path.dirname(os.path.abspath(__file__)), folder=folder, run=run)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[-1]) / 1024, int(out[-2]) / 1024


def synth(rows: int, files: int, folder: str, row_group_size: int = 100_000) -> None:
    from laion_hf.synth import synthesize

    t = time.perf_counter()
    synthesize(rows, folder, files=files, seed=0, row_group_size=row_group_size)
    print(
        f"synthesized {rows:,} rows in {files} files ({row_group_size:,}-row row groups) "
        f"in {time.perf_counter() - t:.1f}s",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--naive-rows", type=int, default=200_000)
    p.add_argument("--rss-rows", default="5000000,20000000", help="comma-separated sizes for the RSS check")
    p.add_argument("--repeat", type=int, default=2, help="best of N runs for (a) and (b)")
    p.add_argument("--workdir", default=None)
    p.add_argument(
        "--no-big-row-groups",
        dest="big_row_groups",
        action="store_false",
        help="skip the RSS check on files of one row group each (Spark-like)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = os.path.join(tmp, f"rows_{args.rows}")
        synth(args.rows, args.files, folder)
        from laion_hf import load_laion

        load_laion(folder)  # before timing: datasets imports torch when it builds an IterableDataset
        a = min((run_raw(folder) for _ in range(args.repeat)), key=lambda x: x[1])
        b = min((run_ours(folder) for _ in range(args.repeat)), key=lambda x: x[1])
        assert a[0] == b[0], f"raw kept {a[0]} rows but laion-hf kept {b[0]}"
        c = run_naive(folder, args.naive_rows)
        ra, rb, rc = args.rows / a[1], args.rows / b[1], c[0] / c[1]
        print(f"(a) raw pyarrow scan : {ra:,.0f} rows/s ({a[0]:,} kept of {args.rows:,})")
        print(f"(b) laion-hf stream  : {rb:,.0f} rows/s ({b[0]:,} kept)")
        print(f"(c) naive datasets   : {rc:,.0f} rows/s (row by row, first {c[0]:,} rows)")
        rss = {}
        for size in [int(s) for s in args.rss_rows.split(",") if s]:
            f2 = folder if size == args.rows else os.path.join(tmp, f"rows_{size}")
            if f2 != folder:
                synth(size, max(args.files, size // 1_000_000), f2)
            rss[size], base = peak_rss(f2)
            print(
                f"peak RSS of (b) at {size:,} rows: {rss[size]:,.0f} MiB "
                f"({base:,.0f} MiB of it before the first row: importing datasets/torch)",
                flush=True,
            )
            if f2 != folder:
                import shutil

                shutil.rmtree(f2)
        raw_rss, _ = peak_rss(folder, "run_raw")
        print(f"peak RSS of (a) at {args.rows:,} rows: {raw_rss:,.0f} MiB (same imports)", flush=True)
        big = {}
        if args.big_row_groups:  # Spark-written LAION files have row groups of ~1 M rows
            f3 = os.path.join(tmp, "one_row_group_per_file")
            synth(args.rows, args.files, f3, row_group_size=-(-args.rows // args.files))
            big = {"ours": peak_rss(f3)[0], "raw": peak_rss(f3, "run_raw")[0]}
            print(
                f"one row group per file ({-(-args.rows // args.files):,} rows each): peak RSS (b) "
                f"{big['ours']:,.0f} MiB, (a) {big['raw']:,.0f} MiB",
                flush=True,
            )
        print(
            json.dumps(
                {
                    "rows_per_s": {"raw": ra, "ours": rb, "naive": rc},
                    "peak_rss_mib": rss,
                    "peak_rss_raw_mib": raw_rss,
                    "one_row_group_per_file_rss_mib": big,
                }
            )
        )
        rss_txt = " ".join(f"rss@{k // 1_000_000}M={v:.0f}MiB" for k, v in rss.items())
        if big:
            rss_txt += f" rss@{args.rows // 1_000_000}M,1rg/file={big['ours']:.0f}MiB (raw scan {raw_rss:.0f}/{big['raw']:.0f}MiB)"
        print(f"b/a={rb / ra:.2f} b/c={rb / rc:.1f} {rss_txt}")


if __name__ == "__main__":
    main()

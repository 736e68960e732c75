"""Download throughput: laion-hf download vs img2dataset==1.47.0 on the same loopback input.

A loopback image server (``laion_hf.testing.image_server``, its own process, 127.0.0.1 only)
serves N JPEG URLs (default 5,000; realistic photos of 50-300 KB and 300-1,500 px, drawn from
a pool of distinct generated images) with 20-100 ms latency per request. The same parquet
goes through

* img2dataset 1.47.0, installed by this script into its own virtual environment
  (``WORK/img2dataset-venv``), and
* ``laion-hf download`` (cold cache), then again into a new folder with the warm cache,

both writing webdataset shards with ``resize_mode=center_crop``, ``image_size=256``, jpg
quality 95, no retries, a 10 s timeout, the same process count and the same number of
fetches in flight per process (img2dataset ``thread_count`` = laion-hf ``concurrency``;
laion-hf's per-host limit is lifted because every URL is on the one loopback host, and
img2dataset has none). Each tool runs as a subprocess; its wall time, start-up included,
gives samples/s; the CPU seconds of each tool's processes (getrusage of its process tree) give
a load-independent cost per sample. The tools run alternately ``--repeat`` times (default 2) and each one's best
run counts, because the machine is shared. The last line is the ratio laion-hf/img2dataset.

    python benchmarks/download.py                 # 5,000 images, 2 processes
    python benchmarks/download.py --n 500         # a quick check

If img2dataset cannot be installed or run, the script says exactly why (pip's or its own
error) and the last line reports the ratio as unavailable.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
I2D_VERSION = "1.47.0"


LAST_CPU = [0.0]


def sh(cmd: list[str], env: dict | None = None, log: Path | None = None) -> tuple[int, float, str]:
    """Run ``cmd``; returns rc, wall seconds, output. CPU seconds of it and its children -> LAST_CPU."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU[0] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if log is not None:
        log.write_text(p.stdout)
    return p.returncode, dt, p.stdout


def ensure_img2dataset(work: Path) -> tuple[Path | None, str]:
    venv = work / "img2dataset-venv"
    exe = venv / "bin" / "img2dataset"
    py = venv / "bin" / "python"
    if exe.exists():
        return exe, "reused " + str(venv)
    rc, _, out = sh([sys.executable, "-m", "venv", str(venv)])
    if rc != 0:
        return None, f"python -m venv failed (rc {rc}): {out[-2000:]}"
    print(f"installing img2dataset=={I2D_VERSION} into {venv} ...", flush=True)
    rc, dt, out = sh([str(py), "-m", "pip", "install", "-q", f"img2dataset=={I2D_VERSION}"])
    if rc != 0:
        lines = [ln for ln in out.splitlines() if "is ignored: it is neither" not in ln]
        return None, f"pip install img2dataset=={I2D_VERSION} failed (rc {rc}):\n" + "\n".join(lines[-30:])
    return exe, f"installed in {dt:.0f} s"


def start_server(latency: tuple[float, float], pool: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "laion_hf.testing.image_server",
            "--catch-all",
            "image",
            "--pool-size",
            str(pool),
            "--latency",
            str(latency[0]),
            str(latency[1]),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = p.stdout.readline().strip()  # type: ignore[union-attr]
    if not base.startswith("http://127.0.0.1:"):
        p.kill()
        raise SystemExit(f"image server did not start: {base!r}")
    return p, base


def server_requests(base: str) -> int:
    with urllib.request.urlopen(base + "/_server/stats") as r:  # loopback only
        return json.load(r)["request_count"]


def shard_stats(out: Path) -> dict:
    tot = {"count": 0, "successes": 0, "failed": 0}
    for f in glob.glob(str(out / "[0-9]*_stats.json")):
        s = json.load(open(f))
        tot["count"] += s["count"]
        tot["successes"] += s["successes"]
    tot["failed"] = tot["count"] - tot["successes"]
    return tot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="URLs (default 5000)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64, help="fetches in flight per process (both tools)")
    ap.add_argument("--latency", type=float, nargs=2, default=(0.02, 0.1))
    ap.add_argument("--pool", type=int, default=200, help="distinct generated JPEGs behind the URLs")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each tool; the best counts")
    ap.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "laion_hf_bench_download"),
        help="working folder (the img2dataset venv is kept there between runs)",
    )
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for d in ("out_i2d", "out_lh", "out_lh_warm", "cache"):
        shutil.rmtree(work / d, ignore_errors=True)

    exe, why = ensure_img2dataset(work)
    print(f"img2dataset {I2D_VERSION}: {why}", flush=True)

    t0 = time.perf_counter()
    server, base = start_server(tuple(a.latency), a.pool)
    print(
        f"loopback server {base}: pool of {a.pool} JPEGs generated, started in {time.perf_counter() - t0:.1f} s; "
        f"latency {a.latency[0] * 1000:.0f}-{a.latency[1] * 1000:.0f} ms",
        flush=True,
    )
    try:
        inp = work / "input.parquet"
        pq.write_table(
            pa.table(
                {
                    "url": [f"{base}/pool/{i:07d}.jpg" for i in range(a.n)],
                    "caption": [f"a generated photo number {i}" for i in range(a.n)],
                }
            ),
            inp,
        )
        load = os.getloadavg()
        print(
            f"input: {a.n} URLs, processes={a.processes}, concurrency/thread_count={a.concurrency}, "
            f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
            flush=True,
        )

        env_i2d = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
        env_i2d.pop("PYTHONPATH", None)
        i2d_cmd = (
            [
                str(exe),
                "--url_list",
                str(inp),
                "--input_format",
                "parquet",
                "--url_col",
                "url",
                "--caption_col",
                "caption",
                "--output_folder",
                str(work / "out_i2d"),
                "--output_format",
                "webdataset",
                "--processes_count",
                str(a.processes),
                "--thread_count",
                str(a.concurrency),
                "--image_size",
                "256",
                "--resize_mode",
                "center_crop",
                "--encode_format",
                "jpg",
                "--encode_quality",
                "95",
                "--number_sample_per_shard",
                str(a.shard_size),
                "--timeout",
                "10",
                "--retries",
                "0",
                "--enable_wandb",
                "False",
                "--distributor",
                "multiprocessing",
            ]
            if exe is not None
            else None
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        lh = [
            sys.executable,
            "-m",
            "laion_hf.cli",
            "download",
            str(inp),
            "--processes",
            str(a.processes),
            "--concurrency",
            str(a.concurrency),
            "--per-host",
            "0",
            "--image-size",
            "256",
            "--resize-mode",
            "center_crop",
            "--encode-format",
            "jpg",
            "--encode-quality",
            "95",
            "--shard-size",
            str(a.shard_size),
            "--timeout",
            "10",
            "--retries",
            "0",
            "--allow-private-networks",
            "--cache-dir",
            str(work / "cache"),
            "--no-progress",
        ]
        i2d_rate = i2d_ok = None
        lh_rate = lh_ok = 0.0
        dt = math.inf
        i2d_cpu = lh_cpu = math.inf  # CPU ms per sample (tool + its workers; the server excluded)
        for rep in range(a.repeat):
            if i2d_cmd is not None:
                shutil.rmtree(work / "out_i2d", ignore_errors=True)
                n0 = server_requests(base)
                rc, dti, out = sh(i2d_cmd, env=env_i2d, log=work / "img2dataset.log")
                s = shard_stats(work / "out_i2d")
                if rc != 0 or s["count"] != a.n:
                    tail = "\n".join(out.splitlines()[-25:])
                    print(f"img2dataset run failed (rc {rc}, {s['count']} of {a.n} rows in its stats):\n{tail}")
                    i2d_cmd, i2d_rate = None, None
                    why = f"img2dataset {I2D_VERSION} failed to run (rc {rc}); see {work / 'img2dataset.log'}"
                else:
                    print(
                        f"[run {rep + 1}] img2dataset: {dti:.2f} s, {a.n / dti:.1f} samples/s, successes "
                        f"{s['successes']}/{s['count']}, {server_requests(base) - n0} requests, "
                        f"CPU {LAST_CPU[0] / a.n * 1000:.2f} ms/sample",
                        flush=True,
                    )
                    i2d_cpu = min(i2d_cpu, LAST_CPU[0] / a.n * 1000)
                    if i2d_rate is None or a.n / dti > i2d_rate:
                        i2d_rate, i2d_ok = a.n / dti, s["successes"]
            shutil.rmtree(work / "out_lh", ignore_errors=True)
            shutil.rmtree(work / "cache", ignore_errors=True)
            n0 = server_requests(base)
            rc, dtl, out = sh(lh + ["--out", str(work / "out_lh")], env=env, log=work / "laion_hf.log")
            if rc != 0:
                raise SystemExit(f"laion-hf download failed (rc {rc}):\n{out[-3000:]}")
            s = shard_stats(work / "out_lh")
            print(
                f"[run {rep + 1}] laion-hf (cold cache): {dtl:.2f} s, {a.n / dtl:.1f} samples/s, successes "
                f"{s['successes']}/{s['count']}, {server_requests(base) - n0} requests, "
                f"CPU {LAST_CPU[0] / a.n * 1000:.2f} ms/sample",
                flush=True,
            )
            lh_cpu = min(lh_cpu, LAST_CPU[0] / a.n * 1000)
            if a.n / dtl > lh_rate:
                lh_rate, lh_ok, dt = a.n / dtl, s["successes"], dtl

        n0 = server_requests(base)
        rc, dtw, out = sh(lh + ["--out", str(work / "out_lh_warm")], env=env, log=work / "laion_hf_warm.log")
        if rc != 0:
            raise SystemExit(f"laion-hf warm rerun failed (rc {rc}):\n{out[-3000:]}")
        sw = shard_stats(work / "out_lh_warm")
        print(
            f"laion-hf (warm cache rerun): {dtw:.2f} s, {a.n / dtw:.1f} samples/s, successes "
            f"{sw['successes']}/{sw['count']}, {server_requests(base) - n0} requests; "
            f"warm-cache speed-up {dt / dtw:.2f}x",
            flush=True,
        )
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(
            f"best of {a.repeat}: laion-hf {lh_rate:.1f} samples/s, img2dataset "
            f"{'n/a' if i2d_rate is None else f'{i2d_rate:.1f}'} samples/s; CPU per sample laion-hf "
            f"{lh_cpu:.2f} ms, img2dataset {i2d_cpu:.2f} ms (load-independent: img2dataset/laion-hf "
            f"{i2d_cpu / lh_cpu:.2f}x)"
        )
        if i2d_rate is None:
            print(f"ratio laion-hf/img2dataset: unavailable ({why}); laion-hf {lh_rate:.1f} samples/s")
        else:
            print(
                f"ratio laion-hf/img2dataset samples/s: {lh_rate / i2d_rate:.2f} "
                f"(laion-hf {lh_rate:.1f}/s {lh_ok} ok, img2dataset {i2d_rate:.1f}/s {i2d_ok} ok, "
                f"{a.n} URLs, {a.processes} processes)"
            )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()

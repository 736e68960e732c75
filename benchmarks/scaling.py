"""Scaling: ``laion-hf download`` on the local engine vs on Ray Data with 1 and 2 worker processes.

A loopback image server (``laion_hf.testing.image_server``, its own process, 127.0.0.1 only)
serves N JPEG URLs (default 2,000; realistic photos of 50-300 KB and 300-1,500 px from a pool
of distinct generated images) with 20-100 ms latency per request. The same parquet goes through

* the local engine, 1 process (``download(processes=1)``) and 2 processes;
* the Ray engine (``download_ray``) on a local Ray instance started here with ``--ray-cpus``
  CPUs, with 1 and then 2 worker actors (one process each),

all writing webdataset shards with ``resize_mode=center_crop``, ``image_size=256``, jpg quality
95, no retries, ``--concurrency`` fetches in flight per process and no per-host limit (every URL
is on the one loopback host). Runs alternate (``--repeat`` rounds); the best of each counts.
Ray's start-up (``ray.init``, once) is reported apart and is not in the throughput; starting
the worker actors is. Beside samples/s (wall time, which the other users of a shared machine
disturb) each run reports CPU milliseconds per sample, which the load disturbs much less: for
the local engine the CPU time of this process and its children, for Ray the CPU time the worker
processes spent on their shards (measured in the workers; Ray's own daemons not counted).

    python benchmarks/scaling.py                  # 2,000 images, 2 rounds
    python benchmarks/scaling.py --n 400 --repeat 1   # a quick check

``benchmarks/README.md`` turns the measured per-core rate into a projection for LAION-2B-en.
The last line is the ratio Ray (2 workers) / local engine (1 process) in samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(latency: tuple[float, float], pool: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen(
        [sys.executable, "-m", "laion_hf.testing.image_server", "--catch-all", "image", "--pool-size", str(pool),
         "--latency", str(latency[0]), str(latency[1])],
        stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    base = p.stdout.readline().strip()  # type: ignore[union-attr]
    if not base.startswith("http://127.0.0.1:"):
        p.kill()
        raise SystemExit(f"image server did not start: {base!r}")
    return p, base


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="URLs (default 2000)")
    ap.add_argument("--concurrency", type=int, default=64, help="fetches in flight per process")
    ap.add_argument("--latency", type=float, nargs=2, default=(0.02, 0.1))
    ap.add_argument("--pool", type=int, default=200, help="distinct generated JPEGs behind the URLs")
    ap.add_argument("--shard-size", type=int, default=100, help="rows per shard (shards are Ray's unit of work)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best of each configuration counts")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "laion_hf_bench_scaling"))
    a = ap.parse_args()

    import ray

    from laion_hf.engines.ray import download_ray
    from laion_hf.images.download import download

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    server, base = start_server(tuple(a.latency), a.pool)
    print(
        f"loopback server {base}: pool of {a.pool} JPEGs, started in {time.perf_counter() - t0:.1f} s; "
        f"latency {a.latency[0] * 1000:.0f}-{a.latency[1] * 1000:.0f} ms",
        flush=True,
    )
    opts = dict(shard_size=a.shard_size, concurrency=a.concurrency, per_host=0, image_size=256,
                resize_mode="center_crop", encode_format="jpg", encode_quality=95, timeout=10, retries=0,
                allow_private_networks=True, progress=False)  # fmt: skip
    results: dict[str, dict] = {}
    ray_tmp = tempfile.mkdtemp(prefix="lhf-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        inp = work / "input.parquet"
        pq.write_table(pa.table({"url": [f"{base}/pool/{i:07d}.jpg" for i in range(a.n)],
                                 "caption": [f"a generated photo number {i}" for i in range(a.n)]}), inp)  # fmt: skip
        t0 = time.perf_counter()
        ray.init(num_cpus=a.ray_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _temp_dir=ray_tmp)  # fmt: skip
        ray_init = time.perf_counter() - t0
        load = os.getloadavg()
        print(f"input: {a.n} URLs in {-(-a.n // a.shard_size)} shards, concurrency {a.concurrency} per process; "
              f"ray.init ({a.ray_cpus} CPUs) {ray_init:.1f} s (not counted); "
              f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)  # fmt: skip
        # Ray's fixed cost per run (actor start-up, executor): the same call on 2 one-row shards
        tiny = work / "tiny.parquet"
        pq.write_table(pa.table({"url": [f"{base}/pool/t{i}.jpg" for i in range(2)], "caption": ["t0", "t1"]}), tiny)
        overhead = {}
        for k in (1, 2):
            for _ in range(a.repeat):
                shutil.rmtree(work / "tiny-out", ignore_errors=True)
                w0 = time.perf_counter()
                download_ray(str(tiny), work / "tiny-out", workers=k, **dict(opts, shard_size=1))
                overhead[k] = min(overhead.get(k, 1e9), time.perf_counter() - w0)
        print("Ray fixed cost per run (2 one-row shards): " + ", ".join(f"{k} worker(s) {v:.2f} s" for k, v in overhead.items()),
              flush=True)  # fmt: skip
        configs = [("local, 1 process", "local", 1), ("local, 2 processes", "local", 2),
                   ("ray, 1 worker", "ray", 1), ("ray, 2 workers", "ray", 2)]  # fmt: skip
        for rep in range(a.repeat):
            for name, engine, k in configs:
                out = work / f"out-{engine}-{k}"
                shutil.rmtree(out, ignore_errors=True)
                c0, w0 = _cpu(), time.perf_counter()
                if engine == "local":
                    s = download(str(inp), out, processes=k, **opts)
                    cpu = _cpu() - c0
                else:
                    s = download_ray(str(inp), out, workers=k, **opts)
                    cpu = s["worker_cpu_seconds"]
                wall = time.perf_counter() - w0
                if s["count"] != a.n:
                    raise SystemExit(f"{name}: {s['count']} of {a.n} rows accounted for")
                rate, cpu_ms = a.n / wall, cpu / a.n * 1000
                extra = f", {s['worker_pids']} worker processes" if engine == "ray" else ""
                print(f"[round {rep + 1}] {name:20} {wall:6.2f} s  {rate:7.1f} samples/s  successes "
                      f"{s['successes']}/{s['count']}  CPU {cpu_ms:.2f} ms/sample{extra}", flush=True)  # fmt: skip
                best = results.get(name)
                if best is None or rate > best["samples_per_s"]:
                    results[name] = {
                        "samples_per_s": rate,
                        "seconds": wall,
                        "successes": s["successes"],
                        "cpu_ms_per_sample": min(cpu_ms, best["cpu_ms_per_sample"]) if best else cpu_ms,
                    }
                else:
                    best["cpu_ms_per_sample"] = min(best["cpu_ms_per_sample"], cpu_ms)
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cores: {os.cpu_count()}")
        per_core = 1000 / min(r["cpu_ms_per_sample"] for n, r in results.items() if n.startswith("ray"))
        summary = {"n": a.n, "shard_size": a.shard_size, "concurrency": a.concurrency, "ray_init_s": ray_init,
                   "results": results, "per_core_samples_per_s_from_cpu": per_core,
                   "load_after": load, "cores": os.cpu_count()}  # fmt: skip
        (work / "scaling.json").write_text(json.dumps(summary, indent=2))
        print(f"best of {a.repeat}: " + "; ".join(f"{n} {r['samples_per_s']:.1f}/s ({r['cpu_ms_per_sample']:.2f} ms CPU)"
                                                  for n, r in results.items()))  # fmt: skip
        print(f"per-core rate from Ray workers' CPU time: {per_core:.1f} samples/s per core (see benchmarks/README.md)")
        for k, name in ((1, "ray, 1 worker"), (2, "ray, 2 workers")):
            busy = results[name]["seconds"] - overhead[k]
            if busy < 0.25 * results[name]["seconds"]:
                print(f"{name}: the run is mostly fixed cost ({overhead[k]:.2f} s); use a larger --n for a steady rate")
                continue
            results[name]["steady_samples_per_s"] = a.n / busy
            print(
                f"{name}: {a.n / busy:.1f} samples/s once running (wall time minus the {overhead[k]:.2f} s fixed cost)"
            )
        summary["ray_fixed_cost_s"] = overhead
        (work / "scaling.json").write_text(json.dumps(summary, indent=2))
        r1, r2 = results["ray, 1 worker"]["samples_per_s"], results["ray, 2 workers"]["samples_per_s"]
        l1, l2 = results["local, 1 process"]["samples_per_s"], results["local, 2 processes"]["samples_per_s"]
        print(f"ratio ray(2 workers)/local(1 process) samples/s: {r2 / l1:.2f} (ray 1 worker/local 1 process "
              f"{r1 / l1:.2f}; ray 2/ray 1 {r2 / r1:.2f}; local 2/local 1 {l2 / l1:.2f}; ray 2 workers/local 2 "
              f"processes {r2 / l2:.2f}; {a.n} URLs, {os.cpu_count()} cores)")  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for d in work.glob("*out*"):  # the images; scaling.json stays
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Worker processes of ``laion-hf download --processes N`` die with their parent (issue 11,
item 9): a real CLI subprocess is killed with SIGKILL mid-download, and every process it
started (workers and multiprocessing's resource tracker) must be gone within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")


def _children(pid: int) -> dict[int, str]:
    """Live (non-zombie) children of ``pid``: {pid: command line}."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(entry)] = cmd
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # an exited orphan nobody reaped yet is gone for our purposes


def test_workers_exit_when_the_parent_is_killed(fresh_server, tmp_path):
    src = tmp_path / "in.parquet"
    urls = [fresh_server.fault_url("hang", seconds=60) + f"&k={i}" for i in range(4)]
    pq.write_table(pa.table({"url": urls}), src)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from laion_hf.cli import main; sys.exit(main())",
        "download",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--processes",
        "2",
        "--shard-size",
        "1",
        "--timeout",
        "60",
        "--no-progress",
        "--allow-private-networks",
        "127.0.0.1/32",
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kids: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while fresh_server.request_count < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # both workers are inside a (hanging) request
        assert fresh_server.request_count >= 2, proc.stderr.read().decode() if proc.poll() is not None else ""
        kids = _children(proc.pid)
        workers = [p for p, c in kids.items() if "spawn_main" in c]
        assert len(workers) == 2, kids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p: c for p, c in kids.items() if _alive(p)}
        assert not left, f"still running after the parent was killed: {left}"
    finally:  # never leave a process behind, whatever failed
        for p in [proc.pid, *(p for p, c in kids.items() if _alive(p) and _cmdline(p) == c)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""

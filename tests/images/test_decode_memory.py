"""Decoding memory is bounded by bytes (issue 11, item 8): a 13,000 x 13,000 1-bit PNG is
~20 KB on the wire and under ``max_pixels`` but takes ~850 MB to decode and convert to RGB.
It is refused from its header (``decode_too_large``), and decodes under the per-image limit
share a per-process budget. Peak memory is measured in a fresh subprocess: its ``VmHWM``
(peak resident set of this program image; ``ru_maxrss`` would carry over pytest's own peak
across the exec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.resize import (
    DecodeBudget,
    ResizeConfig,
    decode_cost,
    process_image,
)
from laion_hf.images.stream import fetch_table
from laion_hf.testing.image_server import bomb_png, make_image

from .conftest import FAST

MiB = 2**20


PEAK = """
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", PEAK + textwrap.dedent(code)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")


def test_decode_cost_counts_pillow_bytes_per_pixel():
    import io

    one_bit = Image.open(io.BytesIO(bomb_png(1000, 100)))
    assert decode_cost(one_bit) == 1000 * 100 * (1 + 4)  # the 1-bit decode + its RGB copy
    rgb = Image.open(io.BytesIO(make_image(300, 200, "png", 1)))
    assert decode_cost(rgb) == 300 * 200 * 4 and decode_cost(rgb, orientation=6) == 300 * 200 * 8
    rgba = Image.open(io.BytesIO(make_image(30, 20, "png", 1, "RGBA")))
    assert decode_cost(rgba) == 30 * 20 * (4 + 9)


def test_over_the_byte_limit_is_a_resize_failure_with_a_clear_error():
    r = process_image(bomb_png(4000, 4000), ResizeConfig(max_decode_bytes=64 * MiB))
    assert r.status == st.DECODE_TOO_LARGE and (r.original_width, r.original_height) == (4000, 4000)
    assert "PNG 4000x4000 mode 1 needs ~76 MiB" in r.error and "max_decode_bytes=67108864" in r.error
    assert process_image(bomb_png(4000, 4000), ResizeConfig(max_decode_bytes=80 * MiB)).status == st.SUCCESS
    assert st.summarize([st.DECODE_TOO_LARGE])["failed_to_resize"] == 1
    with pytest.raises(FetchError, match="max_decode_bytes"):
        ResizeConfig(max_decode_bytes=0)
    assert ResizeConfig(decode_memory_budget=1).fingerprint() == ResizeConfig().fingerprint()


def test_jpeg_cost_is_judged_after_draft():
    """A big JPEG that will be shrunk is decoded at 1/8 scale: its cost is that of the draft."""
    data = make_image(4000, 3000, "jpg", 2)
    cfg = ResizeConfig(image_size=64, max_decode_bytes=2 * MiB)  # full decode: 4000*3000*4 = 46 MiB
    assert process_image(data, cfg).status == st.SUCCESS
    r = process_image(data, ResizeConfig(image_size=64, max_decode_bytes=2 * MiB, fast_decode=False))
    assert r.status == st.DECODE_TOO_LARGE


def test_budget_holds_bytes_and_serialises_decodes():
    budget = DecodeBudget(100 * MiB)
    data = bomb_png(3000, 3000)  # 3000*3000*5 = 43 MiB each: two fit, a third waits
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda d: process_image(d, ResizeConfig(image_size=32), budget), [data] * 6))
    assert [r.status for r in rs] == [st.SUCCESS] * 6
    assert budget.in_use == 0 and 43 * MiB <= budget.peak <= 100 * MiB
    big = DecodeBudget(10)  # a decode larger than the whole budget still runs, alone
    assert process_image(data, ResizeConfig(image_size=32), big).status == st.SUCCESS and big.peak > 10


@needs_proc
def test_big_png_from_the_server_is_refused_before_decoding(server):
    """Four 13,000 x 13,000 1-bit PNGs fetched at once: all decode_too_large, and the
    process's peak RSS grows by far less than one decode (~850 MB; before: 3 GB)."""
    url = server.fault_url("big-png")
    res = _run(f"""
        import json
        import pyarrow as pa
        from laion_hf.images.stream import fetch_table
        from laion_hf.testing.image_server import bomb_png
        bomb_png(13_000, 13_000)  # the server's copy lives in the test process; warm imports here
        base = peak_kib()
        urls = [{url!r} + "?n=%d" % i for i in range(4)]
        out = fetch_table(pa.table({{"url": urls}}), allow_private_networks=["127.0.0.1/32"], resize_threads=4,
                          image_size=64, timeout=60, retries=0)
        peak = peak_kib()
        print(json.dumps({{"status": out.column("status").to_pylist(), "error": out.column("error")[0].as_py(),
                          "grew_mib": (peak - base) / 1024}}))
    """)
    assert res["status"] == [st.DECODE_TOO_LARGE] * 4
    assert "PNG 13000x13000 mode 1 needs ~806 MiB" in res["error"]
    assert res["grew_mib"] < 100, res


@needs_proc
def test_process_budget_bounds_peak_memory():
    """Eight 6,000 x 6,000 1-bit PNGs (172 MiB each to decode) on 4 decode threads with a
    256 MiB budget: one decode at a time, so the peak RSS grows by about one decode, not 4."""
    res = _run("""
        import json
        from concurrent.futures import ThreadPoolExecutor
        from laion_hf.images.resize import ResizeConfig, process_image
        from laion_hf.testing.image_server import bomb_png
        data = bomb_png(6000, 6000)
        cfg = ResizeConfig(image_size=64, decode_memory_budget=256 * 2**20)
        base = peak_kib()
        with ThreadPoolExecutor(4) as ex:
            rs = list(ex.map(lambda d: process_image(d, cfg), [data] * 8))
        peak = peak_kib()
        print(json.dumps({"status": sorted({r.status for r in rs}), "grew_mib": (peak - base) / 1024}))
    """)
    assert res["status"] == [st.SUCCESS]
    assert 150 < res["grew_mib"] < 300, res  # one decode is ~172 MiB; four at once were ~690


def test_download_cli_takes_max_decode_mb(server, tmp_path, capsys):
    import pyarrow.parquet as pq

    from laion_hf.cli import main as cli_main

    src = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"url": [server.fault_url("big-png", w=2000, h=2000), server.image_url(40, 30)]}),
        src,
    )
    assert (
        cli_main(
            [
                "download",
                str(src),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
                "--image-size",
                "16",
                "--allow-private-networks",
                "127.0.0.1/32",
                "--max-decode-mb",
                "10",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["status_dict"] == {"decode_too_large": 1, "success": 1} and out["failed_to_resize"] == 1


def test_fetch_table_reports_decode_too_large(server):
    out = fetch_table(
        pa.table({"url": [server.fault_url("big-png", w=3000, h=3000)]}),
        **{**FAST, "max_decode_bytes": 8 * MiB},
    )
    assert out.column("status").to_pylist() == [st.DECODE_TOO_LARGE]

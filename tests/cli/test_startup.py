"""Building the parser (every ``laion-hf`` start, and every spawned download/embed worker that
re-imports the CLI) must not import the heavy libraries: datasets alone costs ~1 s of CPU."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("datasets", "torch", "open_clip", "faiss", "ray")


def test_the_parser_imports_no_heavy_library():
    code = (
        "import sys; from laion_hf.cli import build_parser; build_parser(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""

"""``laion-hf serve DIR`` serves the page at ``/``, bound to 127.0.0.1 by default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

CLI = "import sys; from laion_hf.cli import main; sys.exit(main())"


def test_serve_cli_serves_the_page_on_loopback(index_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", f"subset={index_dir}", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"laion-hf serve: (http://\S+) ", line)
            if m:
                break
        assert m, "".join(lines)
        url = m.group(1)
        assert url.startswith("http://127.0.0.1:") and "open " + url + "/" in line
        with urllib.request.urlopen(url + "/", timeout=60) as r:
            page, csp = r.read().decode(), r.headers["Content-Security-Policy"]
        assert "<title>laion-hf explorer</title>" in page and "script-src 'self'" in csp
        with urllib.request.urlopen(url + "/overview", timeout=60) as r:
            assert b'"rows"' in r.read()
    finally:
        proc.terminate()
        proc.wait(30)

"""Suite-wide test settings. Nothing here fakes a dependency: servers are real loopback
servers started by the fixtures of each test folder."""

from __future__ import annotations

import os

# Never let a test reach a real hub or download anything.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

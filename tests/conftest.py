"""Suite-wide test settings. Nothing here fakes a dependency: servers are real loopback
servers started by the fixtures of each test folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# One private Hugging Face home for the whole session, set before any test module imports
# huggingface_hub or datasets (both read these at import time): no test sees a developer's
# cache, token or an earlier run's cached modules, whatever order the folders run in.
_HF_TMP = tempfile.mkdtemp(prefix="laion-hf-tests-hf-")
atexit.register(shutil.rmtree, _HF_TMP, ignore_errors=True)
os.environ["HF_HOME"] = os.path.join(_HF_TMP, "hf_home")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_TMP, "datasets_cache")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)
# Never let a test reach a real hub or download anything.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

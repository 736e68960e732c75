from __future__ import annotations

import pytest

from laion_hf.synth import synthesize


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """3 parquet files, 6,000 rows, laion-aesthetics layout, 4 row groups per file."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(6000, out, files=3, seed=1, row_group_size=500)
    return str(out)

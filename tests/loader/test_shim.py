"""``laion_hf.torch`` is a deprecated re-export of ``laion_hf.loader`` for one release (issue 17)."""

from __future__ import annotations

import importlib
import sys

import pytest

pytest.importorskip("torch")


def test_laion_hf_torch_is_a_deprecated_shim_of_the_loader():
    import laion_hf.loader as loader

    sys.modules.pop("laion_hf.torch", None)
    with pytest.warns(DeprecationWarning, match="laion_hf.loader"):
        shim = importlib.import_module("laion_hf.torch")
    for name in shim.__all__:
        assert getattr(shim, name) is getattr(loader, name)
    import laion_hf

    assert laion_hf.make_dataloader is loader.make_dataloader
    assert laion_hf.LaionTorchDataset is loader.LaionTorchDataset

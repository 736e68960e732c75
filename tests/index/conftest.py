"""Fixtures of the index tests: a real index over the tiny CLIP model's embeddings of real
JPEGs, and synthetic clustered embedding folders."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``(shards, embed folder, index folder)`` built with the tiny model."""
    pytest.importorskip("open_clip")
    from laion_hf.testing.knn import tiny_index

    return tiny_index(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def embedder():
    from laion_hf.clip import ClipEmbedder

    return ClipEmbedder("laion-hf-tiny", device="cpu", precision="fp32")

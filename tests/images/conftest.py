"""Fixtures of the image tests: one real loopback image server for the session, and fetch
options with short timeouts so every fault resolves in about a second."""

from __future__ import annotations

import pytest

from laion_hf.testing.image_server import ImageServer

# Tight bounds: a hung or slow request ends after TIMEOUT seconds (retries do not retry timeouts).
TIMEOUT = 1.5
FAST = dict(
    allow_private_networks=True,
    timeout=TIMEOUT,
    connect_timeout=1.0,
    read_timeout=1.0,
    retries=2,
    backoff_base=0.02,
    backoff_max=0.1,
    max_body_bytes=4 * 2**20,
)


@pytest.fixture(scope="session")
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def fresh_server():
    """A server of its own, for tests that count requests."""
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def fast():
    return dict(FAST)

"""HTTPS: certificates are verified (against the system's authorities plus ``ca_file``), a
failed handshake is a ``tls_error`` row naming the host, never retried, never a crash."""

from __future__ import annotations

import asyncio
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_hf.cli import main as cli_main
from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.fetch import FetchConfig, ImageFetcher, StaticResolver
from laion_hf.images.resize import ResizeConfig
from laion_hf.testing.image_server import ImageServer
from laion_hf.testing.tls import make_certificates

from .conftest import FAST

LOOPBACK = dict(FAST, allow_private_networks=["127.0.0.0/8"])


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"), ["images.example", "127.0.0.1"])


@pytest.fixture(scope="module")
def https_server(certs):
    with ImageServer(ssl_context=certs.server_context()) as srv:
        yield srv


def _fetch(urls, **over):
    resolver = StaticResolver({"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})

    async def run():
        async with ImageFetcher(FetchConfig(**{**LOOPBACK, **over}), ResizeConfig(), resolver=resolver) as f:
            return await f.process_many(urls)

    return asyncio.run(run())


def test_https_with_a_trusted_authority_is_fetched_under_its_host_name(https_server, certs):
    port = https_server.base_url.rsplit(":", 1)[1]
    before = https_server.request_count
    r = _fetch([f"https://images.example:{port}/img/64x48.jpg"], ca_file=certs.ca_file)
    assert r[0].status == st.SUCCESS, r[0].error
    assert (r[0].original_width, r[0].original_height) == (64, 48)
    assert https_server.request_count == before + 1
    assert https_server.requests[-1][2]["Host"] == f"images.example:{port}"


def test_untrusted_wrong_host_and_expired_certificates_are_tls_errors(https_server, certs, tmp_path):
    port = https_server.base_url.rsplit(":", 1)[1]
    before = https_server.request_count
    untrusted, wrong_host = _fetch(
        [
            f"https://images.example:{port}/img/10x10.jpg",  # no ca_file
            f"https://other.example:{port}/img/10x10.jpg",
        ],
        ca_file=None,
    )
    assert untrusted.status == wrong_host.status == st.TLS_ERROR
    assert "images.example" in untrusted.error and "certificate" in untrusted.error.lower()
    trusted_wrong_host = _fetch([f"https://other.example:{port}/img/10x10.jpg"], ca_file=certs.ca_file)[0]
    assert trusted_wrong_host.status == st.TLS_ERROR and "other.example" in trusted_wrong_host.error
    expired = make_certificates(tmp_path / "old", ["images.example"], expired=True)
    with ImageServer(ssl_context=expired.server_context()) as old:
        old_port = old.base_url.rsplit(":", 1)[1]
        r = _fetch([f"https://images.example:{old_port}/img/10x10.jpg"], ca_file=expired.ca_file)[0]
        assert r.status == st.TLS_ERROR and "expired" in r.error.lower()
        assert old.request_count == 0
    assert https_server.request_count == before  # no handshake got as far as a request


def test_tls_errors_are_not_retried(https_server):
    import time

    port = https_server.base_url.rsplit(":", 1)[1]
    t0 = time.monotonic()
    r = _fetch([f"https://images.example:{port}/img/10x10.jpg"], retries=5, backoff_base=2.0, backoff_max=2.0)
    assert r[0].status == st.TLS_ERROR
    assert time.monotonic() - t0 < 1.5  # one retry would have slept >= 1 s (2 s with jitter down to half)


def test_missing_or_bad_ca_file_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="nope.pem"):
        FetchConfig(ca_file=str(tmp_path / "nope.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")

    async def open_fetcher():
        async with ImageFetcher(FetchConfig(ca_file=str(bad)), ResizeConfig()):
            pass

    with pytest.raises(FetchError, match="bad.pem"):
        asyncio.run(open_fetcher())


def test_download_cli_over_https_with_ca_file(https_server, certs, tmp_path, capsys):
    urls = [https_server.image_url(40 + i, 30) for i in range(3)]
    assert all(u.startswith("https://127.0.0.1:") for u in urls)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": urls, "caption": ["a", "b", "c"]}), src)
    common = ["--allow-private-networks", "127.0.0.1/32", "--no-progress", "--image-size", "16", "--timeout", "3"]
    assert cli_main(["download", str(src), "--out", str(tmp_path / "ok"), "--ca-file", certs.ca_file, *common]) == 0
    ok = json.loads(capsys.readouterr().out)
    assert ok["status_dict"] == {"success": 3}
    with tarfile.open(tmp_path / "ok" / "00000.tar") as tar:
        assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == 3
    assert cli_main(["download", str(src), "--out", str(tmp_path / "no"), *common]) == 0
    no = json.loads(capsys.readouterr().out)
    assert no["status_dict"] == {"tls_error": 3} and no["failed_to_download"] == 3
    rows = pq.read_table(tmp_path / "no" / "00000.parquet")
    assert all("127.0.0.1" in e for e in rows.column("error_message").to_pylist())

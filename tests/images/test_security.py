"""Security rules of the fetcher: schemes, address policy (also after redirects and for
host names), resolved-address pinning, no cookies/credentials, an honest User-Agent."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.fetch import AddressPolicy, FetchConfig, ImageFetcher, StaticResolver
from laion_hf.images.resize import ResizeConfig
from laion_hf.images.stream import fetch_table

from .conftest import FAST

STRICT = {k: v for k, v in FAST.items() if k != "allow_private_networks"}


def _fetch(urls, resolver=None, **over):
    async def run():
        cfg = FetchConfig(**{**FAST, **over})
        async with ImageFetcher(cfg, ResizeConfig(), resolver=resolver) as f:
            return await f.process_many(urls)

    return asyncio.run(run())


def test_loopback_is_refused_by_default_and_never_contacted(fresh_server):
    port = fresh_server.base_url.rsplit(":", 1)[1]
    urls = [
        fresh_server.image_url(50, 50),
        f"http://localhost:{port}/img/50x50.jpg",
        f"http://[::1]:{port}/img/50x50.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/img/50x50.jpg",
    ]
    out = fetch_table(pa.table({"url": urls}), **STRICT)
    assert out.column("status").to_pylist() == [st.SSRF_BLOCKED] * 4
    assert all("allow_private_networks" in e for e in out.column("error").to_pylist())
    assert fresh_server.request_count == 0


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.5",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "[fe80::1]",
        "[fc00::1]",
        "[ff02::1]",
    ],
)
def test_private_and_special_addresses_are_refused_before_connecting(host):
    out = fetch_table(pa.table({"url": [f"http://{host}/x.jpg"]}), **STRICT)
    assert out.column("status").to_pylist() == [st.SSRF_BLOCKED]


def test_policy_allows_public_and_listed_networks():
    p = AddressPolicy(["127.0.0.0/8"])
    assert p.blocked_reason("127.0.0.1") is None
    assert p.blocked_reason("8.8.8.8") is None
    assert "private" in p.blocked_reason("10.1.2.3")
    assert AddressPolicy(True).blocked_reason("10.1.2.3") is None
    with pytest.raises(FetchError, match="CIDR"):
        FetchConfig(allow_private_networks=["not-a-network"])


@pytest.mark.parametrize(
    "url,status",
    [
        ("ftp://example.com/a.jpg", st.UNSUPPORTED_SCHEME),
        ("file:///etc/passwd", st.UNSUPPORTED_SCHEME),
        ("data:image/png;base64,iVBORw0KGgo=", st.UNSUPPORTED_SCHEME),
        ("javascript:alert(1)", st.UNSUPPORTED_SCHEME),
        ("http://2130706433/a.jpg", st.INVALID_URL),
        ("http://0x7f.1/a.jpg", st.INVALID_URL),
        ("http://127.1/a.jpg", st.INVALID_URL),
        ("not a url", st.INVALID_URL),
        ("", st.INVALID_URL),
        ("http:///nohost.jpg", st.INVALID_URL),
        (None, st.INVALID_URL),
    ],
)
def test_bad_urls_get_a_status_not_a_request(url, status):
    out = fetch_table(pa.table({"url": pa.array([url], pa.string())}), **STRICT)
    assert out.column("status").to_pylist() == [status]
    assert out.column("error")[0].as_py()


def test_redirect_to_private_address_is_refused(server):
    """Loopback is allowed for the test server, but the redirect target 10.0.0.1 is not."""
    urls = [
        server.fault_url("redirect-private"),
        server.fault_url("redirect-private", to="http://169.254.169.254/latest"),
    ]
    out = fetch_table(pa.table({"url": urls}), **{**STRICT, "allow_private_networks": ["127.0.0.0/8"]})
    assert out.column("status").to_pylist() == [st.SSRF_BLOCKED] * 2
    assert "10.0.0.1" in out.column("error")[0].as_py()


def test_redirect_to_a_host_name_resolving_to_loopback_is_refused(fresh_server):
    """A name (not a literal) that resolves to a refused address is blocked by the resolver."""
    resolver = StaticResolver({"evil.test": ["127.0.0.1"]})
    port = fresh_server.base_url.rsplit(":", 1)[1]
    r = _fetch([f"http://evil.test:{port}/img/50x50.jpg"], resolver, allow_private_networks=False)
    assert r[0].status == st.SSRF_BLOCKED and "evil.test resolves to 127.0.0.1" in r[0].error
    assert fresh_server.request_count == 0


def test_mixed_dns_answer_is_refused_whole(fresh_server):
    resolver = StaticResolver({"mixed.test": ["127.0.0.1", "10.0.0.7"]})
    port = fresh_server.base_url.rsplit(":", 1)[1]
    r = _fetch([f"http://mixed.test:{port}/img/50x50.jpg"], resolver, allow_private_networks=["127.0.0.0/8"])
    assert r[0].status == st.SSRF_BLOCKED and "10.0.0.7" in r[0].error
    assert fresh_server.request_count == 0


def test_connection_goes_to_the_checked_address_no_rebinding(fresh_server):
    """A rebinding DNS answers 127.0.0.1 (allowed) first, then 10.0.0.9. The fetch resolves
    once and connects to the address it checked; the later answer is refused, never used."""
    answers = [["127.0.0.1"], ["10.0.0.9"]]
    resolver = StaticResolver(lambda host: answers.pop(0) if answers else ["10.0.0.9"])
    port = fresh_server.base_url.rsplit(":", 1)[1]
    r = _fetch([f"http://rebind.test:{port}/img/60x40.jpg"], resolver, allow_private_networks=["127.0.0.0/8"])
    assert r[0].status == st.SUCCESS and (r[0].original_width, r[0].original_height) == (60, 40)
    assert resolver.calls == ["rebind.test"]
    method, path, headers = fresh_server.requests[-1]
    assert headers["Host"] == f"rebind.test:{port}"  # virtual host kept, address pinned
    r2 = _fetch([f"http://rebind.test:{port}/img/60x40.jpg"], resolver, allow_private_networks=["127.0.0.0/8"])
    assert r2[0].status == st.SSRF_BLOCKED
    assert fresh_server.request_count == 1


def test_unknown_host_is_a_dns_error():
    r = _fetch(["http://nowhere.test/a.jpg"], StaticResolver({}))
    assert r[0].status == st.DNS_ERROR


def test_no_cookies_and_no_credentials_are_sent(fresh_server):
    port = fresh_server.base_url.rsplit(":", 1)[1]
    urls = [fresh_server.fault_url("set-cookie"), f"http://user:secret@127.0.0.1:{port}/fault/no-cookie"]
    out = fetch_table(pa.table({"url": urls}), **FAST)
    assert out.column("status").to_pylist() == ["success", "success"]
    for _, _, headers in fresh_server.requests:
        assert "Cookie" not in headers and "Authorization" not in headers


def test_honest_user_agent(fresh_server):
    out = fetch_table(pa.table({"url": [fresh_server.fault_url("user-agent")]}), user_agent_token="my-lab", **FAST)
    assert out.column("status").to_pylist() == ["success"]
    ua = fresh_server.requests[-1][2]["User-Agent"]
    assert ua.startswith("laion-hf/") and "https://github.com/laion-hf/laion-hf" in ua and ua.endswith("my-lab")

"""The private-network allow-list (issue 11, item 7): CIDR entries with optional ports, every
redirect hop re-checked against it, link-local/metadata addresses only when named, and the
CLI's ``--allow-private-networks NETS`` (bare = loopback only, deprecated)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_hf.cli import main as cli_main
from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.fetch import AddressPolicy, FetchConfig
from laion_hf.images.stream import fetch_table
from laion_hf.testing.image_server import ImageServer

from .conftest import FAST

STRICT = {k: v for k, v in FAST.items() if k != "allow_private_networks"}


def _port(srv: ImageServer) -> int:
    return int(srv.base_url.rsplit(":", 1)[1])


def test_allow_list_entries_with_and_without_ports():
    p = AddressPolicy("127.0.0.1:8080,::1/128,[fd00::/8]:443")
    assert p.blocked_reason("127.0.0.1", 8080) is None
    assert "not the allowed port of 127.0.0.1/32:8080" in p.blocked_reason("127.0.0.1", 8081)
    assert p.blocked_reason("::1", 1) is None and p.blocked_reason("fd12::1", 443) is None
    assert p.blocked_reason("fd12::1", 80) is not None
    assert "private" in p.blocked_reason("10.0.0.1", 80) and p.blocked_reason("8.8.8.8", 80) is None
    cfg = FetchConfig(allow_private_networks="127.0.0.1/32, ::1/128,[::1]:8080")
    assert cfg.allow_private_networks == ("127.0.0.1/32", "::1/128", "[::1/128]:8080")
    for bad in ("127.0.0.1:0", "127.0.0.1:99999", "localhost", "[::1]:x"):
        with pytest.raises(FetchError, match="allow_private_networks"):
            FetchConfig(allow_private_networks=[bad])


@pytest.mark.parametrize("allow", [True, ["0.0.0.0/0", "::/0"], ["169.0.0.0/8", "fe00::/8"]])
def test_link_local_and_metadata_need_naming(allow):
    p = AddressPolicy(allow)
    for addr in (
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "::ffff:169.254.169.254",
        "fd00:ec2::254",
    ):
        assert "link-local/cloud-metadata" in p.blocked_reason(addr, 80), addr
    named = AddressPolicy(["169.254.169.254/32", "fe80::/10"])
    assert named.blocked_reason("169.254.169.254", 80) is None and named.blocked_reason("fe80::9", 80) is None
    assert named.blocked_reason("169.254.169.253", 80) is not None


def test_port_granularity_end_to_end(fresh_server):
    port = _port(fresh_server)
    url = fresh_server.image_url(40, 30)
    wrong = fetch_table(pa.table({"url": [url]}), **{**STRICT, "allow_private_networks": [f"127.0.0.1:{port + 1}"]})
    assert wrong.column("status").to_pylist() == [st.SSRF_BLOCKED]
    assert fresh_server.request_count == 0
    right = fetch_table(pa.table({"url": [url]}), **{**STRICT, "allow_private_networks": [f"127.0.0.1:{port}"]})
    assert right.column("status").to_pylist() == [st.SUCCESS]


def test_every_redirect_hop_is_checked_against_the_ports(fresh_server):
    """Both servers are on 127.0.0.1; only the first one's port is allowed, so its redirect to
    the second is refused and the second server never sees a request."""
    with ImageServer() as other:
        target = other.image_url(40, 30)
        urls = [
            fresh_server.fault_url("redirect-private", to=target),
            fresh_server.fault_url("redirect-private", to="http://169.254.169.254/latest/meta-data/"),
        ]
        out = fetch_table(
            pa.table({"url": urls}),
            **{**STRICT, "allow_private_networks": [f"127.0.0.1:{_port(fresh_server)}"]},
        )
        assert out.column("status").to_pylist() == [st.SSRF_BLOCKED] * 2
        assert f"port {_port(other)}" in out.column("error")[0].as_py()
        assert other.request_count == 0
        both = fetch_table(
            pa.table({"url": urls[:1]}),
            **{
                **STRICT,
                "allow_private_networks": [
                    f"127.0.0.1:{_port(fresh_server)}",
                    f"127.0.0.1:{_port(other)}",
                ],
            },
        )
        assert both.column("status").to_pylist() == [st.SUCCESS] and other.request_count == 1


def _src(tmp_path, srv):
    src = tmp_path / "in.parquet"
    urls = [
        srv.image_url(40, 30),
        srv.fault_url("redirect-private"),  # -> 10.0.0.1
        srv.fault_url("redirect-private", to="http://169.254.169.254/latest/meta-data/"),
    ]
    pq.write_table(pa.table({"url": urls}), src)
    return src


def test_cli_bare_flag_is_loopback_only(server, tmp_path, capsys):
    """The bare flag used to allow every address: a redirect to 10.0.0.1 or to the metadata
    address was connected to. Now it is loopback only, with a deprecation message."""
    args = [
        "download",
        str(_src(tmp_path, server)),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--image-size",
        "16",
        "--timeout",
        "2",
        "--retries",
        "0",
        "--allow-private-networks",
    ]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert "deprecated" in captured.err and "127.0.0.1/32,::1/128" in captured.err
    out = json.loads(captured.out)
    assert out["status_dict"] == {"success": 1, "ssrf_blocked": 2}
    errors = pq.read_table(tmp_path / "o" / "00000.parquet").column("error_message").to_pylist()
    assert "10.0.0.1 is private" in errors[1] and "169.254.169.254 is link-local" in errors[2]


def test_cli_allow_list_with_port(server, tmp_path, capsys):
    src = _src(tmp_path, server)
    common = ["--no-progress", "--image-size", "16", "--timeout", "2", "--retries", "0"]
    assert (
        cli_main(
            [
                "download",
                str(src),
                "--out",
                str(tmp_path / "a"),
                *common,
                "--allow-private-networks",
                f"127.0.0.1:{_port(server)},::1/128",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "deprecated" not in captured.err
    assert json.loads(captured.out)["status_dict"] == {"success": 1, "ssrf_blocked": 2}
    assert (
        cli_main(
            [
                "download",
                str(src),
                "--out",
                str(tmp_path / "b"),
                *common,
                "--allow-private-networks",
                f"127.0.0.1:{_port(server) + 1}",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["status_dict"] == {"ssrf_blocked": 3}
    with pytest.raises(SystemExit):
        cli_main(["download", "--allow-private-networks", str(src), "--out", str(tmp_path / "c")])
    assert "not a CIDR network" in capsys.readouterr().err

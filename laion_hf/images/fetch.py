"""The image fetcher: aiohttp with limits, retries, etiquette and an SSRF guard.

:class:`HttpFetcher` gets the bytes of one URL (redirects, retries, timeouts, body cap,
X-Robots-Tag, address policy); :class:`ImageFetcher` turns a URL into an
:class:`~laion_hf.images.resize.ImageResult` (cache, fetch, decode/resize in a thread pool).

Security model
--------------
* Only ``http``/``https``; user-info in a URL is stripped; no cookie jar, no ``.netrc``,
  no proxy from the environment: nothing but the URL reaches an image host.
* Every host name is resolved by :class:`GuardedResolver`, which refuses the whole answer
  when any address is loopback, private, link-local, multicast, reserved or otherwise not
  global. aiohttp connects to the addresses that resolver returned, so the address that was
  checked is the address that is connected to (no DNS rebinding between check and use).
  IP-literal hosts are checked before the request; non-canonical numeric hosts
  (``2130706433``, ``0x7f.1``) are refused as ``invalid_url``.
* Redirects are followed by hand (``max_redirects``), and every hop goes through the same
  checks, so a public URL that redirects to ``10.0.0.1`` is ``ssrf_blocked``.
* ``allow_private_networks`` opts in to non-global addresses: a list of CIDR networks,
  each optionally bound to one port (``["127.0.0.1/32", "::1/128", "127.0.0.1:8080",
  "[::1]:8080", "10.0.0.0/8:443"]``), allows only those beside public addresses; every
  redirect hop and every resolved address is checked against the list again.
  ``True`` allows every address *except* link-local and cloud-metadata ones
  (:data:`METADATA_NETWORKS`: ``169.254.0.0/16``, ``fe80::/10``, ...): those are reachable
  only through a list entry that lies inside them (``169.254.169.254/32``), never through a
  broad entry such as ``0.0.0.0/0`` or ``True``.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import os
import random
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from laion_hf.errors import FetchError
from laion_hf.images import status as st
from laion_hf.images.cache import ImageCache
from laion_hf.images.resize import ImageResult, ResizeConfig, process_image

PROJECT_URL = "https://github.com/laion-hf/laion-hf"
DEFAULT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RETRY_HTTP = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FetchConfig:
    """Network settings of image fetching (img2dataset's options where they exist).

    Attributes:
        concurrency: rows in flight at once (fetch + decode), per process.
        per_host: connections at once to one host (0 = no per-host limit).
        connect_timeout / read_timeout: seconds to connect / between two reads.
        timeout: seconds for one whole attempt (connect, redirects, body).
        retries: extra attempts on 408/429/5xx and connection errors (and timeouts
            when ``retry_on_timeout``), with exponential backoff and jitter.
        backoff_base / backoff_max: backoff is ``min(max, base * 2**attempt)`` with jitter.
        max_retry_after: a ``Retry-After`` longer than this is not waited for (``http_429``).
        max_redirects: redirects followed per attempt.
        max_body_bytes: the body is cut off (``too_large``) beyond this many bytes.
        user_agent_token: your token, added to the User-Agent and matched against
            ``X-Robots-Tag: token: directive``.
        disallowed_header_directives: X-Robots-Tag directives that opt an image out
            (empty to ignore the header).
        allow_private_networks: False (default), True (every address but link-local/metadata),
            or allow-list entries: CIDR networks, optionally with a port (``127.0.0.1:8080``),
            as a sequence or one comma-separated string.
        resize_threads: threads decoding/resizing (0 = one per core).
        ca_file: a PEM file of extra certificate authorities to trust for HTTPS besides the
            system's (a local mirror's, a proxy's); certificates are always verified.
    """

    concurrency: int = 64
    per_host: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    timeout: float = 20.0
    retries: int = 2
    retry_on_timeout: bool = False
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    max_retry_after: float = 30.0
    max_redirects: int = 5
    max_body_bytes: int = 32 * 2**20
    user_agent_token: Optional[str] = None
    disallowed_header_directives: tuple = DEFAULT_DIRECTIVES
    allow_private_networks: Union[bool, tuple] = False
    resize_threads: int = 0
    ca_file: Optional[str] = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise FetchError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.per_host < 0:
            raise FetchError(f"per_host must be >= 0 (0 = unlimited), got {self.per_host}")
        for name in ("connect_timeout", "read_timeout", "timeout"):
            if not getattr(self, name) > 0:
                raise FetchError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.ca_file is not None:
            object.__setattr__(self, "ca_file", os.fspath(self.ca_file))
            if not os.path.isfile(self.ca_file):
                raise FetchError(f"ca_file {self.ca_file!r} does not exist (give a PEM file of CA certificates)")
        if self.retries < 0 or self.max_redirects < 0 or self.max_body_bytes <= 0:
            raise FetchError("retries and max_redirects must be >= 0 and max_body_bytes > 0")
        object.__setattr__(
            self,
            "disallowed_header_directives",
            tuple(d.strip().lower() for d in (self.disallowed_header_directives or ())),
        )
        apn = self.allow_private_networks
        if not isinstance(apn, bool):
            rules = parse_allow_list(apn)
            object.__setattr__(self, "allow_private_networks", tuple(r.text for r in rules))
        if self.user_agent_token is not None and not re.fullmatch(r"[A-Za-z0-9._\-]+", self.user_agent_token):
            raise FetchError(
                f"user_agent_token must be letters, digits, '.', '_' or '-', got {self.user_agent_token!r}"
            )

    @property
    def user_agent(self) -> str:
        """The User-Agent sent to image hosts: names laion-hf, its URL and your token."""
        from laion_hf import __version__

        ua = f"laion-hf/{__version__} (+{PROJECT_URL})"
        return ua + (f" {self.user_agent_token}" if self.user_agent_token else "")

    def fingerprint(self) -> str:
        """Settings that change a row's outcome for good (part of the cache key)."""
        return f"robots={','.join(sorted(self.disallowed_header_directives))};token={self.user_agent_token}"


# ---------------------------------------------------------------------- address policy
#: Link-local and cloud-metadata networks: refused even under ``allow_private_networks=True``
#: or a broad entry; only an allow-list entry inside one of them opens (that part of) it.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local, incl. 169.254.169.254 (AWS, GCP, Azure metadata)
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS IPv6 metadata
        "100.100.100.200/32",  # Alibaba Cloud metadata
    )
)

_PORTED = re.compile(r"^\[(?P<v6>[^\]]+)\](?::(?P<port6>\d+))?$|^(?P<v4>[0-9./]+):(?P<port4>\d+)$")


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry: a network and, optionally, the one port it is allowed on."""

    network: Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
    port: Optional[int] = None

    @property
    def text(self) -> str:
        """The canonical spelling (``10.0.0.0/8``, ``127.0.0.1/32:8080``, ``[::1/128]:8080``)."""
        if self.port is None:
            return str(self.network)
        net = f"[{self.network}]" if self.network.version == 6 else str(self.network)
        return f"{net}:{self.port}"

    @property
    def names_metadata(self) -> bool:
        """True when the entry lies inside a link-local/metadata network (named explicitly)."""
        net = self.network
        return any(net.version == m.version and net.subnet_of(m) for m in METADATA_NETWORKS)

    def matches(self, ip: Any, port: Optional[int]) -> bool:
        return ip in self.network and (self.port is None or self.port == port)


def parse_allow_rule(entry: Any) -> AllowRule:
    """``"10.0.0.0/8"``, ``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"[fd00::/8]:443"`` -> a rule."""
    if not isinstance(entry, str) or not entry.strip():
        raise FetchError(f"allow_private_networks entries must be CIDR strings, got {entry!r}")
    text, port = entry.strip(), None
    m = _PORTED.match(text)
    if m:
        text = m.group("v6") or m.group("v4")
        port_text = m.group("port6") or m.group("port4")
        if port_text is not None:
            port = int(port_text)
            if not 0 < port < 65536:
                raise FetchError(f"port {port} in allow_private_networks entry {entry!r} is not within 1..65535")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise FetchError(
            f"allow_private_networks entry {entry!r} is not a CIDR network (like "
            f"127.0.0.1/32, ::1/128, 127.0.0.1:8080 or [::1]:8080): {e}"
        ) from None
    return AllowRule(net, port)


def parse_allow_list(allow: Any) -> list[AllowRule]:
    """An allow-list given as a comma-separated string or a sequence of entries -> rules."""
    if isinstance(allow, str):
        allow = [a for a in allow.split(",") if a.strip()]
    try:
        entries = list(allow)
    except TypeError:
        msg = f"allow_private_networks must be a bool or CIDR networks, got {allow!r}"
        raise FetchError(msg) from None
    return [parse_allow_rule(e) for e in entries]


class AddressPolicy:
    """Decides whether an IP address (and port) may be connected to.

    ``allow``: False (public addresses only), True (every address but link-local/metadata),
    or allow-list entries (see :func:`parse_allow_rule`) allowed beside public addresses.
    """

    def __init__(self, allow: Union[bool, Sequence[str], str] = False) -> None:
        self.allow_all = allow is True
        self.rules = [] if isinstance(allow, bool) else parse_allow_list(allow)
        self.networks = [r.network for r in self.rules]

    def blocked_reason(self, address: str, port: Optional[int] = None) -> Optional[str]:
        """None when ``address`` (on ``port``, when given) may be used, else why not."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        metadata = any(ip in m for m in METADATA_NETWORKS)
        for rule in self.rules:
            if rule.matches(ip, port) and (rule.names_metadata or not metadata):
                return None
        if metadata:
            return (
                f"{ip} is link-local/cloud-metadata (allowed only when named explicitly, e.g. {ip}/{ip.max_prefixlen})"
            )
        if self.allow_all:
            return None
        reason = _special_reason(ip)
        near = [r.text for r in self.rules if ip in r.network]
        if reason and near:  # the network is listed, but for other ports
            reason += f"; port {port} is not the allowed port of {', '.join(near)}"
        return reason


def _special_reason(ip: Any) -> Optional[str]:
    """Why ``ip`` is not a public address, or None when it is."""
    for attr in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(ip, attr):
            return f"{ip} is {attr[3:].replace('_', '-')}"
    if not ip.is_global:
        return f"{ip} is not a global address"
    return None


class BlockedAddressError(OSError):
    """A host resolved to an address the policy refuses (raised inside the resolver)."""


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses answers containing a non-allowed address.

    aiohttp connects only to what this returns, which pins the connection to checked
    addresses: a second, different DNS answer cannot slip in between check and connect.
    """

    def __init__(self, policy: AddressPolicy, inner: Optional[AbstractResolver] = None) -> None:
        self.policy = policy
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        infos = await self.inner.resolve(host, port, family)
        for info in infos:
            reason = self.policy.blocked_reason(info["host"], port or info.get("port") or None)
            if reason:
                raise BlockedAddressError(f"{host.rstrip('.')} resolves to {info['host']}: {reason}")
        if not infos:
            raise OSError(f"{host} has no address")
        return infos

    async def close(self) -> None:
        await self.inner.close()


class StaticResolver(AbstractResolver):
    """Resolves names from a fixed map (``{"images.example": ["127.0.0.1"]}``), no DNS.

    For local mirrors and tests: unknown names fail like a missing DNS record, so nothing
    leaves the machine. The map may also be a callable ``host -> list of addresses``.
    """

    def __init__(self, hosts: Any) -> None:
        self.hosts = hosts
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        name = host.rstrip(".")
        self.calls.append(name)
        addrs = self.hosts(name) if callable(self.hosts) else self.hosts.get(name)
        if not addrs:
            raise OSError(f"{name}: no such host in the static map")
        return [
            {
                "hostname": name,
                "host": a,
                "port": port,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for a in addrs
        ]

    async def close(self) -> None:
        return None


_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class _Fail(Exception):
    def __init__(self, status: str, error: str, retry_after: Optional[float] = None) -> None:
        super().__init__(error)
        self.status, self.error, self.retry_after = status, error, retry_after


def check_url(url: Any, policy: AddressPolicy) -> URL:
    """Parse and vet ``url`` (scheme, host, literal addresses); raise ``_Fail`` if refused."""
    if not isinstance(url, str) or not url.strip():
        raise _Fail(st.INVALID_URL, f"URL is empty or not a string: {url!r}")
    try:
        u = URL(url.strip())
    except (ValueError, TypeError) as e:
        raise _Fail(st.INVALID_URL, f"cannot parse URL {url!r}: {e}") from None
    scheme = (u.scheme or "").lower()
    if not scheme:
        raise _Fail(st.INVALID_URL, f"URL has no scheme: {url!r}")
    if scheme not in ("http", "https"):
        raise _Fail(st.UNSUPPORTED_SCHEME, f"only http and https are fetched, not {scheme}: {url!r}")
    host = u.raw_host
    if not host:
        raise _Fail(st.INVALID_URL, f"URL has no host: {url!r}")
    if u.user is not None or u.password is not None:
        u = u.with_user(None)  # never send credentials to image hosts
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
        labels = host.rstrip(".").split(".")
        if all(_NUMERIC_LABEL.match(lb) for lb in labels):
            raise _Fail(st.INVALID_URL, f"non-canonical numeric host {host!r} in {url!r}") from None
    if ip is not None:
        try:
            port = u.port
        except ValueError:
            raise _Fail(st.INVALID_URL, f"URL has an invalid port: {url!r}") from None
        reason = policy.blocked_reason(str(ip), port)
        if reason:
            raise _Fail(st.SSRF_BLOCKED, f"refused {url!r}: {reason} (allow_private_networks to opt in)")
    return u


def robots_optout(values: Sequence[str], directives: Sequence[str], tokens: Sequence[str]) -> Optional[str]:
    """The X-Robots-Tag directive that opts out, or None.

    Handles ``noai, noimageai`` and the ``token: directive`` form, where a directive counts
    only when the token is one of ``tokens`` (laion-hf's, img2dataset's, the user's).
    """
    if not directives:
        return None
    for value in values:
        v = value.strip().lower()
        if ":" in v:  # "token: directive, directive" applies to that token only
            token, v = (x.strip() for x in v.split(":", 1))
            if token not in tokens:
                continue
        for d in v.replace(",", " ").split():
            if d in directives:
                return f"X-Robots-Tag: {value.strip()}"
    return None


def _retry_after_seconds(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _ssl_context(ca_file: Optional[str]) -> Any:
    """aiohttp's default verification (``True``), or a verifying context that also trusts the
    authorities in ``ca_file``."""
    if ca_file is None:
        return True
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as e:
        raise FetchError(f"ca_file {ca_file!r} holds no usable PEM certificate: {e}") from None
    return ctx


class FetchResult:
    """The bytes of one URL, or why there are none."""

    __slots__ = ("status", "error", "body", "final_url")

    def __init__(
        self, status: str, error: Optional[str] = None, body: Optional[bytes] = None, final_url: Optional[str] = None
    ) -> None:
        self.status, self.error, self.body, self.final_url = status, error, body, final_url


class HttpFetcher:
    """Fetches URLs with aiohttp under :class:`FetchConfig` (use as an async context manager)."""

    def __init__(self, config: FetchConfig, resolver: Optional[AbstractResolver] = None) -> None:
        self.config = config
        self.policy = AddressPolicy(config.allow_private_networks)
        self._inner_resolver = resolver
        self._session: Optional[aiohttp.ClientSession] = None
        self._host_pause: dict[str, float] = {}
        tokens = {"laion-hf", "img2dataset"}
        if config.user_agent_token:
            tokens.add(config.user_agent_token.lower())
        self._tokens = tuple(tokens)
        self.requests = 0

    async def __aenter__(self) -> "HttpFetcher":
        cfg = self.config
        connector = aiohttp.TCPConnector(
            ssl=_ssl_context(cfg.ca_file),
            limit=cfg.concurrency,
            limit_per_host=cfg.per_host,
            resolver=GuardedResolver(self.policy, self._inner_resolver),
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout, sock_read=cfg.read_timeout),
            headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.8"},
            auto_decompress=True,
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: Any) -> FetchResult:
        """Fetch ``url``: never raises for network trouble, the status says what happened."""
        cfg = self.config
        attempt = 0
        try:
            host = URL(url).raw_host or "" if isinstance(url, str) else ""
        except (ValueError, TypeError):
            host = ""
        while True:
            pause = self._host_pause.get(host, 0.0) - time.monotonic() if host else 0.0
            if pause > 0:  # the host asked all of us to slow down (429 + Retry-After)
                await asyncio.sleep(pause)
            try:
                return await asyncio.wait_for(self._fetch_once(url), cfg.timeout)
            except _Fail as f:
                fail = f
            except (asyncio.TimeoutError, TimeoutError):
                fail = _Fail(st.TIMEOUT, f"no complete answer within {cfg.timeout:g} s (timeout) for {url!r}")
            except Exception as e:  # pragma: no cover - a bug, but a row must not crash the run
                return FetchResult(st.INTERNAL_ERROR, f"{type(e).__name__}: {e} while fetching {url!r}")
            retryable = (
                fail.status in (st.CONNECTION_ERROR, st.TRUNCATED)
                or (fail.status == st.TIMEOUT and cfg.retry_on_timeout)
                or (fail.status.startswith("http_") and int(fail.status[5:]) in RETRY_HTTP)
            )
            if not retryable or attempt >= cfg.retries:
                return FetchResult(fail.status, fail.error)
            delay = min(cfg.backoff_max, cfg.backoff_base * 2**attempt)
            delay = delay / 2 + random.uniform(0, delay / 2)
            if fail.retry_after is not None:
                if fail.retry_after > cfg.max_retry_after:
                    return FetchResult(
                        fail.status,
                        f"{fail.error}; Retry-After {fail.retry_after:g} s is longer "
                        f"than max_retry_after={cfg.max_retry_after:g} s",
                    )
                delay = max(delay, fail.retry_after)
            attempt += 1
            await asyncio.sleep(delay)

    async def _fetch_once(self, url: Any) -> FetchResult:
        assert self._session is not None, "use HttpFetcher as an async context manager"
        cfg = self.config
        current = check_url(url, self.policy)
        seen = {str(current)}
        for _hop in range(cfg.max_redirects + 1):
            self.requests += 1
            got = await self._get(current)
            if isinstance(got, FetchResult):
                return got
            current = got  # a redirect, already vetted by check_url
            if str(current) in seen:
                raise _Fail(st.REDIRECT_LOOP, f"redirect loop: {current} was already visited")
            seen.add(str(current))
        raise _Fail(st.TOO_MANY_REDIRECTS, f"more than max_redirects={cfg.max_redirects} redirects from {url!r}")

    async def _get(self, current: URL) -> Union[FetchResult, URL]:
        """One request without following redirects: the body, or the vetted URL a redirect
        points to. Every refusal and network failure is raised as ``_Fail``."""
        assert self._session is not None
        try:
            async with self._session.get(current, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    return self._redirect_target(current, resp.headers["Location"])
                self._check_response(current, resp)
                return FetchResult(st.SUCCESS, None, await self._read_body(current, resp), str(current))
        except _Fail:
            raise
        except aiohttp.ClientConnectorDNSError as e:
            if isinstance(e.os_error, BlockedAddressError):
                raise _Fail(
                    st.SSRF_BLOCKED, f"refused {current}: {e.os_error} (allow_private_networks to opt in)"
                ) from None
            raise _Fail(st.DNS_ERROR, f"cannot resolve {current.raw_host}: {e.os_error}") from None
        except aiohttp.ClientPayloadError as e:
            raise _Fail(st.TRUNCATED, f"body of {current} ended early: {e}") from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:  # never retried: the next try fails the same
            raise _Fail(st.TLS_ERROR, f"TLS with {current.raw_host} failed for {current}: {e}") from None
        except (aiohttp.InvalidURL, ValueError) as e:
            raise _Fail(st.INVALID_URL, f"invalid URL {current}: {e}") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise
        except (aiohttp.ClientError, OSError) as e:
            raise _Fail(st.CONNECTION_ERROR, f"{type(e).__name__} for {current}: {e}") from None

    def _redirect_target(self, current: URL, location: str) -> URL:
        """The redirect's target, through the same checks as the first URL."""
        try:
            nxt = current.join(URL(location))
        except (ValueError, TypeError):
            raise _Fail(st.INVALID_URL, f"redirect from {current} to an unparsable {location!r}") from None
        return check_url(str(nxt), self.policy)

    def _check_response(self, current: URL, resp: aiohttp.ClientResponse) -> None:
        """Refuse a non-2xx answer (noting a 429's Retry-After for the host), an X-Robots-Tag
        opt-out and a declared body above ``max_body_bytes``."""
        cfg = self.config
        if not 200 <= resp.status < 300:
            ra = _retry_after_seconds(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None
            if resp.status == 429 and ra is not None and ra <= cfg.max_retry_after:
                self._host_pause[current.raw_host or ""] = time.monotonic() + ra
            raise _Fail(
                st.http_status(resp.status),
                f"HTTP {resp.status} {resp.reason or ''} for {current}".replace("  ", " "),
                ra,
            )
        optout = robots_optout(resp.headers.getall("X-Robots-Tag", []), cfg.disallowed_header_directives, self._tokens)
        if optout:
            raise _Fail(st.ROBOTS_OPTOUT, f"{optout} opts {current} out")
        cl = resp.content_length
        if cl is not None and cl > cfg.max_body_bytes and not resp.headers.get("Content-Encoding"):
            raise _Fail(st.TOO_LARGE, f"Content-Length {cl} is above max_body_bytes={cfg.max_body_bytes}")

    async def _read_body(self, current: URL, resp: aiohttp.ClientResponse) -> bytes:
        """The body, cut off (``too_large``) past ``max_body_bytes`` while streaming."""
        limit = self.config.max_body_bytes
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > limit:
                raise _Fail(st.TOO_LARGE, f"body of {current} passed max_body_bytes={limit} while streaming")
        return bytes(buf)


# ---------------------------------------------------------------------- rows
class ImageFetcher:
    """URL -> :class:`ImageResult`: cache lookup, fetch, decode/resize (threads), cache store.

    Use as an async context manager inside one event loop (one per process or thread).
    ``concurrency`` bounds rows in flight including their decode, so memory stays flat.
    """

    def __init__(
        self,
        fetch: FetchConfig,
        resize: ResizeConfig,
        cache: Optional[ImageCache] = None,
        resolver: Optional[AbstractResolver] = None,
    ) -> None:
        self.fetch_config, self.resize_config, self.cache = fetch, resize, cache
        self.http = HttpFetcher(fetch, resolver)
        self.settings = resize.fingerprint() + ";" + fetch.fingerprint()
        self._sem: Optional[asyncio.Semaphore] = None
        self._pool: Optional[ThreadPoolExecutor] = None

    async def __aenter__(self) -> "ImageFetcher":
        await self.http.__aenter__()
        self._sem = asyncio.Semaphore(self.fetch_config.concurrency)
        n = self.fetch_config.resize_threads or (os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="laion-hf-resize")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.__aexit__(*exc)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def cache_key(self, url: Any, expected_hash: Optional[str] = None) -> Optional[str]:
        if self.cache is None or not isinstance(url, str):
            return None
        return ImageCache.key(url, self.settings + (f";hash={expected_hash}" if expected_hash else ""))

    async def process(self, url: Any, expected_hash: Optional[str] = None, hash_type: str = "sha256") -> ImageResult:
        """Fetch and process one URL; never raises (the result's status says what happened)."""
        key = self.cache_key(url, expected_hash)
        if key is not None:
            hit = self.cache.get(key)  # type: ignore[union-attr]
            if hit is not None:
                return hit
        assert self._sem is not None and self._pool is not None, "use ImageFetcher as an async context manager"
        async with self._sem:
            res = await self.http.fetch(url)
            if res.status != st.SUCCESS:
                out = ImageResult(res.status, res.error)
            else:
                body = res.body or b""
                if expected_hash:
                    import hashlib

                    got = hashlib.new(hash_type, body).hexdigest()
                    if got.lower() != str(expected_hash).strip().lower():
                        out = ImageResult(
                            st.HASH_MISMATCH, f"{hash_type} of the body is {got}, expected {expected_hash}"
                        )
                        return out
                loop = asyncio.get_running_loop()
                try:
                    out = await loop.run_in_executor(self._pool, process_image, body, self.resize_config)
                except Exception as e:  # pragma: no cover - process_image maps its own errors
                    out = ImageResult(st.INTERNAL_ERROR, f"{type(e).__name__}: {e} while decoding {url!r}")
        if key is not None and self.cache.cacheable(out):  # type: ignore[union-attr]
            await asyncio.get_running_loop().run_in_executor(self._pool, self.cache.put, key, out)  # type: ignore[union-attr]
        return out

    async def process_many(
        self, urls: Sequence[Any], hashes: Optional[Sequence[Optional[str]]] = None, hash_type: str = "sha256"
    ) -> list[ImageResult]:
        """Process ``urls`` concurrently; results are in input order."""
        hs = hashes if hashes is not None else [None] * len(urls)
        return list(await asyncio.gather(*(self.process(u, h, hash_type) for u, h in zip(urls, hs))))


def split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Split keyword options into FetchConfig and ResizeConfig fields; unknown names raise FetchError."""
    from dataclasses import fields

    f_names = {f.name for f in fields(FetchConfig)}
    r_names = {f.name for f in fields(ResizeConfig)}
    fk, rk = {}, {}
    for k, v in kwargs.items():
        if k in f_names:
            fk[k] = v
        elif k in r_names:
            rk[k] = v
        else:
            raise FetchError(
                f"unknown image option {k!r}; FetchConfig takes {sorted(f_names)}, ResizeConfig takes {sorted(r_names)}"
            )
    return fk, rk


def make_configs(
    fetch: Optional[FetchConfig] = None, resize: Optional[ResizeConfig] = None, **options: Any
) -> tuple[FetchConfig, ResizeConfig]:
    """Build both configs from optional bases plus keyword overrides."""
    from dataclasses import replace

    fk, rk = split_kwargs(options)
    fetch = replace(fetch or FetchConfig(), **fk) if fk or fetch is None else fetch
    resize = replace(resize or ResizeConfig(), **rk) if rk or resize is None else resize
    return fetch, resize


__all__ = [
    "FetchConfig",
    "AddressPolicy",
    "AllowRule",
    "METADATA_NETWORKS",
    "parse_allow_list",
    "parse_allow_rule",
    "GuardedResolver",
    "StaticResolver",
    "BlockedAddressError",
    "HttpFetcher",
    "ImageFetcher",
    "FetchResult",
    "check_url",
    "robots_optout",
    "make_configs",
    "split_kwargs",
]

"""A local Hugging Face Hub-compatible HTTP server for tests and the demo (loopback only).

It speaks the subset of the Hub HTTP API that ``huggingface_hub`` 2.x and ``datasets`` 5.x use to
create a repo, upload through the classic LFS path (``HF_HUB_DISABLE_XET=1``), list and inspect
files, validate a card's YAML, commit (ndjson), and download with ``HEAD``/``GET`` + ``Range``.
Repos live on disk with a real commit history: every commit is a new revision and files stay
downloadable by any older revision. Errors look like the Hub's (``X-Error-Code`` /
``X-Error-Message`` headers + a JSON ``{"error": ...}`` body), private repos answer 401 without
a valid token, writes outside your namespace answer 403, and failures can be injected
(:meth:`HubServer.inject_failure`) to test resumable uploads.

Usage::

    with HubServer(tokens={"hf_test_token": "alice"}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url        # before importing huggingface_hub, or
        configure_client(hub.url)                  # in a process that already imported it
        ...

Run it alone with ``python -m laion_hf.testing.hub_server --root DIR --port 8765``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from laion_hf.hub.client import (
    configure_client,  # re-exported: tests import it from here
)

__all__ = ["HubServer", "configure_client", "DEFAULT_TEST_TOKEN", "DEFAULT_TEST_USER"]

DEFAULT_TEST_TOKEN = "hf_laionhfLocalTestToken0000000000"
DEFAULT_TEST_USER = "laion-hf"

_REPO_TYPES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PREFIX_TO_TYPE = {"datasets": "dataset", "spaces": "space"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_LFS_EXTENSIONS = {
    ".parquet",
    ".arrow",
    ".tar",
    ".npy",
    ".npz",
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".gif",
    ".bin",
    ".safetensors",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".zip",
    ".gz",
    ".zst",
    ".lz4",
    ".msgpack",
    ".onnx",
    ".pkl",
    ".pickle",
    ".tflite",
    ".mp3",
    ".wav",
    ".mp4",
    ".avi",
}
_LFS_MIN_SIZE = 10 * 1024 * 1024
_GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
# Image files - uncompressed
*.png filter=lfs diff=lfs merge=lfs -text
# Image files - compressed
*.jpg filter=lfs diff=lfs merge=lfs -text
*.jpeg filter=lfs diff=lfs merge=lfs -text
*.webp filter=lfs diff=lfs merge=lfs -text
"""


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class _HubHTTPError(Exception):
    """Raised inside a handler; turned into a Hub-style error response."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class _Fault:
    route: str
    nth: int
    status: int
    times: int
    seen: int = 0
    fired: int = 0


@dataclass
class _Repo:
    """One repository on disk: ``meta.json``, ``refs.json``, ``commits/<sha>.json``, ``objects/<sha256>``."""

    path: Path
    repo_type: str
    repo_id: str

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        _atomic_write(self.path / "meta.json", json.dumps(meta).encode())

    @property
    def refs(self) -> dict[str, str]:
        return json.loads((self.path / "refs.json").read_text())

    def write_refs(self, refs: dict[str, str]) -> None:
        _atomic_write(self.path / "refs.json", json.dumps(refs, indent=1).encode())

    def commit(self, sha: str) -> dict[str, Any]:
        return json.loads((self.path / "commits" / f"{sha}.json").read_text())

    def has_commit(self, sha: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{40}", sha)) and (self.path / "commits" / f"{sha}.json").exists()

    def resolve(self, revision: str) -> str:
        """Return the commit sha a branch, PR ref or commit id points to (404 RevisionNotFound)."""
        refs = self.refs
        if revision in refs:
            return refs[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in refs:
            return refs[revision[len("refs/heads/") :]]
        if self.has_commit(revision):
            return revision
        raise _HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def object_path(self, sha256: str) -> Path:
        return self.path / "objects" / sha256


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class HubServer:
    """A threaded, loopback-only Hub-compatible server storing repos under ``root``.

    Args:
        root: folder for repos (a temporary folder, removed on :meth:`stop`, when ``None``).
        port: TCP port on 127.0.0.1 (0 picks a free one).
        tokens: access token -> user name. Requests with any other ``Authorization`` token get
            401 ``Invalid credentials in Authorization header``. Defaults to
            ``{DEFAULT_TEST_TOKEN: DEFAULT_TEST_USER}``.
        orgs: user name -> organisations the user may write to (besides their own namespace).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        port: int = 0,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="laion-hf-hub-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens) if tokens is not None else {DEFAULT_TEST_TOKEN: DEFAULT_TEST_USER}
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._route_counts: dict[str, int] = {}
        self._secret = secrets.token_bytes(16)
        #: every request served: dicts with ``method``, ``route``, ``path`` and ``status``
        #: (headers are never recorded, so no token ever lands here).
        self.requests: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (use it as ``HF_ENDPOINT``)."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not running; call start() first")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> "HubServer":
        """Start serving in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="laion-hf-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (and delete the temporary root folder if this server created it)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- test helpers
    def inject_failure(self, route: str, nth: int = 1, status: int = 500, times: int = 1) -> None:
        """Answer the ``nth`` next request to ``route`` (and ``times - 1`` more) with ``status``.

        Routes: ``create``, ``info``, ``tree``, ``paths_info``, ``preupload``, ``validate_yaml``,
        ``lfs_batch``, ``lfs_upload``, ``lfs_verify``, ``commit``, ``resolve``, ``commits``,
        ``refs``, ``branch``. Counting starts now. Note that huggingface_hub retries 5xx on
        ``preupload``, ``lfs_batch`` and ``lfs_upload`` (up to 5 times), not on ``commit``.
        """
        with self._lock:
            self._faults.append(_Fault(route, nth, status, times))

    def clear_failures(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, route: str, status: int | None = None) -> int:
        """How many requests to ``route`` were served (optionally only those with ``status``)."""
        return sum(1 for r in list(self.requests) if r["route"] == route and (status is None or r["status"] == status))

    def _check_fault(self, route: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.route != route or fault.fired >= fault.times:
                    continue
                fault.seen += 1
                if fault.seen >= fault.nth:
                    fault.fired += 1
                    return fault
        return None

    # ----------------------------------------------------------------- repo storage
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        parts = repo_id.split("/")
        if (
            repo_type not in _REPO_TYPES
            or len(parts) != 2
            or not all(_NAME_RE.match(p) for p in parts)
            or ".." in repo_id
        ):
            return None  # never a path outside root
        d = self._repo_dir(repo_type, repo_id)
        return _Repo(d, repo_type, repo_id) if (d / "meta.json").exists() else None

    def create_repo(self, repo_type: str, repo_id: str, private: bool, owner: str) -> _Repo:
        """Create a repo with an initial commit holding ``.gitattributes`` (as the Hub does)."""
        d = self._repo_dir(repo_type, repo_id)
        (d / "commits").mkdir(parents=True, exist_ok=True)
        (d / "objects").mkdir(parents=True, exist_ok=True)
        repo = _Repo(d, repo_type, repo_id)
        now = _now_iso()
        repo.write_refs({})
        first = self._make_commit(
            repo,
            None,
            "initial commit",
            "",
            owner,
            {".gitattributes": self._store_blob(repo, _GITATTRIBUTES, lfs=False)},
            now,
        )
        repo.write_refs({"main": first})
        repo.write_meta({"private": private, "owner": owner, "createdAt": now})
        return repo

    def _store_blob(self, repo: _Repo, data: bytes, lfs: bool) -> dict[str, Any]:
        sha256 = hashlib.sha256(data).hexdigest()
        p = repo.object_path(sha256)
        if not p.exists():
            _atomic_write(p, data)
        return self._entry(sha256, len(data), lfs, data if not lfs else None)

    @staticmethod
    def _entry(sha256: str, size: int, lfs: bool, data: bytes | None) -> dict[str, Any]:
        if lfs:
            pointer = _lfs_pointer(sha256, size)
            return {
                "sha256": sha256,
                "size": size,
                "lfs": True,
                "oid": _git_blob_sha1(pointer),
                "pointerSize": len(pointer),
            }
        assert data is not None
        return {"sha256": sha256, "size": size, "lfs": False, "oid": _git_blob_sha1(data)}

    def _make_commit(
        self,
        repo: _Repo,
        parent: str | None,
        title: str,
        description: str,
        author: str,
        changes: dict[str, dict[str, Any] | None],
        date: str | None = None,
    ) -> str:
        tree: dict[str, dict[str, Any]] = dict(repo.commit(parent)["tree"]) if parent else {}
        for path, entry in changes.items():
            if entry is None:
                tree.pop(path, None)
            else:
                tree[path] = dict(entry)
        date = date or _now_iso()
        body = {
            "parents": [parent] if parent else [],
            "title": title,
            "message": description,
            "author": author,
            "date": date,
            "tree": tree,
        }
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode() + secrets.token_bytes(8)).hexdigest()
        for path in changes:
            if changes[path] is not None:
                tree[path]["lastCommit"] = sha
        body["id"] = sha
        _atomic_write(repo.path / "commits" / f"{sha}.json", json.dumps(body).encode())
        return sha

    def commit_history(self, repo_type: str, repo_id: str, revision: str = "main") -> list[dict[str, Any]]:
        """Commits reachable from ``revision``, newest first (``id``, ``title``, ``date``, ``files``)."""
        repo = self.get_repo(repo_type, repo_id)
        if repo is None:
            raise KeyError(repo_id)
        out, sha = [], repo.resolve(revision)
        while sha:
            c = repo.commit(sha)
            out.append({"id": sha, "title": c["title"], "date": c["date"], "files": sorted(c["tree"])})
            sha = c["parents"][0] if c["parents"] else None
        return out

    # ----------------------------------------------------------------- auth
    def user_for(self, authorization: str | None) -> str | None:
        """The user a ``Bearer`` token belongs to; ``None`` without a token; 401 for a bad one."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _HubHTTPError(401, "Invalid credentials in Authorization header")
        for known, user in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        raise _HubHTTPError(401, "Invalid credentials in Authorization header")

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or namespace in self.orgs.get(user, []))

    def sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "/".join(parts).encode(), hashlib.sha256).hexdigest()[:32]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "laion-hf-hub/0.1"
    hub: HubServer  # set on the bound subclass

    # silence the default stderr access log (and never log headers)
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    # ----------------------------------------------------------------- plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _iter_body(self, chunk_size: int = 1 << 20):
        """Yield the request body in chunks (Content-Length or chunked transfer encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(chunk_size, remaining))
                    if not chunk:
                        raise _HubHTTPError(400, "Truncated request body")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(chunk_size, remaining))
                if not chunk:
                    raise _HubHTTPError(400, "Truncated request body")
                remaining -= len(chunk)
                yield chunk

    def _read_body(self) -> bytes:
        if getattr(self, "_body", None) is None:
            self._body = b"".join(self._iter_body())
        return self._body

    def _json_body(self) -> Any:
        raw = self._read_body()
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return {k: v for k, v in parse_qs(raw.decode()).items()}
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise _HubHTTPError(400, "Request body is not valid JSON") from None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _send_error(self, err: _HubHTTPError) -> None:
        one_line = " ".join(err.message.split()).encode("latin-1", "replace").decode("latin-1")
        headers = {"X-Error-Message": one_line}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json(err.status, {"error": err.message}, headers)

    def _dispatch(self, method: str) -> None:
        self._status = 0
        self._body = None
        self._streamed = False
        self._route = "unknown"
        split = urlsplit(self.path)
        self._query = parse_qs(split.query)
        raw_parts = [p for p in split.path.split("/") if p != ""]
        try:
            # drain the request body first so keep-alive connections stay in sync (LFS object
            # uploads are streamed to disk by their handler instead)
            self._streamed = method == "PUT" and split.path.startswith("/_lfs/")
            if method in ("POST", "PUT", "DELETE") and not self._streamed:
                self._read_body()
            self._user = self.hub.user_for(self.headers.get("Authorization"))
            self._route_and_call(method, raw_parts)
        except _HubHTTPError as err:
            if self._streamed and self._body is None:
                self.close_connection = True  # the unread upload body would desync the connection
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - a server bug: answer 500 and keep serving
            if self._streamed and self._body is None:
                self.close_connection = True
            self._send_error(_HubHTTPError(500, f"Internal error: {type(exc).__name__}: {exc}"))
        finally:
            self.hub.requests.append(
                {"method": method, "route": self._route, "path": split.path, "status": self._status}
            )

    def _fault(self, route: str) -> None:
        self._route = route
        fault = self.hub._check_fault(route)
        if fault is not None:
            raise _HubHTTPError(fault.status, f"Injected failure on {route} (test server)")

    # ----------------------------------------------------------------- routing
    def _enter(self, route: str, fault: bool) -> None:
        """Name the route (for ``hub.requests``); with ``fault``, fail here when a fault is injected on it."""
        if fault:
            self._fault(route)
        else:
            self._route = route

    def _route_and_call(self, method: str, parts: list[str]) -> None:
        q = [unquote(p) for p in parts]
        for prefix, route_method, route, fault, handler in _TOP_ROUTES:
            if q[: len(prefix)] == list(prefix) and method == route_method:
                self._enter(route, fault)
                return handler(self)
        if len(q) >= 4 and q[0] == "api" and q[1] in ("models", "datasets", "spaces"):
            return self._route_repo_api(method, parts, q)
        if q[:1] == ["_lfs"] and len(q) == 6 and self._route_lfs(method, q):
            return None
        return self._route_repo_files(method, parts, q)

    def _route_repo_api(self, method: str, parts: list[str], q: list[str]) -> None:
        """``/api/{models,datasets,spaces}/{ns}/{name}[/{op}/{rev}/{path}]``."""
        repo_type = q[1][:-1]
        repo_id = f"{q[2]}/{q[3]}"
        rest, raw_rest = q[4:], parts[4:]
        if not rest and method == "GET":
            self._fault("info")
            return self._info(repo_type, repo_id, "main")
        if rest and rest[0].startswith("xet-") and rest[0].endswith("-token"):
            self._route = "xet"
            raise _HubHTTPError(
                501,
                "This local Hub-compatible server speaks the LFS upload path only, not Xet: "
                "set HF_HUB_DISABLE_XET=1 before importing huggingface_hub (or call "
                "laion_hf.testing.hub_server.configure_client)",
            )
        op = rest[0] if rest else ""
        arg = unquote(raw_rest[1]) if len(raw_rest) > 1 else "main"
        tail = "/".join(unquote(p) for p in raw_rest[2:])
        entry = _REPO_OPS.get((op, method))
        if entry is None:
            raise _HubHTTPError(404, f"Unknown API route /{'/'.join(parts)}")
        route, fault, handler = entry
        self._enter(route, fault)
        return handler(self, method, repo_type, repo_id, arg, tail)

    def _route_lfs(self, method: str, q: list[str]) -> bool:
        """``/_lfs/{type}/{ns}/{name}/{upload,verify}/{oid}``; False when neither matches."""
        repo_type, repo_id, oid = q[1], f"{q[2]}/{q[3]}", q[5]
        if q[4] == "upload" and method == "PUT":
            self._fault("lfs_upload")
            self._lfs_put(repo_type, repo_id, oid)
            return True
        if q[4] == "verify" and method == "POST":
            self._fault("lfs_verify")
            self._lfs_verify(repo_type, repo_id, oid)
            return True
        return False

    def _route_repo_files(self, method: str, parts: list[str], q: list[str]) -> None:
        """``/{prefix}{ns}/{name}.git/info/lfs/objects/batch`` and ``/{prefix}{ns}/{name}/resolve/{rev}/{path}``."""
        repo_type = "model"
        body = q
        raw = parts
        if q and q[0] in _PREFIX_TO_TYPE:
            repo_type, body, raw = _PREFIX_TO_TYPE[q[0]], q[1:], parts[1:]
        if len(body) >= 6 and body[1].endswith(".git") and body[2:6] == ["info", "lfs", "objects", "batch"]:
            if method == "POST":
                self._fault("lfs_batch")
                return self._lfs_batch(repo_type, f"{body[0]}/{body[1][:-4]}")
        if len(body) >= 5 and body[2] == "resolve" and method in ("GET", "HEAD"):
            self._fault("resolve")
            path = "/".join(unquote(p) for p in raw[4:])
            return self._resolve(method, repo_type, f"{body[0]}/{body[1]}", unquote(raw[3]), path)
        raise _HubHTTPError(404, f"Not found: /{'/'.join(parts)}")

    def _agent_harnesses(self) -> None:
        self._send_json(200, {"standardEnvVars": [], "harnesses": {}})

    # ----------------------------------------------------------------- access control
    def _repo_for_read(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.hub.get_repo(repo_type, repo_id)
        visible = repo is not None and (
            not repo.meta["private"] or self.hub.can_write(self._user, repo_id.split("/")[0])
        )
        if not visible:
            # as the Hub: anonymous callers get 401, authenticated ones 404 (a private repo's existence is not leaked)
            raise _HubHTTPError(401 if self._user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str) -> _Repo:
        if self._user is None:
            raise _HubHTTPError(401, "You must be authenticated to write to a repository", "RepoNotFound")
        repo = self._repo_for_read(repo_type, repo_id)
        if not self.hub.can_write(self._user, repo_id.split("/")[0]):
            raise _HubHTTPError(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo

    # ----------------------------------------------------------------- endpoints
    def _whoami(self) -> None:
        self._route = "whoami"
        if self._user is None:
            raise _HubHTTPError(401, "Invalid credentials in Authorization header")
        orgs = [{"name": o, "type": "org"} for o in self.hub.orgs.get(self._user, [])]
        self._send_json(
            200,
            {
                "type": "user",
                "name": self._user,
                "fullname": self._user,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "laion-hf-test", "role": "write"}},
            },
        )

    def _validate_yaml(self) -> None:
        import yaml

        body = self._json_body()
        content = body.get("content", "") if isinstance(body, dict) else ""
        if not content.startswith("---"):
            return self._send_json(200, {"warnings": []})
        m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if m is None:
            raise _HubHTTPError(400, "Invalid metadata in README.md: unterminated YAML front matter")
        try:
            meta = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as e:
            raise _HubHTTPError(400, f"Invalid metadata in README.md: {str(e).splitlines()[0]}") from None
        if not isinstance(meta, dict):
            raise _HubHTTPError(400, "Invalid metadata in README.md: YAML front matter must be a mapping")
        errors = []
        for key in ("tags", "task_categories", "size_categories", "language"):
            if key in meta and not isinstance(meta[key], (list, str)):
                errors.append(f'"{key}" must be a list of strings')
        if "license" in meta and not isinstance(meta["license"], (str, list)):
            errors.append('"license" must be a string')
        for cfg in meta.get("configs", []) or []:
            if not isinstance(cfg, dict) or "config_name" not in cfg:
                errors.append('"configs" items need a "config_name"')
        if errors:
            raise _HubHTTPError(400, "Invalid metadata in README.md.\n- " + "\n- ".join(errors))
        self._send_json(200, {"warnings": []})

    def _create(self) -> None:
        body = self._json_body()
        if self._user is None:
            raise _HubHTTPError(401, "You must be authenticated to create a repository")
        name = body.get("name") or ""
        namespace = body.get("organization") or self._user
        repo_type = body.get("type") or "model"
        if repo_type not in _REPO_TYPES:
            raise _HubHTTPError(400, f"Invalid repo type {repo_type!r}")
        if not _NAME_RE.match(name) or not _NAME_RE.match(namespace) or ".." in name:
            raise _HubHTTPError(400, f"Invalid repo name {namespace}/{name}")
        if not self.hub.can_write(self._user, namespace):
            raise _HubHTTPError(
                403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
            )
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.url}/{_REPO_TYPES[repo_type]}{repo_id}"
        with self.hub._lock:
            if self.hub.get_repo(repo_type, repo_id) is not None:
                msg = f"You already created this {repo_type} repo"
                return self._send_json(409, {"error": msg, "url": url}, {"X-Error-Message": msg})
            self.hub.create_repo(repo_type, repo_id, private, self._user)
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete(self) -> None:
        body = self._json_body()
        namespace = body.get("organization") or self._user or ""
        repo_type = body.get("type") or "model"
        repo_id = f"{namespace}/{body.get('name')}"
        self._repo_for_write(repo_type, repo_id)
        shutil.rmtree(self.hub._repo_dir(repo_type, repo_id))
        self._send_json(200, {})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        body = self._json_body()
        meta = repo.meta
        if "private" in body:
            meta["private"] = bool(body["private"])
        if "visibility" in body:
            meta["private"] = body["visibility"] == "private"
        repo.write_meta(meta)
        self._send_json(200, {})

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        sha = repo.resolve(revision)
        commit = repo.commit(sha)
        meta = repo.meta
        card_data = None
        readme = commit["tree"].get("README.md")
        if readme is not None:
            card_data = _card_data(repo.object_path(readme["sha256"]).read_bytes())
        self._send_json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": meta["private"],
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": meta["createdAt"],
                "lastModified": commit["date"],
                "cardData": card_data,
                "siblings": [self._sibling(p, e) for p, e in sorted(commit["tree"].items())],
                "usedStorage": sum(e["size"] for e in commit["tree"].values()),
            },
        )

    def _sibling(self, path: str, e: dict[str, Any]) -> dict[str, Any]:
        if self._query.get("blobs", ["false"])[0].lower() not in ("1", "true"):
            return {"rfilename": path}
        out: dict[str, Any] = {"rfilename": path, "size": e["size"], "blobId": e["oid"]}
        if e["lfs"]:
            out["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": e["pointerSize"]}
        return out

    def _file_info(self, path: str, e: dict[str, Any], expand: bool, repo: _Repo) -> dict[str, Any]:
        info: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["lfs"]:
            info["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointerSize"]}
        if expand and e.get("lastCommit"):
            c = repo.commit(e["lastCommit"])
            info["lastCommit"] = {"id": e["lastCommit"], "title": c["title"], "date": c["date"]}
            info["securityFileStatus"] = {"status": "safe"}
        return info

    @staticmethod
    def _folder_info(path: str, tree: dict[str, Any]) -> dict[str, Any]:
        prefix = path + "/"
        oid = hashlib.sha1(
            "".join(sorted(f"{p}{e['oid']}" for p, e in tree.items() if p.startswith(prefix))).encode()
        ).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        sha = repo.resolve(revision)
        tree = repo.commit(sha)["tree"]
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self._query.get("expand", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in tree:
            raise _HubHTTPError(404, f"{path} is a file, not a folder", "EntryNotFound")
        files = sorted(p for p in tree if p.startswith(prefix))
        if path and not files:
            raise _HubHTTPError(404, f"Entry not found: {path}", "EntryNotFound")
        out: list[dict[str, Any]] = []
        seen_dirs: set[str] = set()
        for p in files:
            rel = p[len(prefix) :]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                d = prefix + "/".join(parts[:depth])
                if d not in seen_dirs and (recursive or depth == 1):
                    seen_dirs.add(d)
                    out.append(self._folder_info(d, tree))
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                out.append(self._file_info(p, tree[p], expand, repo))
        self._send_json(200, out)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        body = self._json_body()
        paths = body.get("paths", [])
        if isinstance(paths, str):
            paths = [paths]
        expand = str(
            (body.get("expand") or ["False"])[0] if isinstance(body.get("expand"), list) else body.get("expand")
        ).lower() in ("1", "true")
        tree = repo.commit(repo.resolve(revision))["tree"]
        out = []
        for p in paths:
            p = p.strip("/")
            if p in tree:
                out.append(self._file_info(p, tree[p], expand, repo))
            elif any(k.startswith(p + "/") for k in tree):
                out.append(self._folder_info(p, tree))
        self._send_json(200, out)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        body = self._json_body()
        tree: dict[str, Any] = {}
        if not self._query.get("create_pr"):
            tree = repo.commit(repo.resolve(revision))["tree"]
        else:
            repo.resolve("main")
        files = []
        for f in body.get("files", []):
            path = f["path"]
            sample = base64.b64decode(f.get("sample", ""))
            lfs = (
                Path(path).suffix.lower() in _LFS_EXTENSIONS
                or int(f.get("size", 0)) >= _LFS_MIN_SIZE
                or b"\x00" in sample
            )
            remote = tree.get(path)
            oid = None
            if remote is not None:
                oid = remote["sha256"] if remote["lfs"] else remote["oid"]
                lfs = remote["lfs"] if remote["lfs"] == lfs else lfs
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json(200, {"files": files, "commitOid": repo.refs.get("main")})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise _HubHTTPError(400, "Only the 'upload' LFS operation is supported by this server")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append(
                    {
                        "oid": oid,
                        "size": size or 0,
                        "error": {"code": 422, "message": "oid must be a sha256 hex digest"},
                    }
                )
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not repo.object_path(oid).exists():
                sig = self.hub.sign(repo_type, repo_id, oid)
                base = f"{self.hub.url}/_lfs/{repo_type}/{quote(repo_id)}"
                item["actions"] = {
                    "upload": {"href": f"{base}/upload/{oid}?size={size}&sig={sig}", "expires_in": 3600},
                    "verify": {"href": f"{base}/verify/{oid}?sig={sig}", "header": {}},
                }
            objects.append(item)
        self._send_json(
            200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def _check_sig(self, repo_type: str, repo_id: str, oid: str) -> None:
        sig = self._query.get("sig", [""])[0]
        if not hmac.compare_digest(sig, self.hub.sign(repo_type, repo_id, oid)):
            raise _HubHTTPError(403, "Invalid or expired upload signature")

    def _lfs_put(self, repo_type: str, repo_id: str, oid: str) -> None:
        self._check_sig(repo_type, repo_id, oid)
        repo = self.hub.get_repo(repo_type, repo_id)
        if repo is None:
            raise _HubHTTPError(404, "Repository not found", "RepoNotFound")
        p = repo.object_path(oid)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".upload-")
        h, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self._iter_body():  # streamed: memory stays flat in the object size
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            self._body = b""
            if h.hexdigest() != oid:
                raise _HubHTTPError(400, f"Uploaded content does not match its sha256 {oid}")
            expected = self._query.get("size", [None])[0]
            if expected is not None and int(expected) != size:
                raise _HubHTTPError(400, f"Uploaded size {size} does not match declared size {expected}")
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str, oid: str) -> None:
        self._check_sig(repo_type, repo_id, oid)
        repo = self.hub.get_repo(repo_type, repo_id)
        if repo is None or not repo.object_path(oid).exists():
            raise _HubHTTPError(404, f"LFS object {oid} not found", "EntryNotFound")
        self._send_json(200, {"success": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubHTTPError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = bool(self._query.get("create_pr"))
        changes: dict[str, dict[str, Any] | None] = {}
        with self.hub._lock:
            head = self._commit_base(repo, revision, header, create_pr)
            tree = repo.commit(head)["tree"]
            for line in lines[1:]:
                self._commit_operation(repo, tree, changes, line.get("key"), line.get("value", {}))
            sha = self.hub._make_commit(
                repo,
                head,
                header.get("summary") or "commit",
                header.get("description") or "",
                self._user or "",
                changes,
            )
            prefix = f"{self.hub.url}/{_REPO_TYPES[repo_type]}{repo_id}"
            pr_url = self._commit_ref(repo, revision, sha, prefix, create_pr)
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{prefix}/commit/{sha}",
                "commitMessage": header.get("summary"),
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            },
        )

    @staticmethod
    def _commit_base(repo: _Repo, revision: str, header: dict[str, Any], create_pr: bool) -> str:
        """The commit the new one goes on (main's head for a pull request); 400 / 412 as the Hub."""
        head = repo.resolve("main" if create_pr else revision)
        if revision not in repo.refs and not create_pr:
            raise _HubHTTPError(400, f"Cannot commit to {revision}: not a branch", "RevisionNotFound")
        parent_commit = header.get("parentCommit")
        if parent_commit and not head.startswith(parent_commit) and not create_pr:
            raise _HubHTTPError(412, f"A commit has happened since {parent_commit}. Please refresh and try again.")
        return head

    def _commit_operation(
        self,
        repo: _Repo,
        tree: dict[str, Any],
        changes: dict[str, dict[str, Any] | None],
        key: Any,
        value: dict[str, Any],
    ) -> None:
        """Add one commit operation (file, lfsFile, deletedFile, deletedFolder) to ``changes``."""
        path = str(value.get("path", "")).strip("/")
        if not path and key != "deletedFolder":
            raise _HubHTTPError(400, f"Missing path in commit operation {key}")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise _HubHTTPError(400, "Only base64 encoded files are supported")
            changes[path] = self.hub._store_blob(repo, base64.b64decode(value["content"]), lfs=False)
        elif key == "lfsFile":
            changes[path] = self._lfs_entry(repo, path, str(value.get("oid", "")))
        elif key == "deletedFile":
            if path not in tree and path not in changes:
                raise _HubHTTPError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            changes[path] = None
        elif key == "deletedFolder":
            gone = [p for p in tree if p.startswith(path + "/") or not path]
            if not gone:
                raise _HubHTTPError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            changes.update({p: None for p in gone})
        else:
            raise _HubHTTPError(400, f"Unknown commit operation {key!r}")

    def _lfs_entry(self, repo: _Repo, path: str, oid: str) -> dict[str, Any]:
        """The tree entry of an ``lfsFile`` operation, whose object must have been uploaded."""
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise _HubHTTPError(400, f"lfsFile {path}: oid must be a sha256 hex digest")
        p = repo.object_path(oid)
        if not p.exists():
            raise _HubHTTPError(
                422,
                f"Your push was rejected because an LFS pointer pointed to a "
                f"file that does not exist. For instance: {path}",
            )
        return self.hub._entry(oid, p.stat().st_size, True, None)

    @staticmethod
    def _commit_ref(repo: _Repo, revision: str, sha: str, prefix: str, create_pr: bool) -> str | None:
        """Point ``revision`` (or a new ``refs/pr/N``) at ``sha``; return the pull request's URL, if any."""
        refs = repo.refs
        pr_url = None
        if create_pr:
            num = 1 + max([int(r.rsplit("/", 1)[1]) for r in refs if r.startswith("refs/pr/")] or [0])
            refs[f"refs/pr/{num}"] = sha
            pr_url = f"{prefix}/discussions/{num}"
        else:
            refs[revision] = sha
        repo.write_refs(refs)
        return pr_url

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        out, sha = [], repo.resolve(revision)
        while sha:
            c = repo.commit(sha)
            out.append(
                {
                    "id": sha,
                    "title": c["title"],
                    "message": c["message"],
                    "date": c["date"],
                    "authors": [{"user": c["author"]}],
                }
            )
            sha = c["parents"][0] if c["parents"] else None
        self._send_json(200, out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        refs = repo.refs
        self._send_json(
            200,
            {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                    for n, s in refs.items()
                    if not n.startswith("refs/")
                ],
                "converts": [],
                "tags": [],
                "pullRequests": [
                    {"name": n, "ref": n, "targetCommit": s} for n, s in refs.items() if n.startswith("refs/pr/")
                ],
            },
        )

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> None:
        repo = self._repo_for_write(repo_type, repo_id)
        with self.hub._lock:
            refs = repo.refs
            if method == "DELETE":
                if branch not in refs or branch == "main":
                    raise _HubHTTPError(
                        404 if branch not in refs else 403,
                        f"Cannot delete branch {branch}",
                        "RevisionNotFound" if branch not in refs else None,
                    )
                del refs[branch]
            else:
                if branch in refs:
                    raise _HubHTTPError(409, f"Reference already exists: refs/heads/{branch}")
                start = self._json_body().get("startingPoint") or "main"
                refs[branch] = repo.resolve(start)
            repo.write_refs(refs)
        self._send_json(200, {})

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        sha = repo.resolve(revision)
        tree = repo.commit(sha)["tree"]
        entry = tree.get(path)
        if entry is None:
            return self._send_entry_not_found(method, sha)
        size = entry["size"]
        etag = f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'
        headers = {"X-Repo-Commit": sha, "ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=0"}
        if entry["lfs"]:
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = str(size)
        start, end, status = 0, size - 1, 200
        span = self._requested_range(size)
        if span is not None:
            start, end = span
            if start >= size or start > end:
                return self._send_unsatisfiable(size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD" or length == 0:
            return None
        self._send_file_range(repo.object_path(entry["sha256"]), start, length)
        return None

    def _send_entry_not_found(self, method: str, sha: str) -> None:
        """404 EntryNotFound with the commit the lookup was made on (X-Repo-Commit), as the Hub."""
        err = _HubHTTPError(404, "Entry not found", "EntryNotFound")
        self._status = 404
        self.send_response(404)
        body = json.dumps({"error": err.message}).encode()
        for k, v in {
            "Content-Type": "application/json",
            "X-Error-Code": "EntryNotFound",
            "X-Error-Message": err.message,
            "X-Repo-Commit": sha,
            "Content-Length": str(len(body)),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _requested_range(self, size: int) -> tuple[int, int] | None:
        """``(start, end)`` of the Range header (end clipped to the file), None without one; 416 if malformed."""
        rng = self.headers.get("Range")
        if not rng:
            return None
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m is None or (m.group(1) == "" and m.group(2) == ""):
            raise _HubHTTPError(416, f"Invalid Range header {rng!r}")
        if m.group(1) == "":
            return max(0, size - int(m.group(2))), size - 1
        start = int(m.group(1))
        return start, min(int(m.group(2)), size - 1) if m.group(2) else size - 1

    def _send_unsatisfiable(self, size: int) -> None:
        self._status = 416
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_file_range(self, blob: Path, start: int, length: int) -> None:
        with open(blob, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


#: ``/api/...`` routes outside a repo: (path prefix, method, route name, fault-injectable, handler)
_TOP_ROUTES = (
    (("api", "whoami-v2"), "GET", "whoami", False, _Handler._whoami),
    (("api", "agent-harnesses"), "GET", "agent_harnesses", False, _Handler._agent_harnesses),
    (("api", "validate-yaml"), "POST", "validate_yaml", True, _Handler._validate_yaml),
    (("api", "repos", "create"), "POST", "create", True, _Handler._create),
    (("api", "repos", "delete"), "DELETE", "delete", False, _Handler._delete),
)

#: ``/api/{type}s/{ns}/{name}/{op}/{rev}/{tail}`` routes: (op, method) -> (route name, fault-injectable,
#: handler(server, method, repo_type, repo_id, rev, tail))
_REPO_OPS = {
    ("revision", "GET"): ("info", True, lambda h, m, t, r, rev, tail: h._info(t, r, rev)),
    ("tree", "GET"): ("tree", True, lambda h, m, t, r, rev, tail: h._tree(t, r, rev, tail)),
    ("paths-info", "POST"): ("paths_info", True, lambda h, m, t, r, rev, tail: h._paths_info(t, r, rev)),
    ("preupload", "POST"): ("preupload", True, lambda h, m, t, r, rev, tail: h._preupload(t, r, rev)),
    ("commit", "POST"): ("commit", True, lambda h, m, t, r, rev, tail: h._commit(t, r, rev)),
    ("commits", "GET"): ("commits", True, lambda h, m, t, r, rev, tail: h._commits(t, r, rev)),
    ("refs", "GET"): ("refs", True, lambda h, m, t, r, rev, tail: h._refs(t, r)),
    ("branch", "POST"): ("branch", True, lambda h, m, t, r, rev, tail: h._branch(m, t, r, rev)),
    ("branch", "DELETE"): ("branch", True, lambda h, m, t, r, rev, tail: h._branch(m, t, r, rev)),
    ("settings", "PUT"): ("settings", False, lambda h, m, t, r, rev, tail: h._settings(t, r)),
}


def _card_data(readme: bytes) -> dict[str, Any] | None:
    import yaml

    m = re.match(rb"^---\s*\n(.*?)\n---\s*(\n|$)", readme, re.S)
    if m is None:
        return None
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground (``python -m laion_hf.testing.hub_server``)."""
    import argparse

    p = argparse.ArgumentParser(description="Local Hub-compatible server (loopback only)")
    p.add_argument("--root", default=None, help="folder for repos (default: a temporary folder)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user", default=DEFAULT_TEST_USER)
    args = p.parse_args(argv)
    token = os.environ.get("LAION_HF_TEST_HUB_TOKEN", DEFAULT_TEST_TOKEN)
    hub = HubServer(args.root, args.port, tokens={token: args.user}).start()
    print(
        f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 (user {args.user}; token from "
        "$LAION_HF_TEST_HUB_TOKEN or the built-in test token)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

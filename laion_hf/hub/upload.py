"""Push a shard folder to the Hub with huggingface_hub, resumably and without leaking the token.

``push(DIR, "org/name")`` creates the dataset repo if needed (``create_repo(exist_ok=True)``),
compares every local file with the remote one (``paths-info``: LFS sha256 or git blob id) and
commits only what is missing or changed, shards first in several commits, then ``stats.json``,
the histogram image and ``README.md`` last, so an interrupted push leaves a repo whose card never
describes shards that are not there, and re-running it uploads only what is still missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from laion_hf.errors import HubError, ShardError
from laion_hf.hub.card import README, card_files, is_generated
from laion_hf.shards.writer import STATS_FILENAME, file_sha256, read_stats

logger = logging.getLogger("laion_hf.hub")

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_METADATA_FILES = (STATS_FILENAME, README)


def redact(text: str, secrets: list[str | None] = ()) -> str:  # type: ignore[assignment]
    """``text`` with every given secret and anything shaped like a Hub token replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _TOKEN_RE.sub("hf_***", text)


class _RedactFilter(logging.Filter):
    """Scrub tokens from log records of laion_hf and huggingface_hub while a push runs."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        clean = redact(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


@dataclass
class PushResult:
    """What :func:`push` did (or, with ``dry_run``, would do)."""

    repo_id: str
    url: str
    revision: str
    to_upload: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    pr_url: str | None = None
    dry_run: bool = False
    bytes_to_upload: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: ``token``, else ``HF_TOKEN``, else the user's huggingface_hub login."""
    if token:
        return token
    env = os.environ.get("HF_TOKEN")
    if env:
        return env
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # pragma: no cover - unreadable token file
        return None


def validate_repo_id(repo_id: str) -> str:
    """Raise :class:`HubError` unless ``repo_id`` is a valid ``namespace/name`` dataset id."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate

    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id):
        raise HubError(
            f"invalid repo id {repo_id!r}: use 'namespace/name' (letters, digits, '-', '_', '.'), "
            "e.g. 'my-org/laion-aesthetic-subset'"
        )
    try:
        hf_validate(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid repo id {repo_id!r}: {e}") from None
    return repo_id


def _local_files(folder: Path) -> list[str]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in Path(rel).parts):
            continue  # hidden files, temp shards (.tmp-*), .cache, .git
        out.append(rel)
    return out


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _chunks(items: list[str], sizes: dict[str, int], max_files: int, max_bytes: int) -> Iterator[list[str]]:
    batch: list[str] = []
    total = 0
    for p in items:
        if batch and (len(batch) >= max_files or total + sizes[p] > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(p)
        total += sizes[p]
    if batch:
        yield batch


def _hub_error(e: BaseException, action: str, repo_id: str, secrets: list[str]) -> HubError:
    """A :class:`HubError` with the status, the server's message and what to do; no token in it."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, HfHubHTTPError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        e = cause
    status = None
    server = ""
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        server = e.server_message or ""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    first = f"{type(e).__name__}: {first}" if not isinstance(e, HfHubHTTPError) else first
    if isinstance(e, RevisionNotFoundError):
        hint = "the revision does not exist on the repo"
    elif status == 401 and not isinstance(e, RepositoryNotFoundError):
        # huggingface_hub raises RepositoryNotFoundError for a 401 about a repo, and a plain
        # HfHubHTTPError when the Hub rejects the token itself ("Invalid credentials ...")
        hint = (
            "the Hub rejected the token (invalid, expired or revoked): set HF_TOKEN (or run "
            "`hf auth login`) with a valid write token"
        )
    elif isinstance(e, RepositoryNotFoundError):
        hint = (
            "the repo does not exist or is private and the token cannot read it: set HF_TOKEN (or run "
            "`hf auth login`) with a token that has access"
        )
    elif status == 403:
        hint = "the token is not allowed to write there: use a write token of the repo's owner or organisation"
    elif status is not None and status >= 500:
        hint = "server error: re-run the same push to resume (files already committed are not uploaded again)"
    elif "xet-" in str(e) and "-token" in str(e):
        hint = (
            "the endpoint does not speak the Xet upload protocol: set HF_HUB_DISABLE_XET=1 (before importing "
            "huggingface_hub) to upload through the classic LFS path"
        )
    elif status == 412:
        hint = "the branch moved during the push: re-run it"
    else:
        hint = "re-run the push to resume once the cause is fixed"
    msg = f"{action} {repo_id} failed" + (f" (HTTP {status})" if status else "") + f": {server or first}. {hint}"
    return HubError(redact(msg, secrets))


@dataclass
class _Files:
    """The files of one push: on disk in ``folder``, or rendered in memory (the card)."""

    folder: Path
    rendered: dict[str, bytes]
    sha_of: dict[str, str]  # sha256 by path, known from stats.json or computed once
    paths: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paths = sorted(set(_local_files(self.folder)) | set(self.rendered))
        self.sizes = {
            p: len(self.rendered[p]) if p in self.rendered else (self.folder / p).stat().st_size for p in self.paths
        }

    def content(self, p: str) -> bytes | str:
        """What to upload for ``p``: the rendered bytes, or the file's path."""
        return self.rendered[p] if p in self.rendered else str(self.folder / p)

    def sha256(self, p: str) -> str:
        if p not in self.sha_of:
            self.sha_of[p] = (
                hashlib.sha256(self.rendered[p]).hexdigest() if p in self.rendered else file_sha256(self.folder / p)
            )
        return self.sha_of[p]

    def same_as(self, p: str, remote: Any) -> bool:
        """Whether the remote entry ``remote`` (``paths-info``) holds this content."""
        if remote is None or getattr(remote, "size", None) != self.sizes[p]:
            return False
        if remote.lfs is not None:
            return remote.lfs.sha256 == self.sha256(p)
        return remote.blob_id == _git_sha1(self.rendered[p] if p in self.rendered else (self.folder / p).read_bytes())


def _shard_hashes(folder: Path, stats: dict[str, Any]) -> dict[str, str]:
    """sha256 by shard path from stats.json, after checking the shards on disk are those."""
    sha_of: dict[str, str] = {}
    for cfg in stats["configs"].values():
        for s in cfg["shards"]:
            p = folder / s["path"]
            if not p.is_file():
                raise ShardError(
                    f"shard {s['path']} listed in {STATS_FILENAME} is missing from {folder.name}; re-run write_shards"
                )
            if p.stat().st_size != s["bytes"]:
                raise ShardError(
                    f"shard {s['path']} changed since {STATS_FILENAME} was written (size differs); re-run write_shards"
                )
            sha_of[s["path"]] = s["sha256"]
    return sha_of


def _refuse_mixed(api: Any, repo_id: str, fmt: str, revision: str) -> None:
    """A :class:`HubError` when the repo holds shards of the other format."""
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    other_ext = ".tar" if fmt == "parquet" else ".parquet"
    try:
        mixed = [
            e.path
            for e in api.list_repo_tree(
                repo_id, path_in_repo="data", recursive=True, repo_type="dataset", revision=revision
            )
            if e.path.endswith(other_ext)
        ]
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError):
        mixed = []
    if mixed:
        raise HubError(
            f"{repo_id} already holds {other_ext[1:]} shards (e.g. {mixed[0]}) and this folder holds "
            f"{fmt} shards: one repo cannot mix them (datasets infers one builder per repo); push to another repo"
        )


def _compare(api: Any, files: _Files, result: PushResult, revision: str) -> None:
    """Sort ``files`` into ``result.to_upload`` and ``result.unchanged`` by the remote's hashes."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    remote: dict[str, Any] = {}
    try:
        for i in range(0, len(files.paths), 500):
            for info in api.get_paths_info(
                result.repo_id, files.paths[i : i + 500], repo_type="dataset", revision=revision
            ):
                remote[info.path] = info
    except (RepositoryNotFoundError, RevisionNotFoundError):
        if not result.dry_run:
            raise
    for p in files.paths:
        (result.unchanged if files.same_as(p, remote.get(p)) else result.to_upload).append(p)
    result.bytes_to_upload = sum(files.sizes[p] for p in result.to_upload)


def _commit(
    api: Any,
    files: _Files,
    result: PushResult,
    create_pr: bool,
    commit_message: str | None,
    max_files: int,
    max_bytes: int,
) -> None:
    """Commit ``result.to_upload``: shards in batches, then stats, histogram and README last
    (one commit for a pull request)."""
    from huggingface_hub import CommitOperationAdd

    data = [p for p in result.to_upload if p.split("/")[0] not in ("assets",) and p not in _METADATA_FILES]
    meta = [p for p in result.to_upload if p not in data]
    meta.sort(key=lambda p: p == README)  # README last
    batches = (
        [data + meta]
        if create_pr
        else list(_chunks(data, files.sizes, max_files, max_bytes)) + ([meta] if meta else [])
    )
    for i, batch in enumerate(batches, 1):
        ops = []
        for p in batch:
            op = CommitOperationAdd(path_in_repo=p, path_or_fileobj=files.content(p))
            if p in files.sha_of:
                op.upload_info.sha256 = bytes.fromhex(files.sha_of[p])  # known from stats: no re-hash
            ops.append(op)
        msg = commit_message or (
            "Upload dataset card and stats with laion-hf"
            if batch is meta and not create_pr
            else "Upload shards with laion-hf"
        )
        if len(batches) > 1:
            msg = f"{msg} (part {i}/{len(batches)})"
        info = api.create_commit(
            result.repo_id,
            operations=ops,
            commit_message=msg,
            repo_type="dataset",
            revision=None if create_pr else result.revision,
            create_pr=create_pr,
        )
        result.commits.append(info.oid)
        if info.pr_url:
            result.pr_url = info.pr_url
        logger.info("push %s: committed %d file(s) (%d/%d)", result.repo_id, len(batch), i, len(batches))


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    max_files_per_commit: int = 100,
    max_bytes_per_commit: int = 5 * 1000**3,
    render: bool = True,
) -> PushResult:
    """Upload the shard folder ``folder`` (``write_shards`` output) to the dataset repo ``repo_id``.

    Creates the repo (``private`` when asked) and the ``revision`` branch if missing, then commits
    only the files whose content differs from the remote (LFS sha256 / git blob id from
    ``paths-info``): shards in commits of at most ``max_files_per_commit`` files, then the card
    and stats. ``create_pr`` opens one pull request (against ``main``) holding every change.
    ``dry_run`` only lists what would be uploaded. The token comes from ``token``, ``HF_TOKEN`` or
    the huggingface_hub login; it never appears in a log line or an error message. A missing or
    laion-hf-generated ``README.md`` is uploaded re-rendered with ``repo_id`` in its loading
    snippets (with the histogram image); ``folder`` itself is never modified.
    """
    from huggingface_hub import HfApi

    validate_repo_id(repo_id)
    folder = Path(folder)
    stats = read_stats(folder)  # a shard folder without stats is refused here
    if create_pr and revision not in (None, "main"):
        raise HubError("--create-pr opens a pull request against main; do not combine it with --revision")
    branch = revision or "main"
    tok = resolve_token(token)
    secrets = [s for s in (tok, token, os.environ.get("HF_TOKEN")) if s]
    if tok is None and not dry_run:
        raise HubError(f"no Hugging Face token to push {repo_id}: set HF_TOKEN or run `hf auth login`")
    sha_of = _shard_hashes(folder, stats)
    rendered: dict[str, bytes] = {}  # uploaded from memory: the user's folder stays as it is
    if render and (not (folder / README).exists() or is_generated(folder)):
        rendered = card_files(folder, repo_id, secrets=secrets)
    files = _Files(folder, rendered, sha_of)
    api = HfApi(endpoint=endpoint, token=tok if tok else False, library_name="laion-hf")
    result = PushResult(repo_id=repo_id, url=f"{api.endpoint}/datasets/{repo_id}", revision=branch, dry_run=dry_run)
    read_rev = "main" if create_pr else branch

    filt = _RedactFilter(secrets)
    hf_logger = logging.getLogger("huggingface_hub")
    for lg in (logger, hf_logger):
        lg.addFilter(filt)
    action = "checking"
    try:
        if not dry_run:
            action = "creating"
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if branch != "main":
                action = "creating branch for"
                api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
        action = "comparing files with"
        _refuse_mixed(api, repo_id, stats["format"], read_rev)
        _compare(api, files, result, read_rev)
        logger.info(
            "push %s: %d file(s) to upload (%d bytes), %d unchanged",
            repo_id,
            len(result.to_upload),
            result.bytes_to_upload,
            len(result.unchanged),
        )
        if dry_run or not result.to_upload:
            return result
        action = "uploading to"
        _commit(api, files, result, create_pr, commit_message, max_files_per_commit, max_bytes_per_commit)
        return result
    except HubError:
        raise
    except Exception as e:  # HTTP, connection and upload errors: one clear, token-free HubError
        raise _hub_error(e, action, repo_id, secrets) from None
    finally:
        for lg in (logger, hf_logger):
            lg.removeFilter(filt)

"""A loopback stand-in for the Hugging Face Hub: just enough of its HTTP API for the real, unmodified clients.

`LoopbackHub` serves model repos kept in memory from a `ThreadingHTTPServer` on 127.0.0.1 (standard library only;
it never connects anywhere). Each commit keeps the repo's full file tree, so old commits stay downloadable by sha.
Preupload answers "regular" for every file, so files arrive base64-inline in the commit and no client ever tries
LFS or Xet. `use_loopback_hub` points huggingface_hub (0.36, 1.x+), transformers (4.x, 5.x) and peft at it, in-process
(their import-time constants) and for subprocesses (HF_ENDPOINT, HF_HOME, HF_TOKEN).

Endpoints (`{repo}` is `namespace/name`, `{rev}` a branch or a full or short commit sha; * needs a bearer token):

    GET      /api/whoami-v2                          * the token's owner (`user`) and its `orgs`
    POST     /api/repos/create                       * model repos; 409 (with the url) when it exists
    POST     /api/validate-yaml                        accepts any README metadata
    GET      /api/agent-harnesses                      an empty registry (huggingface_hub >= 1.x fetches it once)
    GET      /api/models/{repo}[/revision/{rev}]       sha, siblings (rfilename, size, blobId), dates
    GET      /api/models/{repo}/tree/{rev}[/{path}]    files and folders, `?recursive=true`
    GET      /api/models/{repo}/commits/{rev}          history, newest first
    POST     /api/models/{repo}/branch/{branch}      * from `startingPoint` (default main); 409 when it exists
    POST     /api/models/{repo}/preupload/{rev}      * "regular" for every file, plus the oid of the current one
    POST     /api/models/{repo}/commit/{rev}         * NDJSON lines: header, file (base64), deletedFile, deletedFolder
    HEAD|GET /{repo}/resolve/{rev}/{path}              X-Repo-Commit, quoted ETag (git blob sha1), Content-Length, Range

Errors are JSON `{"error": ...}` with the Hub's X-Error-Message header and, where the clients key on it, X-Error-Code:
RepoNotFound, RevisionNotFound, EntryNotFound (with X-Repo-Commit, as on the Hub), which become RepositoryNotFoundError,
RevisionNotFoundError and EntryNotFoundError. A * call without a token is a 401 (HfHubHTTPError); any non-empty token
is accepted as `user`, who may write to its own namespace and to `orgs` (elsewhere: 403). Unknown paths are a 404,
logged and kept in `LoopbackHub.unhandled` (with server-side failures), so a new client call is easy to spot;
`LoopbackHub.requests` keeps the last (method, path, status).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"
_ROUTES = [  # (methods, path pattern, LoopbackHub method); matched in order against the still-quoted path
    ("GET", r"/api/whoami-v2", "_whoami"),
    ("POST", r"/api/repos/create", "_create_repo"),
    ("POST", r"/api/validate-yaml", "_validate_yaml"),
    ("GET", r"/api/agent-harnesses", "_agent_harnesses"),
    ("GET", rf"/api/models/{_REPO}(?:/revision/{_REV})?", "_repo_info"),
    ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?", "_tree"),
    ("GET", rf"/api/models/{_REPO}/commits/{_REV}", "_history"),
    ("POST", rf"/api/models/{_REPO}/branch/{_REV}", "_create_branch"),
    ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", "_preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/{_REV}", "_commit"),
    ("HEAD GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "_resolve"),
]
_ROUTES = [(methods.split(), re.compile(pattern), name) for methods, pattern, name in _ROUTES]
_NEEDS_AUTH = {"_whoami", "_create_repo", "_create_branch", "_preupload", "_commit"}
_GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    """An error answer: status, message, and the Hub's X-Error-Code when the client keys on it."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, extra=None):
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra or {}


@dataclass
class Commit:
    sha: str
    title: str
    message: str
    date: str
    files: dict[str, bytes]  # the repository's full tree at this commit


@dataclass
class Repo:
    created_at: str
    commits: list[Commit] = field(default_factory=list)  # oldest first
    branches: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    query: dict[str, list[str]]
    body: bytes
    token: str | None
    headers: dict[str, str]

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from None

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")


def blob_oid(data: bytes) -> str:
    """The git blob sha1, which the Hub uses as ETag and oid of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class LoopbackHub:
    """The in-memory Hub and its server. `start()`/`stop()`, or use it as a context manager."""

    def __init__(self, token: str = "hf_loopback", user: str = "tester", orgs=("org",), max_body=256 << 20):
        self.token, self.user, self.orgs, self.max_body = token, user, tuple(orgs), max_body
        self.repos: dict[str, Repo] = {}
        self.unhandled: list[str] = []
        self.env: dict[str, str] = {}  # what `use_loopback_hub` put in os.environ, to hand to subprocesses
        self.requests: collections.deque = collections.deque(maxlen=2000)
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle and inspection -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LoopbackHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LoopbackHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        serve = {"target": self._server.serve_forever, "kwargs": {"poll_interval": 0.05}}
        self._thread = threading.Thread(**serve, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # stop accepting, then drop kept-alive connections so handlers finish at once
            self._server.close_connections()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def commits(self, repo_id: str) -> list[str]:
        """Commit shas of `repo_id`, oldest first (the first is the repo creation's `.gitattributes` commit)."""
        with self._lock:
            return [commit.sha for commit in self._get_repo(repo_id).commits]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The file tree of `repo_id` at `revision` (a branch or a commit sha), as {path: bytes}."""
        with self._lock:
            return dict(sorted(self._get_commit(repo_id, revision).files.items()))

    # -- state ----------------------------------------------------------------------------------------------------
    def _get_repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return self.repos[repo_id]

    def _get_commit(self, repo_id: str, rev: str) -> Commit:
        repo = self._get_repo(repo_id)
        sha = repo.branches.get(rev) or rev
        found = [c for c in repo.commits if re.fullmatch(r"[0-9a-f]{7,40}", sha) and c.sha.startswith(sha)]
        if len(found) != 1:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return found[0]

    def _add_commit(self, repo: Repo, branch: str, title: str, message: str, files: dict[str, bytes]) -> Commit:
        parent = repo.branches.get(branch, "")
        tree = "\n".join(f"{path} {blob_oid(data)}" for path, data in sorted(files.items()))
        seed = f"{parent}\n{tree}\n{title}\n{message}\n{time.time_ns()}\n{next(self._counter)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, message, _now(), files)
        repo.commits.append(commit)
        repo.branches[branch] = commit.sha
        return commit

    def _check_namespace(self, repo_id: str) -> None:
        namespace = repo_id.split("/")[0]
        if namespace not in (self.user, *self.orgs):
            raise HubError(403, f"You don't have the rights to write to {namespace}")

    # -- endpoints: (request, **path groups) -> (status, JSON payload or bytes, headers) or a payload ------------
    def _whoami(self, req: Request) -> dict:
        orgs = [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in self.orgs]
        access = {"displayName": "loopback", "role": "write", "createdAt": _now()}
        return {"type": "user", "id": "0" * 24, "name": self.user, "fullname": self.user, "email": None,
                "emailVerified": False, "isPro": False, "canPay": False, "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": access}}  # fmt: skip

    def _create_repo(self, req: Request) -> dict:
        data = req.json()
        if (data.get("type") or "model") != "model" or not re.fullmatch(r"[\w.-]+", data.get("name") or ""):
            raise HubError(400, f"The loopback hub only hosts model repos with valid names, not {data}")
        repo_id = f"{data.get('organization') or self.user}/{data['name']}"
        self._check_namespace(repo_id)
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", extra={"url": url})
        self.repos[repo_id] = repo = Repo(created_at=_now())
        self._add_commit(repo, "main", "initial commit", "", {".gitattributes": _GITATTRIBUTES})
        return {"url": url, "name": repo_id, "id": repo_id}

    def _validate_yaml(self, req: Request) -> dict:
        return {"errors": [], "warnings": []}

    def _agent_harnesses(self, req: Request) -> dict:
        return {"standardEnvVars": [], "harnesses": {}}

    def _repo_info(self, req: Request, repo: str, rev: str = "main") -> dict:
        commit, created = self._get_commit(repo, rev), self.repos[repo].created_at
        siblings = [{"rfilename": p, "size": len(d), "blobId": blob_oid(d)} for p, d in sorted(commit.files.items())]
        return {"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                "author": repo.split("/")[0], "sha": commit.sha, "lastModified": commit.date, "createdAt": created,
                "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": siblings, "spaces": [], "usedStorage": sum(map(len, commit.files.values()))}  # fmt: skip

    def _tree(self, req: Request, repo: str, rev: str, path: str = "") -> list[dict]:
        commit, prefix = self._get_commit(repo, rev), path.strip("/") + "/" if path.strip("/") else ""
        files = {p: d for p, d in sorted(commit.files.items()) if p.startswith(prefix)}
        if prefix and not files:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        recursive, folders, entries = req.flag("recursive"), set(), []
        for p, data in files.items():
            parts = p[len(prefix) :].split("/")
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "path": p, "size": len(data), "oid": blob_oid(data)})
                folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            else:
                folders.add(prefix + parts[0])
        return [
            {"type": "directory", "path": f, "size": 0, "oid": hashlib.sha1(f"{commit.sha}:{f}".encode()).hexdigest()}
            for f in sorted(folders)
        ] + entries

    def _history(self, req: Request, repo: str, rev: str) -> list[dict]:
        commits = self._get_repo(repo).commits
        upto = commits.index(self._get_commit(repo, rev))
        return [
            {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": self.user}]}
            for c in reversed(commits[: upto + 1])
        ]

    def _create_branch(self, req: Request, repo: str, rev: str) -> dict:
        self._check_namespace(repo)
        start = self._get_commit(repo, req.json().get("startingPoint") or "main")
        if rev in self._get_repo(repo).branches:
            raise HubError(409, f"Reference already exists: refs/heads/{rev}")
        self.repos[repo].branches[rev] = start.sha
        return {}

    def _writable_head(self, req: Request, repo: str, rev: str) -> Commit:
        self._check_namespace(repo)
        head = self._get_commit(repo, rev)
        if req.flag("create_pr"):
            raise HubError(400, "The loopback hub does not support pull requests (create_pr)")
        if rev not in self.repos[repo].branches:
            raise HubError(400, f"Commits must target a branch, not {rev}")
        return head

    def _preupload(self, req: Request, repo: str, rev: str) -> dict:
        head = self._writable_head(req, repo, rev)
        answers = []
        for item in req.json().get("files", []):
            answer = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            if item["path"] in head.files:
                answer["oid"] = blob_oid(head.files[item["path"]])
            answers.append(answer)
        return {"files": answers, "commitOid": head.sha}

    def _commit(self, req: Request, repo: str, rev: str) -> dict:
        head = self._writable_head(req, repo, rev)
        files, header = dict(head.files), {}
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                base64_encoded = value.get("encoding") == "base64"
                files[value["path"]] = base64.b64decode(content) if base64_encoded else content.encode()
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"Unsupported commit operation {key!r} (the loopback hub never asks for LFS)")
        if not head.sha.startswith(header.get("parentCommit") or ""):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = self._add_commit(
            self.repos[repo], rev, header.get("summary") or "update", header.get("description") or "", files
        )
        url = f"{self.url}/{repo}/commit/{commit.sha}"
        return {"success": True, "commitOid": commit.sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}

    def _resolve(self, req: Request, repo: str, rev: str, path: str):
        commit = self._get_commit(repo, rev)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob_oid(data)}"', "Accept-Ranges": "bytes"}
        headers["Content-Type"] = "application/octet-stream"
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("range", "")) if req.method == "GET" else None
        if match and any(match.groups()):
            first, last = match.groups()
            start = int(first) if first else max(len(data) - int(last), 0)
            end = min(int(last), len(data) - 1) if first and last else len(data) - 1
            if start > end:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start : end + 1], headers
        return 200, data, headers

    # -- dispatch (called by the request handler) -----------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes):
        """Answer one request: (status, body bytes, headers)."""
        url = urlsplit(raw_path)
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        req = Request(method, parse_qs(url.query), body, token or None, headers)
        try:
            result = self._route(req, url.path)
        except HubError as error:
            result = self._error_reply(error)
        except (KeyError, ValueError, TypeError) as error:  # a malformed request, or a bug here: make it visible
            self.unhandled.append(f"{method} {raw_path}: {error!r}")
            logger.exception("loopback hub: failed on %s %s", method, raw_path)
            result = self._error_reply(HubError(400, f"The loopback hub could not handle this request: {error!r}"))
        status, payload, out = result if isinstance(result, tuple) else (200, result, {})
        if not isinstance(payload, bytes):
            payload, out = json.dumps(payload).encode(), {"Content-Type": "application/json", **out}
        self.requests.append((method, raw_path, status))
        return status, payload, out

    def _route(self, req: Request, path: str):
        for methods, pattern, name in _ROUTES:
            if (match := pattern.fullmatch(path)) and req.method in methods:
                if name in _NEEDS_AUTH and not req.token:
                    raise HubError(401, "You must be authenticated to do this: send `Authorization: Bearer <token>`")
                groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                with self._lock:
                    return getattr(self, name)(req, **groups)
        self.unhandled.append(f"{req.method} {path}")
        logger.warning("loopback hub: no route for %s %s", req.method, path)
        raise HubError(404, f"The loopback hub has no route for {req.method} {path}")

    @staticmethod
    def _error_reply(error: HubError):
        headers = {"X-Error-Message": str(error), **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        return error.status, {"error": str(error), **error.extra}, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "LoopbackHub/1.0"
    timeout = 60  # seconds a connection may sit idle or stall mid-request

    def _serve(self) -> None:
        hub: LoopbackHub = self.server.hub
        length = int(self.headers.get("Content-Length") or 0)
        if length > hub.max_body or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            status, body, headers = 413, b'{"error": "request body too large or chunked"}', {}
        else:
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, body, headers = hub.handle(self.command, self.path, headers, self.rfile.read(length))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", f"loopback-{id(self):x}-{time.monotonic_ns()}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args) -> None:
        logger.debug("loopback hub: " + format, *args)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most 32 at once, loopback clients only; `close_connections` ends kept-alive ones."""

    hub: LoopbackHub  # handler threads are not daemons: server_close() joins them

    def __init__(self, address, handler) -> None:
        super().__init__(address, handler)
        self._slots, self._open, self._open_lock = threading.BoundedSemaphore(32), set(), threading.Lock()

    def verify_request(self, request, client_address) -> bool:
        return client_address[0] in ("127.0.0.1", "::1")

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(timeout=10):
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)
            self._slots.release()

    def close_connections(self) -> None:
        with self._open_lock:
            for request in list(self._open):
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)


# Modules whose import-time copies of the endpoint, the offline flag and the cache paths `use_loopback_hub` patches.
_CLIENT_MODULES = ("huggingface_hub.constants", "huggingface_hub.file_download", "huggingface_hub.hf_api",
                   "huggingface_hub.utils._cache_manager", "huggingface_hub", "transformers.utils.hub",
                   "transformers.utils", "transformers.file_utils")  # fmt: skip
_CACHE_PATHS = {"HF_HOME": "", "hf_cache_home": "", "HF_HUB_CACHE": "hub", "HUGGINGFACE_HUB_CACHE": "hub",
                "default_cache_path": "hub", "TRANSFORMERS_CACHE": "hub", "PYTORCH_TRANSFORMERS_CACHE": "hub",
                "PYTORCH_PRETRAINED_BERT_CACHE": "hub", "HF_ASSETS_CACHE": "assets", "HF_TOKEN_PATH": "token",
                "default_assets_cache_path": "assets", "HF_STORED_TOKENS_PATH": "stored_tokens", "HF_XET_CACHE": "xet",
                "default_xet_cache_path": "xet", "AGENT_HARNESSES_PATH": ".agent_harnesses.json"}  # fmt: skip
_DROPPED_ENV = ("TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE",
                "TRANSFORMERS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_CO_STAGING")  # fmt: skip


@contextlib.contextmanager
def use_loopback_hub(hub: LoopbackHub, home: str | os.PathLike):
    """Point the Hub clients at `hub`, with a fresh HF_HOME `home` and `hub.token` as HF_TOKEN; restore on exit.

    Sets the environment (for subprocesses, and for modules imported later) and patches what the clients computed
    at import time, in `_CLIENT_MODULES`: ENDPOINT and HUGGINGFACE_CO_URL_TEMPLATE (huggingface_hub 0.x's
    file_download keeps its own copy of the latter), HF_HUB_OFFLINE, the cache and token paths, HF_URL_HOSTS (1.x+);
    the shared `huggingface_hub.hf_api.api`, whose bound methods (`create_repo`, ...) transformers 4.x calls;
    transformers 5.x's cached `hf_api()` instance; transformers 4.x's `_is_offline_mode`, TRANSFORMERS_CACHE and
    HUGGINGFACE_CO_RESOLVE_ENDPOINT. Yields `hub.env`, the variables it set.
    """
    import huggingface_hub.file_download  # noqa: F401 (0.x keeps a copy of HUGGINGFACE_CO_URL_TEMPLATE)
    import huggingface_hub.hf_api as hf_api

    with contextlib.suppress(ImportError):
        import transformers.utils.hub  # noqa: F401 (imported now so that its import-time values are patched)
    url, home = hub.url, os.fspath(home)
    values = {name: os.path.join(home, sub) if sub else home for name, sub in _CACHE_PATHS.items()}
    values.update(ENDPOINT=url, HUGGINGFACE_CO_URL_TEMPLATE=url + "/{repo_id}/resolve/{revision}/{filename}")
    values.update(
        HUGGINGFACE_CO_RESOLVE_ENDPOINT=url, HUGGINGFACE_CO_PREFIX=url + "/{model_id}/resolve/{revision}/{filename}"
    )
    values.update(HF_HUB_OFFLINE=False, _is_offline_mode=False, _hf_api=None, HF_HUB_DISABLE_XET=True)
    values.update(HF_HUB_DISABLE_TELEMETRY=True, HF_URL_HOSTS=frozenset({"127.0.0.1"}))
    patches = [(hf_api.api, "endpoint", url)]
    for module in filter(None, map(sys.modules.get, _CLIENT_MODULES)):
        for name in values.keys() & vars(module).keys():  # no getattr: that would load lazy attributes
            value = values[name] | getattr(module, name) if name == "HF_URL_HOSTS" else values[name]
            patches.append((module, name, value))

    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
    hub.env = {"HF_ENDPOINT": url, "HF_HOME": home, "HF_HUB_CACHE": values["HF_HUB_CACHE"], "HF_TOKEN": hub.token,
               "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
               "NO_PROXY": no_proxy, "no_proxy": no_proxy}  # fmt: skip
    saved_env = {name: os.environ.get(name) for name in [*hub.env, *_DROPPED_ENV]}
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for name in _DROPPED_ENV:
            os.environ.pop(name, None)
        os.environ.update(hub.env)
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield hub.env
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

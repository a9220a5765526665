"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests; huggingface_hub's own client talks to it unchanged.

It serves model repositories given as `{repo_id: {path_in_repo: bytes}}`, each at one fake commit (its sha is
fixed by the content), under the branch `main` or that sha. A file larger than `lfs_threshold`, or named in `lfs`,
is an LFS file: git stores a pointer for it, so its git blob id is the pointer's and its `lfs.oid` the sha256 of
the bytes. It answers what huggingface_hub 2.5's `snapshot_download`, `hf_hub_download` and `HfApi` ask:
`GET /api/models/{repo}[/revision/{rev}]` (sha, siblings; `?blobs=true` adds sizes and ids),
`GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=` (paged with `Link: <...>; rel="next"` when a page
size is set), `POST /api/models/{repo}/paths-info/{rev}`, and `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: a small
file is answered there (`ETag` = its git blob sha1), an LFS file with a 302 to the CDN carrying `X-Linked-Etag`
(sha256) and `X-Linked-Size`. The CDN listens on a second port, as the hub's CDN is another host: the client then
stops its HEAD at the 302 and drops the Authorization header, as it does with the real hub. Both honour
`Range: bytes=N-` (206). Missing repos, revisions and files answer 404 with the `X-Error-Code` the client maps
(RepoNotFound, RevisionNotFound, EntryNotFound); `/api/agent-harnesses` and `/api/telemetry/*` answer harmlessly.

Files misbehave on demand (`misbehave(repo, path, Fault(kind, ...))`): `truncate` cuts the body at a byte offset
and hangs up, `corrupt` sends the right size with one byte flipped (listings and headers keep the true hashes),
`fail` answers 500/503 without an X-Error-Code, `foreign_redirect` points the LFS 302 at another host (by default
`stub.dead_url`, a local port that refuses connections; or `stub.foreign_url`, a third listener on localhost that
serves the true bytes and records what reaches it), `slow` trickles the body. Every request is recorded (method,
path, query, headers with Range and Authorization).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from pathlib import Path
    from typing import Self

    import pytest

BRANCH = "main"
DATE = "2025-01-01T00:00:00.000Z"
_SERVER_ERROR = {500: "Internal Error - We're working hard to fix this as soon as possible!",
                 503: "Service Unavailable"}

FaultKind = Literal["truncate", "corrupt", "fail", "foreign_redirect", "slow"]


@dataclass
class Fault:
    """How one file misbehaves. `truncate`, `corrupt`, `slow` and `fail` touch the GET that carries its bytes
    (`/resolve` for a small file, the CDN for an LFS one); `foreign_redirect` the 302 of an LFS file's `/resolve`."""

    kind: FaultKind
    times: int | None = None  # misbehave in this many answers, then behave; None: always
    at: int | None = None  # truncate: the byte offset of the file where the body stops (default: half the file)
    status: int = 500  # fail: the status sent, with no X-Error-Code
    on_resolve: bool = False  # fail: the HEAD/GET on /resolve fail too (the metadata call fails)
    target: str | None = None  # foreign_redirect: the base URL the 302 points at (default: stub.dead_url)
    delay: float = 0.05  # slow: seconds between chunks
    chunk: int = 256  # slow: bytes per chunk


@dataclass
class Recorded:
    origin: str  # which listener answered: hub, cdn or foreign
    route: str  # info, tree, paths_info, resolve, cdn, harnesses, telemetry or unknown
    method: str
    path: str  # as sent, percent-encoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    repo_id: str = ""
    file: str = ""  # the path in the repo, for resolve and cdn
    status: int = 0
    fault: str = ""  # the Fault kind applied to this answer, if any


@dataclass(frozen=True)
class _Blob:
    data: bytes
    lfs: bool
    sha256: str
    pointer: bytes  # what git stores in place of an LFS file
    git_sha1: str  # git's id of what it stores: the bytes, or the pointer for an LFS file


@dataclass(frozen=True)
class _Repo:
    files: dict[str, _Blob]
    commit: str
    folders: frozenset[str]


@dataclass
class _Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut: int | None = None  # send only this many body bytes, then hang up
    trickle: tuple[float, int] | None = None  # (seconds, bytes): send the body slowly
    fault: str = ""


class HubStub:
    """Start with `with HubStub({"org/repo": {"config.json": b"{}"}}) as stub:`; then
    `stub.point_hub_here(monkeypatch)` sends huggingface_hub there."""

    def __init__(self, repos: Mapping[str, Mapping[str, bytes]] | None = None, *, lfs_threshold: int = 1024,
                 lfs: Collection[str] = (), page_size: int | None = None) -> None:
        self.lfs_threshold = lfs_threshold
        self.lfs = set(lfs)  # paths that are LFS files whatever their size
        self.page_size = page_size  # tree listings come in pages of this many entries
        self.repos: dict[str, _Repo] = {}
        self.recorded: list[Recorded] = []
        self.client_sleeps: list[float] = []  # the back-offs huggingface_hub asked for (see point_hub_here)
        self._faults: dict[tuple[str, str], tuple[Fault, int | None]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._home: str | None = None
        self._servers = {origin: self._listen(origin) for origin in ("hub", "cdn", "foreign")}
        port = {origin: server.server_address[1] for origin, server in self._servers.items()}
        self.url = f"http://127.0.0.1:{port['hub']}"
        self.cdn_url = f"http://127.0.0.1:{port['cdn']}"  # another origin, as the hub's CDN is another host
        self.foreign_url = f"http://localhost:{port['foreign']}"  # "someone else's host", for foreign_redirect
        # A port held bound but never listening: connecting is refused at once, and nothing else can take it.
        self._dead = socket.socket()
        self._dead.bind(("127.0.0.1", 0))
        self.dead_url = f"http://127.0.0.1:{self._dead.getsockname()[1]}"
        self._threads = [threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                         for server in self._servers.values()]
        for repo_id, files in (repos or {}).items():
            self.add_repo(repo_id, files)

    def _listen(self, origin: str) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.block_on_close = False
        server.stub, server.origin = self, origin  # type: ignore[attr-defined]
        return server

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # cuts short any trickling answer
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._dead.close()
        if self._home:
            shutil.rmtree(self._home, ignore_errors=True)

    # -- what the tests set up and ask ----------------------------------------------------------------

    def add_repo(self, repo_id: str, files: Mapping[str, bytes]) -> None:
        blobs = {path: _blob(data, len(data) > self.lfs_threshold or path in self.lfs) for path, data in files.items()}
        listing = "".join(f"{path}\0{blob.git_sha1}\n" for path, blob in sorted(blobs.items()))
        commit = hashlib.sha1(f"commit {repo_id}\n{listing}".encode()).hexdigest()
        folders = frozenset(path.rsplit("/", depth)[0] for path in blobs for depth in range(1, path.count("/") + 1))
        self.repos[repo_id] = _Repo(blobs, commit, folders)

    def commit(self, repo_id: str) -> str:
        return self.repos[repo_id].commit

    def sha256(self, repo_id: str, path: str) -> str:
        return self.repos[repo_id].files[path].sha256

    def git_sha1(self, repo_id: str, path: str) -> str:
        """The blob id the hub lists for the file (for an LFS file: its pointer's)."""
        return self.repos[repo_id].files[path].git_sha1

    def is_lfs(self, repo_id: str, path: str) -> bool:
        return self.repos[repo_id].files[path].lfs

    def misbehave(self, repo_id: str, path: str, fault: Fault) -> None:
        if fault.kind == "foreign_redirect" and not self.is_lfs(repo_id, path):
            raise ValueError(f"foreign_redirect needs an LFS file; {path} is answered by /resolve itself")
        with self._lock:
            self._faults[(repo_id, path)] = (replace(fault), fault.times)

    def behave(self, repo_id: str, path: str) -> None:
        with self._lock:
            self._faults.pop((repo_id, path), None)

    def calls(self, route: str | None = None, *, file: str | None = None, origin: str | None = None,
              method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.recorded if (route is None or r.route == route) and (file is None or r.file == file)
                    and (origin is None or r.origin == origin) and (method is None or r.method == method)]

    def point_hub_here(self, monkeypatch: pytest.MonkeyPatch, home: str | Path | None = None, *,
                       instant_retries: bool = True, timeout: float | None = None) -> None:
        """Make huggingface_hub, already imported, talk to this stub only: the environment (for subprocesses) and
        the module constants it computed from it at import. `home` (default: a folder of the stub's) becomes
        HF_HOME with its caches and token files; no token is found there. With `instant_retries` its back-off
        sleeps return at once and land in `client_sleeps`; `timeout` shortens its HEAD and download timeouts."""
        from huggingface_hub import close_session, constants, file_download, hf_api

        http = importlib.import_module("huggingface_hub.utils._http")
        if home is None:
            self._home = self._home or tempfile.mkdtemp(prefix="hub_stub_home_")  # removed when the stub stops
        home = str(home or self._home)
        for name, value in {"HF_ENDPOINT": self.url, "HF_HOME": home, "HF_HUB_DISABLE_TELEMETRY": "1",
                            "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost"}.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                     "HF_OIDC_RESOURCE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE",
                     "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE", "HUGGINGFACE_CO_STAGING"):
            monkeypatch.delenv(name, raising=False)
        hub_cache, assets_cache = os.path.join(home, "hub"), os.path.join(home, "assets")
        hosts = {"hf.co", *(urlsplit(url).hostname for url in (constants._HF_DEFAULT_ENDPOINT,
                                                                constants._HF_DEFAULT_STAGING_ENDPOINT, self.url))}
        patched = {
            "ENDPOINT": self.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": self.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": frozenset(hosts),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_TELEMETRY": True,  # else a torch/agent probe and /api/agent-harnesses on first request
            "HF_HUB_DISABLE_XET": True,  # plain HTTP even if a response ever named a Xet hash
            "HF_HOME": home, "HF_HUB_CACHE": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache,
            "HF_ASSETS_CACHE": assets_cache, "HUGGINGFACE_ASSETS_CACHE": assets_cache,
            "HF_XET_CACHE": os.path.join(home, "xet"),
            "HF_TOKEN_PATH": os.path.join(home, "token"), "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
            "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
            "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
            "CHECK_FOR_SKILL_UPDATE_DONE_PATH": os.path.join(home, ".check_for_skill_update_done"),
        }
        if timeout is not None:
            patched.update(HF_HUB_ETAG_TIMEOUT=timeout, HF_HUB_DOWNLOAD_TIMEOUT=timeout)
        for name, value in patched.items():
            monkeypatch.setattr(constants, name, value)
        # Copies taken at import: the origins allowed the Authorization header, and names imported one by one.
        hub_origins = {http._url_origin(url) for url in (constants._HF_DEFAULT_ENDPOINT,
                                                         constants._HF_DEFAULT_STAGING_ENDPOINT, self.url, "https://hf.co")}
        monkeypatch.setattr(http, "_HUB_ORIGINS", frozenset(hub_origins))
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)  # the HfApi behind huggingface_hub.model_info & co
        monkeypatch.setattr(importlib.import_module("huggingface_hub.utils._cache_manager"), "HF_HUB_CACHE", hub_cache)
        monkeypatch.setattr(importlib.import_module("huggingface_hub.utils._cache_assets"), "HF_ASSETS_CACHE",
                            assets_cache)
        monkeypatch.setattr(importlib.import_module("huggingface_hub.utils._git_credential"), "ENDPOINT", self.url)
        if instant_retries:
            clock = _ClientClock(self.client_sleeps)
            monkeypatch.setattr(http, "time", clock)
            monkeypatch.setattr(file_download, "time", clock)
        close_session()  # a fresh shared client: no connection kept to an earlier stub, NO_PROXY read anew

    # -- the protocol ---------------------------------------------------------------------------------

    def answer(self, origin: str, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> _Answer:
        route, repo_id, tail = _route(origin, method, path.strip("/").split("/"))
        record = Recorded(origin, route, method, path, query, headers, body, repo_id)
        with self._lock:
            self.recorded.append(record)
            index = len(self.recorded)
        if route == "resolve":
            record.file = unquote("/".join(tail[1:]))
        answer = self._answer(record, tail)
        answer.headers["X-Request-Id"] = f"stub-{index}"  # the client quotes it in its error messages
        record.status, record.fault = answer.status, answer.fault
        return answer

    def _answer(self, record: Recorded, tail: list[str]) -> _Answer:
        if record.route == "harnesses":
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if record.route == "telemetry":
            return _Answer(200)
        if record.route == "unknown":
            return _json(404, {"error": "Sorry, we can't find the page you are looking for."})
        if record.route == "cdn":
            return self._cdn(record, tail)
        repo = self.repos.get(record.repo_id)
        if repo is None:
            return _hub_error(404, "RepoNotFound", "Repository not found")
        revision = unquote(tail[0]) if tail else BRANCH
        if revision not in (BRANCH, repo.commit):
            return _hub_error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if record.route == "info":
            return self._info(record.repo_id, repo, record.query)
        if record.route == "tree":
            return self._tree(record, repo, unquote("/".join(tail[1:])).strip("/"))
        if record.route == "paths_info":
            return self._paths_info(repo, record)
        return self._resolve(record, repo)

    def _info(self, repo_id: str, repo: _Repo, query: dict[str, list[str]]) -> _Answer:
        siblings = []
        for path, blob in sorted(repo.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if _flag(query, "blobs"):
                sibling.update(size=len(blob.data), blobId=blob.git_sha1)
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info = {"_id": repo.commit[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                "sha": repo.commit, "lastModified": DATE, "createdAt": DATE, "private": False, "disabled": False,
                "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings, "spaces": [],
                "usedStorage": sum(len(blob.data) for blob in repo.files.values())}
        if "expand" in query:  # only what was asked for, as the hub does
            info = {key: value for key, value in info.items() if key in {"_id", "id", *query["expand"]}}
        return _json(200, info)

    def _tree(self, record: Recorded, repo: _Repo, folder: str) -> _Answer:
        if folder and folder not in repo.folders:
            return _hub_error(404, "EntryNotFound", f"{folder} does not exist on \"{BRANCH}\"", repo.commit)
        prefix = f"{folder}/" if folder else ""
        paths = sorted(path for path in (*repo.files, *repo.folders) if path.startswith(prefix)
                       and (_flag(record.query, "recursive") or "/" not in path[len(prefix):]))
        entries = [_entry(repo, path, _flag(record.query, "expand")) for path in paths]
        size = int(record.query.get("limit", ["0"])[0]) or self.page_size
        if not size:
            return _json(200, entries)
        start = int(base64.urlsafe_b64decode(record.query["cursor"][0])) if "cursor" in record.query else 0
        answer = _json(200, entries[start:start + size])
        if start + size < len(entries):
            query = {key: value for key, value in record.query.items() if key != "cursor"}
            query["cursor"] = [base64.urlsafe_b64encode(str(start + size).encode()).decode()]
            answer.headers["Link"] = f'<{self.url}{record.path}?{urlencode(query, doseq=True)}>; rel="next"'
        return answer

    def _paths_info(self, repo: _Repo, record: Recorded) -> _Answer:
        if "json" in record.headers.get("content-type", ""):
            form = json.loads(record.body or b"{}")
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(record.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _flag(form, "expand")
        wanted = [path.strip("/") for path in ([paths] if isinstance(paths, str) else paths)]
        return _json(200, [_entry(repo, path, expand) for path in wanted if path in repo.files or path in repo.folders])

    def _resolve(self, record: Recorded, repo: _Repo) -> _Answer:
        blob = repo.files.get(record.file)
        if blob is None:
            return _hub_error(404, "EntryNotFound", "Entry not found", repo.commit)
        fault = self._take(record, "resolve")
        if fault is not None and fault.kind == "fail":
            return _failure(fault)
        name = record.file.rsplit("/", 1)[-1]
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes", "Vary": "Origin, Accept-Encoding",
                  "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"}
        if not blob.lfs:
            return self._bytes(record, blob, {**common, "ETag": f'"{blob.git_sha1}"'})
        base = (fault.target or self.dead_url) if fault is not None else self.cdn_url
        location = (f"{base}/cdn/{record.repo_id}/{blob.sha256}?path={quote(record.file)}"
                    f"&Expires=4102444800&Signature=stub")
        headers = {**common, "Location": location, "ETag": f'"{blob.git_sha1}"', "X-Linked-Etag": f'"{blob.sha256}"',
                   "X-Linked-Size": str(len(blob.data)), "Content-Type": "text/plain; charset=utf-8"}
        return _Answer(302, headers, f"Found. Redirecting to {location}".encode(), fault=fault.kind if fault else "")

    def _cdn(self, record: Recorded, tail: list[str]) -> _Answer:
        record.file = record.query.get("path", [""])[0]
        repo = self.repos.get(record.repo_id)
        blob = repo.files.get(record.file) if repo else None
        if blob is None or tail[:1] != [blob.sha256]:
            return _Answer(404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>")
        name = record.file.rsplit("/", 1)[-1]
        headers = {"ETag": f'"{blob.sha256}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"}
        return self._bytes(record, blob, headers)

    def _bytes(self, record: Recorded, blob: _Blob, headers: dict[str, str]) -> _Answer:
        """The file's bytes (or the asked range), misbehaving as its Fault says; the foreign host never does."""
        fault = self._take(record, "download") if record.method == "GET" and record.origin != "foreign" else None
        if fault is not None and fault.kind == "fail":
            return _failure(fault)
        data = blob.data
        if fault is not None and fault.kind == "corrupt" and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        span = _range(record.headers.get("range"), len(data))
        if span is None:
            return _Answer(416, {"Content-Range": f"bytes */{len(data)}"}, fault=fault.kind if fault else "")
        start, end = span
        headers = {**headers, "Content-Type": "application/octet-stream"}
        if "range" in record.headers:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        answer = _Answer(206 if "range" in record.headers else 200, headers, data[start:end],
                         fault=fault.kind if fault else "")
        if fault is not None and fault.kind == "truncate":
            answer.cut = max(0, (len(data) // 2 if fault.at is None else fault.at) - start)
        if fault is not None and fault.kind == "slow":
            answer.trickle = (fault.delay, fault.chunk)
        return answer

    def _take(self, record: Recorded, stage: str) -> Fault | None:
        """The file's Fault if it acts at this stage (resolve: the /resolve answer; download: the bytes), counted."""
        with self._lock:
            fault, left = self._faults.get((record.repo_id, record.file), (None, None))
            if fault is None:
                return None
            acts = {"foreign_redirect": stage == "resolve", "fail": stage == "download" or fault.on_resolve}
            if not acts.get(fault.kind, stage == "download"):
                return None
            if left is not None:
                left -= 1
                if left <= 0:
                    del self._faults[(record.repo_id, record.file)]
                else:
                    self._faults[(record.repo_id, record.file)] = (fault, left)
            return fault


class _ClientClock:
    """Stands for the `time` module in huggingface_hub's retry loops: a back-off is recorded, not slept."""

    def __init__(self, sleeps: list[float]) -> None:
        self._sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        self._sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _blob(data: bytes, lfs: bool) -> _Blob:
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    stored = pointer if lfs else data
    return _Blob(data, lfs, sha256, pointer, hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest())


def _entry(repo: _Repo, path: str, expand: bool) -> dict[str, Any]:
    """A tree / paths-info entry, as the hub writes them."""
    blob = repo.files.get(path)
    if blob is None:
        inside = "".join(f"{p}{b.git_sha1}" for p, b in sorted(repo.files.items()) if p.startswith(f"{path}/"))
        entry: dict[str, Any] = {"type": "directory", "oid": hashlib.sha1(f"tree {inside}".encode()).hexdigest(),
                                 "size": 0, "path": path}
    else:
        entry = {"type": "file", "oid": blob.git_sha1, "size": len(blob.data), "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
        if expand:
            entry["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                           "pickleImportScan": None}
    if expand:
        entry["lastCommit"] = {"id": repo.commit, "title": "Upload files", "date": DATE}
    return entry


def _route(origin: str, method: str, parts: list[str]) -> tuple[str, str, list[str]]:
    """(route, repo id, the rest of the path still percent-encoded) for a request path split on '/'."""
    if origin != "hub":
        if parts[0] == "cdn" and len(parts) >= 4:
            return "cdn", f"{unquote(parts[1])}/{unquote(parts[2])}", parts[3:]
        return "unknown", "", []
    if parts[:2] == ["api", "agent-harnesses"]:
        return "harnesses", "", []
    if parts[:2] == ["api", "telemetry"]:
        return "telemetry", "", []
    if parts[:2] == ["api", "models"] and len(parts) >= 4:
        repo_id, rest = f"{unquote(parts[2])}/{unquote(parts[3])}", parts[4:]
        if method in ("GET", "HEAD") and (not rest or (rest[0] == "revision" and len(rest) == 2)):
            return "info", repo_id, rest[1:]
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            return "tree", repo_id, rest[1:]
        if method == "POST" and rest[:1] == ["paths-info"] and len(rest) == 2:
            return "paths_info", repo_id, rest[1:]
    if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
        return "resolve", f"{unquote(parts[0])}/{unquote(parts[1])}", parts[3:]
    return "unknown", "", []


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of `Range: bytes=N-`, `N-M` or `-K`; the whole file without one; None when unsatisfiable."""
    if not header:
        return 0, size
    first, _, last = header.strip().removeprefix("bytes=").partition("-")
    try:
        if not first:
            return max(0, size - int(last)), size
        start, end = int(first), min(size, int(last) + 1) if last else size
    except ValueError:  # not a single byte range: nothing here serves it
        return None
    return (start, end) if start < size and start < end else None


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _json(status: int, body: Any) -> _Answer:
    return _Answer(status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(body).encode())


def _hub_error(status: int, code: str, message: str, commit: str | None = None) -> _Answer:
    answer = _json(status, {"error": message})
    answer.headers.update({"X-Error-Code": code, "X-Error-Message": message})
    if commit:
        answer.headers["X-Repo-Commit"] = commit
    return answer


def _failure(fault: Fault) -> _Answer:
    answer = _json(fault.status, {"error": _SERVER_ERROR.get(fault.status, "Server Error")})
    answer.fault = fault.kind
    return answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one write per answer, and no Nagle: keep-alive answers do not stall on delayed ACKs
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        stub: HubStub = self.server.stub  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        answer = stub.answer(self.server.origin, self.command, parts.path,  # type: ignore[attr-defined]
                             parse_qs(parts.query, keep_blank_values=True), headers, body)
        head = {**answer.headers, "Content-Length": str(len(answer.body))}
        status_line = f"HTTP/1.1 {answer.status} {self.responses.get(answer.status, ('',))[0]}\r\n"
        data = (status_line + "".join(f"{key}: {value}\r\n" for key, value in head.items()) + "\r\n").encode()
        payload = b"" if self.command == "HEAD" else answer.body
        try:
            if answer.cut is not None:  # fewer bytes than Content-Length says, then hang up
                self.close_connection = True
                payload = payload[:answer.cut]
            if answer.trickle is None:
                self.wfile.write(data + payload)
                self.wfile.flush()
                return
            self.wfile.write(data)
            seconds, size = answer.trickle
            for start in range(0, len(payload), size):
                if stub._closing.wait(seconds):
                    self.close_connection = True
                    return
                self.wfile.write(payload[start:start + size])
                self.wfile.flush()
        except OSError:  # the client hung up first
            self.close_connection = True

    do_GET = do_HEAD = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

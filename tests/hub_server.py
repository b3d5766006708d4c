"""A small Hugging Face Hub for tests: the endpoints huggingface_hub's snapshot_download uses.

It serves model repos held in memory on 127.0.0.1, in a thread:
  GET  /api/models/{repo}/revision/{rev}          repo info (the commit `sha`)
  GET  /api/models/{repo}/tree/{rev}?recursive=..  the file listing of a commit
  HEAD /{repo}/resolve/{rev}/{path}               X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{rev}/{path}               the bytes, with Range requests for resumes
Errors carry the X-Error-Code headers huggingface_hub turns into its exceptions. A file listed in
`drop_once` ({path: bytes}) is cut off after that many bytes of its first GET, as a flaky network would.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def commit_sha(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()  # 40 hex digits, like a git commit


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    token: str | None = None  # gated: only this bearer token gets in

    def add_commit(self, name: str, files: dict[str, bytes], ref: str | None = None) -> str:
        sha = commit_sha(name)
        self.commits[sha] = files
        if ref:
            self.refs[ref] = sha
        return sha

    def resolve(self, rev: str) -> str | None:
        return rev if rev in self.commits else self.refs.get(rev)


class TestHub:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    """Start with `with TestHub() as hub:`; `hub.url` is the HF_ENDPOINT to use."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self.drop_once: dict[str, int] = {}  # file path -> bytes sent before the connection drops, once
        self.drop_always: set[str] = set()  # file paths cut off halfway every time
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def repo(self, repo_id: str) -> Repo:
        return self.repos.setdefault(repo_id, Repo())

    def __enter__(self) -> TestHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                    return self._repo_info(m[1], m[2])
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                    return self._tree(m[1], m[2])
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._file(m[1], m[2], m[3], body)
                self._error(404, "RepoNotFound")

            def _lookup(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound")
                    return None
                if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    self._error(401, "GatedRepo")
                    return None
                sha = repo.resolve(rev)
                if sha is None:
                    self._error(404, "RevisionNotFound")
                    return None
                return repo, sha

            def _repo_info(self, repo_id: str, rev: str) -> None:
                if found := self._lookup(repo_id, rev):
                    repo, sha = found
                    self._json({"id": repo_id, "sha": sha, "private": False,
                                "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])]})

            def _tree(self, repo_id: str, rev: str) -> None:
                if found := self._lookup(repo_id, rev):
                    repo, sha = found
                    files = repo.commits[sha]
                    self._json([{"type": "file", "path": p, "size": len(files[p]), "oid": git_blob_sha(files[p])}
                                for p in sorted(files)])

            def _file(self, repo_id: str, rev: str, name: str, body: bool) -> None:
                found = self._lookup(repo_id, rev)
                if not found:
                    return
                repo, sha = found
                data = repo.commits[sha].get(name)
                if data is None:
                    self._error(404, "EntryNotFound", commit=sha)
                    return
                start = 0
                if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(m[1])
                part = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(part)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                cut = hub.drop_once.pop(name, None) if not start else None
                if name in hub.drop_always:
                    cut = len(part) // 2
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True  # the rest never comes: the client sees a cut body
                    return
                self.wfile.write(part)

            def _json(self, value) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int, code: str, commit: str | None = None) -> None:
                data = json.dumps({"error": code}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler

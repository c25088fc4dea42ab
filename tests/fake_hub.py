"""A local HTTP server that plays the Hugging Face Hub (`HF_ENDPOINT`) for the push and download tests: the endpoints
`create_repo`, `create_commit`, `snapshot_download` and `hf_hub_download` use (huggingface_hub 2.x), files uploaded
inline (`regular`) and served plainly (no xet), every request recorded."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from helpers import parse_commit_body

VALID_TOKEN = "hf_valid_test_token"


class HubRepo:
    """A model repo: full file snapshots by commit sha, and refs (branches and tags) naming them."""

    def __init__(self) -> None:
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}

    def add(self, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> str:
        sha = hashlib.sha1(json.dumps(sorted((k, v.hex()) for k, v in files.items())).encode()).hexdigest()
        self.snapshots[sha] = dict(files)
        for ref in refs:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        return revision if revision in self.snapshots else self.refs.get(revision)


class FakeHub(BaseHTTPRequestHandler):
    """The Hub endpoints `create_repo`, `create_commit` and `snapshot_download` use (huggingface_hub 2.x): files are
    uploaded inline (`regular`) and served plainly (no xet), every request recorded."""

    server: HubServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _record(self) -> str:
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("Authorization", "")
        self.server.requests.append({"method": self.command, "path": path, "auth": auth})
        return path

    def do_POST(self):  # the names http.server dispatches to
        path = self._record()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization", "") != f"Bearer {VALID_TOKEN}":
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
        elif path == "/api/repos/create":
            data = json.loads(body)
            name = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            self.server.created.append(data)
            self.server.repos.setdefault(name, HubRepo())
            self._reply(200, {"url": f"{self.server.endpoint}/{name}"})
        elif path == "/api/validate-yaml":  # create_commit checks a README.md's metadata
            self._reply(200, {"errors": [], "warnings": []})
        elif "/preupload/" in path:
            files = json.loads(body)["files"]
            self._reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        elif "/commit/" in path:
            if self.server.fail_commits:  # the Hub refuses the commit as a whole: nothing of it lands
                self._reply(500, {"error": "Internal Error"})
                return
            repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
            summary, files = parse_commit_body(body)
            self.server.commits.append({"repo": repo_id, "path": path, "summary": summary, "files": files})
            repo = self.server.repos.setdefault(repo_id, HubRepo())
            previous = repo.snapshots.get(repo.refs.get("main", ""), {})
            sha = repo.add({**previous, **files})
            self._reply(200, {"commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha})
        else:
            self._reply(404, {"error": f"unknown endpoint {path}"})

    def _repo_and_revision(self, repo_id: str, revision: str) -> tuple[HubRepo, str] | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo, sha

    def do_GET(self):
        path = self._record()
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            if "/revision/" in rest:  # repo_info
                repo_id, revision = rest.split("/revision/", 1)
                found = self._repo_and_revision(repo_id, revision)
                if found:
                    repo, sha = found
                    siblings = [{"rfilename": name} for name in sorted(repo.snapshots[sha])]
                    self._reply(200, {"id": repo_id, "sha": sha, "siblings": siblings})
            elif "/tree/" in rest:  # list_repo_tree(recursive=True)
                repo_id, revision = rest.split("/tree/", 1)
                found = self._repo_and_revision(repo_id, revision.rstrip("/"))
                if found:
                    repo, sha = found
                    entries = [
                        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in sorted(repo.snapshots[sha].items())
                    ]
                    folders = {str(p) for name in repo.snapshots[sha] for p in Path(name).parents if str(p) != "."}
                    entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
                    self._reply(200, entries)
            else:
                self._reply(404, {"error": f"unknown endpoint {path}"})
            return
        self._resolve_file(path)

    def do_HEAD(self):
        self._resolve_file(self._record())

    def _resolve_file(self, path: str) -> None:
        """GET or HEAD /{repo}/resolve/{revision}/{file}."""
        if "/resolve/" not in path:
            self._reply(404, {"error": f"unknown endpoint {path}"})
            return
        repo_id, rest = path.lstrip("/").split("/resolve/", 1)
        revision, filename = rest.split("/", 1)
        found = self._repo_and_revision(repo_id, revision)
        if not found:
            return
        repo, sha = found
        data = repo.snapshots[sha].get(filename)
        if data is None:
            self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)


class HubServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeHub)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[dict] = []
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.repos: dict[str, HubRepo] = {}
        self.fail_commits = False


@contextmanager
def running_hub(monkeypatch) -> Iterator[HubServer]:
    """A recording Hub on localhost, with HF_ENDPOINT pointing at it, for the length of the `with` block."""
    server = HubServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()

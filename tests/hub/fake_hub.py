"""A minimal Hugging Face Hub-compatible HTTP server for tests (standard library only).

It implements the endpoints ``huggingface_hub`` uses for ``create_repo``, ``upload_folder``/``create_commit``
(regular uploads, no LFS/Xet; ``parent_commit`` is honoured), ``hf_hub_download``, ``repo_info``,
``get_paths_info`` (git blob ids, as the Hub gives for files stored without LFS) and ``create_tag``: enough for
``push_to_hub``, ``zoo publish`` and ``from_pretrained`` to run the client's real code. Every commit is kept, so any
revision (branch, tag or commit id) can be downloaded. ``hub.requests`` records every request, in order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_id(content: bytes) -> str:
    """The id git (and the Hub, for files stored without LFS) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> files
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit id
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit id
    private: bool = False

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        commit = self.branches.get(revision) or self.tags.get(revision) or revision
        return (commit, self.commits[commit]) if commit in self.commits else None


class FakeHub:
    """Run with ``with FakeHub() as hub:``; ``hub.endpoint`` is the URL for ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def add_files(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` (path -> content) to ``repo_id`` directly, creating the repo: hosts a file for a test."""
        self.repos.setdefault(repo_id, _Repo())
        lines = [{"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode()}}
                 for path, content in files.items()]
        return self.commit(repo_id, branch, lines)

    def commit(self, repo_id: str, branch: str, lines: list[dict]) -> str:
        repo = self.repos[repo_id]
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent]) if parent else {}
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] in ("deletedFile", "deletedFolder"):
                files.pop(line["value"]["path"], None)
            elif line["key"] != "header":
                raise ValueError(f"fake hub does not support commit operation {line['key']!r}")
        digest = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode())
        digest.update(str(len(repo.commits)).encode())
        commit_id = digest.hexdigest()
        repo.commits[commit_id] = files
        repo.branches[branch] = commit_id
        return commit_id


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        # -------------------------------------------------------------------------------------- helpers

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        # ------------------------------------------------------------------------------------- routing

        def do_POST(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(f"POST {path}")
            body = self._body()
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = "/".join(part for part in (request.get("organization"), request["name"]) if part)
                if repo_id in hub.repos:  # the Hub's 409 answer still carries the repo URL
                    message = "You already created this model repo"
                    body = {"error": message, "url": f"{hub.endpoint}/{repo_id}"}
                    return self._json(409, body, {"X-Error-Code": "RepoExists", "X-Error-Message": message})
                hub.repos[repo_id] = _Repo(private=bool(request.get("private")))
                return self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            if path.startswith("/api/models/") and "/preupload/" in path:
                files = json.loads(body)["files"]
                listing = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                return self._json(200, {"files": listing})
            if path.startswith("/api/models/") and "/commit/" in path:
                repo_id, branch = path[len("/api/models/") :].split("/commit/")
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", f"no repo {repo_id}")
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next((line["value"] for line in lines if line["key"] == "header"), {})
                head = hub.repos[repo_id].branches.get(branch)
                if header.get("parentCommit") and header["parentCommit"] != head:
                    message = f"{branch} is at {head}, not at the parent commit {header['parentCommit']}"
                    return self._error(412, "PreconditionFailed", message)
                commit_id = hub.commit(repo_id, branch, lines)
                commit_url = f"{hub.endpoint}/{repo_id}/commit/{commit_id}"
                return self._json(200, {"commitUrl": commit_url, "commitOid": commit_id, "pullRequestUrl": None})
            if path.startswith("/api/models/") and "/paths-info/" in path:
                repo_id, revision = path[len("/api/models/") :].split("/paths-info/")
                return self._paths_info(repo_id, revision, parse_qs(body.decode())["paths"])
            if path.startswith("/api/models/") and "/tag/" in path:
                repo_id, revision = path[len("/api/models/") :].split("/tag/")
                return self._create_tag(repo_id, revision, json.loads(body)["tag"])
            return self._error(404, "NotFound", f"fake hub has no POST {path}")

        def do_GET(self) -> None:
            self._get_or_head()

        def do_HEAD(self) -> None:
            self._get_or_head()

        def _get_or_head(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            if path.startswith("/api/models/") and "/revision/" in path:
                repo_id, revision = path[len("/api/models/") :].split("/revision/")
                return self._repo_info(repo_id, revision)
            if path.startswith("/api/models/") and path.count("/") == 4:  # /api/models/<owner>/<name>
                return self._repo_info(path[len("/api/models/") :], "main")
            if "/resolve/" in path:
                repo_id, rest = path.lstrip("/").split("/resolve/")
                revision, _, filename = rest.partition("/")
                return self._resolve(repo_id, revision, filename)
            return self._error(404, "NotFound", f"fake hub has no {self.command} {path}")

        def _snapshot(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
            """The revision's commit and files, or None after answering 404 as the Hub does."""
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"no repo {repo_id}")
                return None
            snapshot = repo.snapshot(revision)
            if snapshot is None:
                self._error(404, "RevisionNotFound", f"no revision {revision} in {repo_id}")
            return snapshot

        def _repo_info(self, repo_id: str, revision: str) -> None:
            snapshot = self._snapshot(repo_id, revision)
            if snapshot is None:
                return None
            commit, files = snapshot
            siblings = [
                {"rfilename": name, "size": len(content), "blobId": git_blob_id(content)}
                for name, content in sorted(files.items())
            ]
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": hub.repos[repo_id].private}
            return self._json(200, {**info, "siblings": siblings})

        def _paths_info(self, repo_id: str, revision: str, paths: list[str]) -> None:
            snapshot = self._snapshot(repo_id, revision)
            if snapshot is None:
                return None
            _, files = snapshot
            entries = [
                {"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_id(files[path])}
                for path in paths
                if path in files
            ]
            return self._json(200, entries)

        def _create_tag(self, repo_id: str, revision: str, tag: str) -> None:
            snapshot = self._snapshot(repo_id, revision)
            if snapshot is None:
                return None
            repo = hub.repos[repo_id]
            if tag in repo.tags or tag in repo.branches:
                return self._error(409, "Conflict", f"{repo_id} already has a revision named {tag}")
            repo.tags[tag] = snapshot[0]
            return self._json(200, {})

        def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
            snapshot = self._snapshot(repo_id, revision)
            if snapshot is None:
                return None
            commit, files = snapshot
            if filename not in files:
                return self._error(404, "EntryNotFound", f"no {filename} in {repo_id}@{revision}")
            content = files[filename]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(content)}"'}
            return self._send(200, content, headers)

    return Handler


def hub_environment(endpoint: str, home: str | os.PathLike[str], offline: bool = False) -> dict[str, str]:
    """``os.environ`` for a process that talks to the server at ``endpoint`` (or, ``offline``, to nobody), with its
    Hub cache, token and the zoo's cache under ``home``. HF_* must be set before huggingface_hub is imported."""
    home = Path(home)
    return {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HOME": str(home / "hf_home"),
        "HF_HUB_CACHE": str(home / "hf_cache"),
        "HF_TOKEN": "hf_fake",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ZOO_CACHE_DIR": str(home / "zoo_cache"),
        "NO_PROXY": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
    }


if __name__ == "__main__":  # manual use: python tests/hub/fake_hub.py
    import time

    with FakeHub() as running:
        print(running.endpoint, flush=True)
        while True:
            time.sleep(3600)

"""A loopback Hugging Face hub for dataset repos: what datasets 5.x and huggingface_hub ask of it, answered
from files held in memory, every request logged. Point a process at it with HF_ENDPOINT=hub.url.

    with FakeHub({"org/tiny": {"data/train.json": b"[...]"}}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        ...
        hub.requests  # [("GET", "/api/datasets/org/tiny/revision/main"), ...]

Answered: the repo info (`/api/datasets/{repo}[/revision/{rev}]`), its tree (`/api/datasets/{repo}/tree/
{rev}[/{path}]`), paths-info, and files (`HEAD`/`GET /datasets/{repo}/resolve/{rev}/{path}`). Anything else
is a 404, which huggingface_hub treats as "not there" (its agent-harness registry, for one).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_REPO = r"([^/]+/[^/]+)"
_ROUTES = [
    ("resolve", re.compile(rf"/datasets/{_REPO}/resolve/[^/]+/(.+)$")),
    ("tree", re.compile(rf"/api/datasets/{_REPO}/tree/[^/]+(?:/(.*))?$")),
    ("paths_info", re.compile(rf"/api/datasets/{_REPO}/paths-info/[^/]+$")),
    ("info", re.compile(rf"/api/datasets/{_REPO}(?:/revision/[^/]+)?$")),
]


class FakeHub:
    """repos: {repo_id: {path in the repo: bytes}}; one fixed commit per repo."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def downloads(self) -> list[str]:
        """The file paths fetched with GET (HEAD requests only ask for metadata)."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def _entry(path: str, data: bytes) -> dict[str, Any]:
    return {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path}


def _folder(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": "0" * 40, "size": 0, "path": path}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # the test reads hub.requests instead
            pass

        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            hub.log(self.command, self.path)
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            for name, pattern in _ROUTES:
                found = pattern.match(path)
                if found:
                    files = hub.repos.get(found.group(1))
                    if files is None:
                        return self._send(404, {"error": "Repository not found"}, error="RepoNotFound")
                    return getattr(self, name)(found.group(1), files, found, url.query, body)
            self._send(404, {"error": "not served here"})

        def _send(
            self, code: int, obj: Any = None, *, raw: bytes | None = None, error: str = "", **headers: str
        ):
            data = raw if raw is not None else json.dumps(obj).encode()
            self.send_response(code)
            self.send_header(
                "Content-Type", "application/octet-stream" if raw is not None else "application/json"
            )
            self.send_header("Content-Length", str(len(data)))
            if error:
                self.send_header("X-Error-Code", error)
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def resolve(self, repo: str, files: dict[str, bytes], found: re.Match, query: str, body: str) -> None:
            name = found.group(2)
            if name not in files:
                return self._send(404, {"error": "Entry not found"}, error="EntryNotFound")
            data = files[name]
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._send(200, raw=data, ETag=etag, X_Repo_Commit=hub.commit(repo))

        def info(self, repo: str, files: dict[str, bytes], found: re.Match, query: str, body: str) -> None:
            self._send(
                200,
                {
                    "id": repo,
                    "sha": hub.commit(repo),
                    "private": False,
                    "disabled": False,
                    "gated": False,
                    "tags": [],
                    "cardData": {},
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": name} for name in sorted(files)],
                },
            )

        def tree(self, repo: str, files: dict[str, bytes], found: re.Match, query: str, body: str) -> None:
            recursive = urllib.parse.parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
            prefix = (found.group(2) or "").strip("/")
            under = f"{prefix}/" if prefix else ""
            entries, folders = [], set()
            for name, data in sorted(files.items()):
                if not name.startswith(under):
                    continue
                parts = name[len(under) :].split("/")
                for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                    folder = under + "/".join(parts[:depth])
                    if folder not in folders:
                        folders.add(folder)
                        entries.append(_folder(folder))
                if recursive or len(parts) == 1:
                    entries.append(_entry(name, data))
            if prefix and not entries:
                return self._send(404, {"error": "Entry not found"}, error="EntryNotFound")
            self._send(200, entries)

        def paths_info(
            self, repo: str, files: dict[str, bytes], found: re.Match, query: str, body: str
        ) -> None:
            entries = []
            for path in urllib.parse.parse_qs(body).get("paths", []):
                if path in files:
                    entries.append(_entry(path, files[path]))
                elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                    entries.append(_folder(path))
            self._send(200, entries)

    return Handler

"""A static file server on 127.0.0.1 that misbehaves on purpose (honest test double).

It serves a repository folder (``metadata/`` and ``targets/``) over real HTTP/1.1, in a thread,
with Range support. Per-path behaviours turn it into an attacker or a broken network:

- ``endless``: send the file and then garbage forever (no Content-Length).
- ``trickle``: send a few bytes, pause, repeat (slow retrieval).
- ``ignore_range``: answer 200 with the whole file to a Range request.
- ``drop_after``: send N bytes of the body, then close the connection (Content-Length is the
  full size, so the client sees a truncated body).
- ``override``: serve these bytes instead of the file (stale or crafted metadata).
- ``status``: answer this HTTP status.
- ``stall_after``: send N bytes of the body, then stall until the server stops (a hung peer).

Every request is recorded (method, path, Range header) in `requests`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Behaviour:
    endless: set[str] = field(default_factory=set)
    trickle: set[str] = field(default_factory=set)
    ignore_range: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    override: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    trickle_bytes: int = 16
    trickle_pause_s: float = 0.05

    def clear(self) -> None:
        self.endless.clear()
        self.trickle.clear()
        self.ignore_range.clear()
        self.drop_after.clear()
        self.override.clear()
        self.status.clear()
        self.stall_after.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    behaviour: Behaviour
    requests: list[tuple[str, str, str | None]]
    stop: threading.Event


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        srv.requests.append(("GET", path, rng))
        beh = srv.behaviour
        if path in beh.status:
            self._simple(beh.status[path])
            return
        if path in beh.override:
            data = beh.override[path]
        else:
            rel = path.lstrip("/")
            target = (srv.root / rel).resolve()
            if srv.root not in target.parents or not target.is_file():
                self._simple(404)
                return
            data = target.read_bytes()
        try:
            if path in beh.endless:
                self._endless(data)
            elif path in beh.trickle:
                self._trickle(data)
            else:
                self._send(path, data, rng)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _simple(self, status: int) -> None:
        body = f"{status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, path: str, data: bytes, rng: str | None) -> None:
        beh = self.server.behaviour
        start = 0
        if rng and path not in beh.ignore_range and rng.startswith("bytes="):
            first = rng[len("bytes=") :].split("-")[0]
            start = int(first)
            if start >= len(data):
                self._simple(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        stall = beh.stall_after.get(path)
        if stall is not None:
            self.end_headers()
            self.wfile.write(body[:stall])
            self.wfile.flush()
            self.server.stop.wait()
            self.close_connection = True
            return
        limit = beh.drop_after.get(path)
        if limit is not None:
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[:limit])
            self.wfile.flush()
            self.close_connection = True
            return
        self.end_headers()
        self.wfile.write(body)

    def _endless(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)
        junk = b"\xee" * 65536
        sent = 0
        # Bounded only so a broken client cannot keep the thread forever.
        while sent < 1 << 30 and not self.server.stop.is_set():
            self.wfile.write(junk)
            sent += len(junk)

    def _trickle(self, data: bytes) -> None:
        beh = self.server.behaviour
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), beh.trickle_bytes):
            if self.server.stop.is_set():
                return
            self.wfile.write(data[i : i + beh.trickle_bytes])
            self.wfile.flush()
            self.server.stop.wait(beh.trickle_pause_s)


class EvilServer:
    """Handle on a running server: `url`, `behaviour`, `requests`."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}/"
        self.behaviour = server.behaviour
        self.requests = server.requests


@contextmanager
def serve(root: Path) -> Iterator[EvilServer]:
    """Serve ``root`` on 127.0.0.1 (free port) in a thread until the block ends."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.root = root.resolve()
    server.behaviour = Behaviour()
    server.requests = []
    server.stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield EvilServer(server)
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""The embedded registry's HTTP decisions [pure]: parse a request head, map its target to a
file under ``metadata/`` or ``targets/``, and plan the response (status, headers, byte span).

What it does: a deliberately small HTTP/1.1 subset for a static file server. GET and HEAD only,
no request bodies, one ``Range`` (``bytes=a-b``, ``a-``, ``-n``; 206/416; several ranges are
answered with the whole file, which RFC 9110 §14.2 allows), ``If-Range``, strong ETags,
``Last-Modified``, ``If-None-Match`` (wins over ``If-Modified-Since``), keep-alive rules of
HTTP/1.0 and 1.1, and content types (``application/json`` for ``.json``). Path rules (the
traversal defence, ADR-0003 §4): the target is percent-decoded once; after decoding, any segment
that is empty, ``.``/``..`` or starts with ``.``, any backslash, NUL, or encoded ``/`` is a 400;
anything whose first segment is not ``metadata`` or ``targets`` is a 404 (so ``keys/`` is never
reachable). The shell still refuses symlinks that leave the folder and non-regular files.

What it does not do: no sockets, no files, no clock. The shell (``server.py``) passes bytes,
``os.stat`` numbers and ``now`` in, and does the I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_to_bytes

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
SERVED_FOLDERS: tuple[str, ...] = ("metadata", "targets")
SERVER_NAME = "edgeagent-registry"

_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """A request the server answers with an error ``status`` (and closes when ``close``)."""

    def __init__(self, status: int, detail: str, *, close: bool = False) -> None:
        """Record the status and a short human-readable detail (sent as the body)."""
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.close = close


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head (header names lower-cased; repeated headers joined by ', ')."""

    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the response (RFC 9112 §9.3)."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the shell learnt about the file with ``fstat``."""

    size: int
    mtime: float
    ino: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The response to send: status, headers, then ``length`` file bytes from ``offset``."""

    status: int
    headers: list[tuple[str, str]]
    offset: int = 0
    length: int = 0
    body: bytes = b""


def parse_head(data: bytes) -> Request:
    """Parse a request head (request line + headers, without the final blank line).

    Raises:
        HttpError: malformed (400, connection closed), unsupported version (505), a request
            body (400/413) or too many headers (431).
    """
    lines = data.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN_RE.fullmatch(parts[0]):
        raise HttpError(400, "malformed request line", close=True)
    method_b, target_b, version_b = parts
    if version_b not in (b"HTTP/1.1", b"HTTP/1.0"):
        if re.fullmatch(rb"HTTP/\d\.\d", version_b):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1", close=True)
        raise HttpError(400, "malformed request line", close=True)
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many header fields", close=True)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name) or any(c < 0x20 and c != 9 for c in value):
            raise HttpError(400, "malformed header field", close=True)
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers:
        raise HttpError(400, "request bodies are not accepted", close=True)
    length = headers.get("content-length", "0").strip()
    if length != "0":
        status = 413 if length.isdigit() else 400
        raise HttpError(status, "request bodies are not accepted", close=True)
    try:
        target = target_b.decode("ascii")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "request target is not ASCII", close=True) from exc
    return Request(method_b.decode("ascii"), target, version_b.decode("ascii"), headers)


def resolve_target(target: str) -> tuple[str, ...]:
    """Map a request target to path segments under the repository folder.

    Returns:
        Segments such as ``("metadata", "1.root.json")``; the first is ``metadata``/``targets``.

    Raises:
        HttpError: 400 for traversal tricks or a malformed target, 404 for anything outside
            the two served folders (including the folders themselves).
    """
    if not target.startswith("/"):
        raise HttpError(400, "expected an origin-form target starting with '/'")
    path = target.split("?", 1)[0].split("#", 1)[0]
    raw_segments = path[1:].split("/")
    segments: list[str] = []
    for raw in raw_segments:
        decoded_b = unquote_to_bytes(raw)
        try:
            seg = decoded_b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(400, "path is not UTF-8") from exc
        if seg in ("", ".", "..") or seg.startswith("."):
            raise HttpError(400, "empty, dot or dot-dot path segment")
        if any(c in seg for c in "/\\\x00") or any(ord(c) < 0x20 for c in seg):
            raise HttpError(400, "separator or control character inside a path segment")
        segments.append(seg)
    if len(segments) < 2 or segments[0] not in SERVED_FOLDERS:
        raise HttpError(404, "only metadata/ and targets/ files are served")
    return tuple(segments)


def content_type(name: str) -> str:
    """Return the Content-Type for a served file name."""
    return "application/json" if name.endswith(".json") else "application/octet-stream"


def cache_control(name: str) -> str:
    """Return the Cache-Control for a served file name (ADR-0003 §1).

    ``timestamp.json`` and the ``root.json`` convenience copy change in place, so caches must
    revalidate them; every other served file (``N.ROLE.json``, ``<sha256>.NAME``) is immutable.
    """
    if name in ("timestamp.json", "root.json"):
        return "no-cache"
    return "public, max-age=31536000, immutable"


def http_date(ts: float) -> str:
    """Format a POSIX timestamp as an IMF-fixdate (RFC 9110 §5.6.7), locale-independent."""
    d = datetime.fromtimestamp(int(ts), UTC)
    return (
        f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year:04d} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} GMT"
    )


def etag(info: FileInfo) -> str:
    """Return a strong ETag from inode, size and mtime (changes whenever the file is replaced)."""
    return f'"{info.ino:x}-{info.size:x}-{info.mtime_ns:x}"'


def _etag_matches(header: str, tag: str) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or tag in candidates or f"W/{tag}" in candidates


def _not_modified(req: Request, info: FileInfo, tag: str) -> bool:
    inm = req.headers.get("if-none-match")
    if inm is not None:
        return _etag_matches(inm, tag)  # RFC 9110 §13.2.2: If-Modified-Since is ignored.
    ims = req.headers.get("if-modified-since")
    if ims is None:
        return False
    try:
        since = parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        return False
    return int(info.mtime) <= since.timestamp()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse one ``Range`` header value against a file of ``size`` bytes.

    Returns:
        ``(first, last)`` inclusive, or None when the header is to be ignored (malformed,
        another unit, or several ranges): the whole file is sent then.

    Raises:
        HttpError: 416 when the single range is well-formed but unsatisfiable.
    """
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None:
        return None
    first_s, last_s = m.groups()
    if not first_s and not last_s:
        return None
    if not first_s:  # Suffix range: the last n bytes.
        n = int(last_s)
        if n == 0 or size == 0:
            raise HttpError(416, "empty suffix range")
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # Invalid range-spec: ignore the header.
    if first >= size:
        raise HttpError(416, f"range starts at {first} but the file has {size} bytes")
    return first, min(last, size - 1)


def plan_file(req: Request, name: str, info: FileInfo) -> Plan:
    """Plan the response for a GET or HEAD of an existing regular file."""
    tag = etag(info)
    base = [
        ("ETag", tag),
        ("Last-Modified", http_date(info.mtime)),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", cache_control(name)),
    ]
    if _not_modified(req, info, tag):
        return Plan(304, base)
    first, last = 0, info.size - 1
    status = 200
    range_h = req.headers.get("range")
    if_range = req.headers.get("if-range")
    if range_h is not None and (if_range is None or if_range.strip() == tag):
        try:
            span = parse_range(range_h, info.size)
        except HttpError:
            return Plan(
                416,
                [*base, ("Content-Range", f"bytes */{info.size}"), ("Content-Length", "0")],
            )
        if span is not None:
            first, last = span
            status = 206
    length = last - first + 1 if info.size else 0
    headers = [*base, ("Content-Type", content_type(name)), ("Content-Length", str(length))]
    if status == 206:
        headers.append(("Content-Range", f"bytes {first}-{last}/{info.size}"))
    send = length if req.method == "GET" else 0
    return Plan(status, headers, offset=first, length=send)


def plan_error(err: HttpError) -> Plan:
    """Plan a small text/plain error response."""
    body = f"{err.status} {REASONS.get(err.status, 'Error')}: {err.detail}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if err.status == 405:
        headers.append(("Allow", "GET, HEAD"))
    return Plan(err.status, headers, body=body)


def check_method(req: Request) -> None:
    """Raise 405 unless the method is GET or HEAD."""
    if req.method not in ("GET", "HEAD"):
        raise HttpError(405, f"method {req.method} not allowed")


def render_head(plan: Plan, *, keep_alive: bool, now: float) -> bytes:
    """Render the status line and headers of ``plan`` (with Date, Server, Connection)."""
    lines = [f"HTTP/1.1 {plan.status} {REASONS.get(plan.status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in plan.headers]
    lines += [
        f"Date: {http_date(now)}",
        f"Server: {SERVER_NAME}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

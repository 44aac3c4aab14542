"""The embedded registry: a trio HTTP/1.1 server for a repository's ``metadata/`` and ``targets/``.

What it does: accepts connections, reads request heads (16 KiB cap, idle timeout), lets the pure
``server_core`` decide everything (parsing, path rules, Range/ETag/304 logic, headers), opens the
file (refusing symlinks that leave the served folder and non-regular files) and streams the
bytes with ``os.sendfile`` on the non-blocking socket, waiting for writability between calls, so
big targets go from page cache to socket without copies through Python. Keep-alive is honoured.
One INFO log line per request: peer, request line, status, body bytes.

Interface: ``await nursery.start(serve_registry, root, host, port)`` returns ``(host, port)``
with the port actually bound (pass 0 for a free one). Cancel the scope to stop it.

What it does not do: no TLS, no directory listings, no uploads, no request bodies, no
compression, no multi-range responses, never anything outside ``metadata/`` and ``targets/``
(``keys/`` in particular). It does not verify what it serves: clients do.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from functools import partial
from pathlib import Path

import trio

from edgeagent.registry.server_core import (
    MAX_HEAD_BYTES,
    FileInfo,
    HttpError,
    Plan,
    Request,
    check_method,
    parse_head,
    plan_error,
    plan_file,
    render_head,
    resolve_target,
)

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 30.0  # Named config value: a keep-alive connection idle this long is closed.
RECEIVE_SIZE = 64 * 1024
SENDFILE_CHUNK = 16 * 1024 * 1024
FALLBACK_CHUNK = 1024 * 1024
_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


def _open_file(root: Path, segments: tuple[str, ...]) -> tuple[int, FileInfo]:
    """Open the file at ``segments`` under ``root``; 404 unless it is a regular file that stays
    inside its served folder after resolving symlinks."""
    folder = os.path.realpath(root / segments[0])
    real = os.path.realpath(root.joinpath(*segments))
    if not real.startswith(folder + os.sep):
        raise HttpError(404, "not found")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise HttpError(404, "not found") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise HttpError(404, "not found")
    return fd, FileInfo(size=st.st_size, mtime=st.st_mtime, ino=st.st_ino, mtime_ns=st.st_mtime_ns)


async def _send_file(stream: trio.SocketStream, fd: int, offset: int, length: int) -> None:
    sock = stream.socket
    end = offset + length
    use_sendfile = True
    while offset < end:
        if use_sendfile:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, min(end - offset, SENDFILE_CHUNK))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                use_sendfile = False
                continue
            await trio.lowlevel.checkpoint()
        else:
            chunk = await trio.to_thread.run_sync(
                os.pread, fd, min(end - offset, FALLBACK_CHUNK), offset
            )
            await stream.send_all(chunk)
            sent = len(chunk)
        if sent == 0:
            # The file shrank under us: the declared Content-Length cannot be honoured.
            raise trio.BrokenResourceError("file shorter than its Content-Length")
        offset += sent


async def _read_head(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """Return the next request head (without the blank line), or None at a clean EOF."""
    while True:
        while buf.startswith(b"\r\n"):  # RFC 9112 §2.2: ignore empty lines before a request.
            del buf[:2]
        idx = buf.find(b"\r\n\r\n")
        if idx > MAX_HEAD_BYTES or (idx < 0 and len(buf) > MAX_HEAD_BYTES):
            raise HttpError(431, "request head too large", close=True)
        if idx >= 0:
            head = bytes(buf[:idx])
            del buf[: idx + 4]
            return head
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            if buf:
                raise HttpError(400, "connection closed mid-request", close=True)
            return None
        buf += data


async def _send_plan(
    stream: trio.SocketStream, plan: Plan, *, keep_alive: bool, head: bool
) -> None:
    await stream.send_all(render_head(plan, keep_alive=keep_alive, now=time.time()))
    if plan.body and not head:
        await stream.send_all(plan.body)


async def _respond(root: Path, stream: trio.SocketStream, req: Request, peer: str) -> bool:
    """Answer one parsed request; return whether the connection may be kept open."""
    keep_alive = req.keep_alive
    try:
        check_method(req)
        segments = resolve_target(req.target)
        fd, info = _open_file(root, segments)
    except HttpError as err:
        plan = plan_error(err)
        keep_alive = keep_alive and not err.close
        await _send_plan(stream, plan, keep_alive=keep_alive, head=req.method == "HEAD")
        log.info('%s "%s %s %s" %d -', peer, req.method, req.target, req.version, err.status)
        return keep_alive
    try:
        plan = plan_file(req, segments[-1], info)
        await _send_plan(stream, plan, keep_alive=keep_alive, head=True)
        if plan.length:
            await _send_file(stream, fd, plan.offset, plan.length)
    finally:
        os.close(fd)
    log.info(
        '%s "%s %s %s" %d %d', peer, req.method, req.target, req.version, plan.status, plan.length
    )
    return keep_alive


async def _handle_connection(root: Path, stream: trio.SocketStream) -> None:
    try:
        host, port = stream.socket.getpeername()[:2]
        peer = f"{host}:{port}"
    except OSError:
        peer = "?"
    buf = bytearray()
    try:
        while True:
            head: bytes | None = None
            req: Request | None = None
            with trio.move_on_after(IDLE_TIMEOUT_S):
                try:
                    head = await _read_head(stream, buf)
                    req = parse_head(head) if head is not None else None
                except HttpError as err:
                    await _send_plan(stream, plan_error(err), keep_alive=False, head=False)
                    log.info("%s bad request: %s", peer, err)
                    return
            if head is None or req is None:
                return
            if not await _respond(root, stream, req, peer):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("%s connection ended: %r", peer, exc)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_registry(
    root: Path,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``root/metadata`` and ``root/targets`` over HTTP until cancelled.

    Args:
        root: the repository folder (its ``keys/`` is never served).
        host: address to bind, e.g. ``127.0.0.1``.
        port: TCP port; 0 picks a free one.
        task_status: receives ``(host, bound_port)`` once the socket listens.

    Raises:
        OSError: the address cannot be bound.
    """
    root = Path(await trio.Path(root).resolve())
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("registry serving %s on http://%s:%d/", root, host, bound)
    task_status.started((host, bound))
    await trio.serve_listeners(partial(_handle_connection, root), listeners)

"""The agent's HTTP health endpoints and the optional fleet heartbeat (trio shell).

What it does: `serve_health_http` listens on the configured address and answers
``/healthz``, ``/status`` and ``/metrics`` (GET/HEAD, HTTP/1.0 and 1.1 with keep-alive) from
`AgentControl.snapshot`; `post_fleet_heartbeat` POSTs the snapshot JSON to a fleet URL on an
interval with httpx, backing off on failure and never raising into the agent.

What it does not do: no routing or rendering decisions (`health.render`), no request bodies
(a request with one is answered 400/413 and the connection closed), no TLS and no
authentication: the endpoints are read-only, and the listen address is the operator's choice.
Connections are bounded (`MAX_CONNECTIONS`), each request head must arrive within
`IDLE_TIMEOUT_S` (slow clients are dropped) and is at most 16 KiB.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import httpx
import trio

from edgeagent.control import AgentControl, snapshot_json
from edgeagent.health.render import Response, error_response, render_head, respond
from edgeagent.registry.server_core import MAX_HEAD_BYTES, HttpError, parse_head

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
RECEIVE_SIZE = 16 * 1024
HEARTBEAT_TIMEOUT_S = 10.0
HEARTBEAT_BACKOFF_MAX_S = 300.0


async def _read_head(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """Return the next request head (without its blank line), or None at a clean EOF."""
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


async def _send(stream: trio.SocketStream, resp: Response, *, keep_alive: bool, head: bool) -> None:
    data = render_head(resp, keep_alive=keep_alive, now=time.time())
    await stream.send_all(data if head else data + resp.body)


async def _handle(
    control: AgentControl, limiter: trio.CapacityLimiter, stream: trio.SocketStream
) -> None:
    try:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            resp = error_response(503, "too many connections")
            await _send(stream, resp, keep_alive=False, head=False)
            return
        try:
            await _serve_connection(control, stream)
        finally:
            limiter.release()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("health: connection ended: %r", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_connection(control: AgentControl, stream: trio.SocketStream) -> None:
    buf = bytearray()
    while True:
        head: bytes | None = None
        with trio.move_on_after(IDLE_TIMEOUT_S):
            try:
                head = await _read_head(stream, buf)
                req = parse_head(head) if head is not None else None
            except HttpError as err:
                resp = error_response(err.status, err.detail)
                await _send(stream, resp, keep_alive=False, head=False)
                return
        if head is None or req is None:
            return
        resp = respond(req, control.snapshot())
        keep_alive = req.keep_alive
        await _send(stream, resp, keep_alive=keep_alive, head=req.method == "HEAD")
        log.debug('health: "%s %s" %d', req.method, req.target, resp.status)
        if not keep_alive:
            return


async def serve_health_http(
    host: str,
    port: int,
    control: AgentControl,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/healthz``, ``/status`` and ``/metrics`` until cancelled.

    Args:
        host: address to bind, e.g. ``127.0.0.1`` or ``0.0.0.0``.
        port: TCP port; 0 picks a free one.
        control: the agent.
        task_status: started with ``(host, bound_port)`` once the socket listens.

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("health endpoints on http://%s:%d/healthz, /status, /metrics", host, bound)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
    task_status.started((host, bound))
    await trio.serve_listeners(partial(_handle, control, limiter), listeners)


async def post_fleet_heartbeat(
    url: str,
    interval_s: float,
    control: AgentControl,
    *,
    client: httpx.AsyncClient | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """POST the snapshot JSON to ``url`` every ``interval_s`` seconds until cancelled.

    A failed POST (connection error, timeout, or a non-2xx status) is logged and retried
    with exponential back-off from ``interval_s`` up to `HEARTBEAT_BACKOFF_MAX_S`; it never
    raises into the agent.

    Args:
        url: the fleet endpoint.
        interval_s: seconds between heartbeats while the endpoint is healthy.
        control: the agent.
        client: an httpx client to use (tests); one is created otherwise.
        task_status: started with None before the first POST.
    """
    owned = client is None
    http = client or httpx.AsyncClient(timeout=HEARTBEAT_TIMEOUT_S)
    delay = interval_s
    failures = 0
    try:
        task_status.started()
        while True:
            try:
                with trio.fail_after(HEARTBEAT_TIMEOUT_S):
                    resp = await http.post(url, json=snapshot_json(control.snapshot()))
                resp.raise_for_status()
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                failures += 1
                delay = min(interval_s * 2**failures, max(HEARTBEAT_BACKOFF_MAX_S, interval_s))
                log.warning(
                    "fleet heartbeat to %s failed (%s, %d in a row); next try in %.0f s",
                    url,
                    exc or type(exc).__name__,
                    failures,
                    delay,
                )
            else:
                if failures:
                    log.info("fleet heartbeat to %s works again", url)
                failures = 0
                delay = interval_s
            await trio.sleep(delay)
    finally:
        if owned:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await http.aclose()

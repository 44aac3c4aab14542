"""The diagnostics console services: a serial port (tty or pty) and a TCP variant (trio shell).

What it does: `serve_serial_console` opens a tty/pty path with pyserial (``O_RDWR|O_NOCTTY|
O_NONBLOCK``, raw 8N1 at the configured baud, an exclusive ``flock`` so two agents cannot share
a port), then drives a ``dup``'d fd it owns through `trio.lowlevel.FdStream`. On that line it
writes a periodic JSON status line and serves the interactive console (`LineEditor` +
`Session`). When the port vanishes (EOF, EIO, a USB adapter unplugged) it logs, backs off
and reopens, forever: it never takes the agent down over port I/O. `serve_console_socket`
serves the same console to TCP clients (one session per connection), so
``edgeagent console socket://HOST:PORT`` works.

What it does not do: no decisions (those live in `lineedit` and `commands`), no state of
its own beyond one session per line. Actions run one at a time per session and are bounded by
``action_deadline_s``; every write is bounded by ``write_deadline_s`` (a pty nobody reads must
not stall the console), and output that misses it is dropped and the tty's output queue
flushed. The TCP console has no authentication: bind it to loopback (the default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from functools import partial

import serial  # pyserial
import trio

from edgeagent.console.commands import RunAction, Session, status_line
from edgeagent.console.lineedit import LineEditor
from edgeagent.control import AgentControl, SerialConsoleSettings
from edgeagent.errors import EdgeAgentError

log = logging.getLogger(__name__)

READ_SIZE = 4096
MAX_TCP_SESSIONS = 8
# The I/O failures that end one session (the port vanished, the peer went away).
SESSION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _Output:
    """Serialises writes to one console line; each write is bounded by a deadline."""

    def __init__(
        self, stream: trio.abc.SendStream, deadline_s: float, on_stall: Callable[[], None]
    ) -> None:
        self._stream = stream
        self._deadline_s = deadline_s
        self._on_stall = on_stall
        self._lock = trio.Lock()
        self._cut = False  # the last write was cut short: the far end holds a partial line

    async def send(self, data: bytes) -> bool:
        """Write ``data``; return False when it was (partly) dropped because the line stalled.

        After a cut write, the next write starts with CRLF so that the partial line stays a
        line of its own instead of corrupting the next reply.
        """
        if not data:
            return True
        async with self._lock:
            if self._cut:
                data = b"\r\n" + data
            with trio.move_on_after(self._deadline_s) as scope:
                await self._stream.send_all(data)
            self._cut = scope.cancelled_caught
            if scope.cancelled_caught:
                log.warning(
                    "console output stalled for %g s (nobody reading?); dropped %d bytes",
                    self._deadline_s,
                    len(data),
                )
                self._on_stall()
                return False
            return True


async def _perform(control: AgentControl, action: RunAction, deadline_s: float) -> str:
    """Run ``action`` through ``control`` within ``deadline_s`` seconds; return its message."""
    with trio.fail_after(deadline_s):
        if action.action == "update":
            return await control.update_now()
        assert action.target is not None
        if action.action == "restart":
            return await control.restart(action.target)
        if action.action == "rollback":
            return await control.rollback(action.target)
    raise AssertionError(f"unknown console action {action.action!r}")


async def _status_loop(
    out: _Output,
    control: AgentControl,
    interval_s: float,
    frame: Callable[[bytes], bytes],
) -> None:
    while True:
        await out.send(frame(status_line(control.snapshot())))
        await trio.sleep(interval_s)


async def run_console_session(
    stream: trio.abc.Stream,
    control: AgentControl,
    settings: SerialConsoleSettings,
    *,
    on_stall: Callable[[], None] = lambda: None,
    periodic_status: bool = True,
) -> None:
    """Serve one console session on ``stream`` until EOF (returns) or an I/O error (raises).

    Args:
        stream: the line (an `FdStream` on a tty, or a TCP `SocketStream`).
        control: the agent.
        settings: policy, echo, limits and the status interval.
        on_stall: called when a write misses ``write_deadline_s`` (flush the tty queue).
        periodic_status: write the JSON status line every ``status_interval_s``.

    Raises:
        ExceptionGroup: of `SESSION_ERRORS` when the line fails.
    """
    session = Session(settings.policy, echo=settings.echo)
    editor = LineEditor(max_line=settings.max_line, echo=session.echo)
    out = _Output(stream, settings.write_deadline_s, on_stall)

    def frame(line: bytes) -> bytes:
        # On an interactive terminal the status line gets a line of its own, then the prompt
        # and the half-typed line are drawn again.
        if not session.echo:
            return line
        return b"\r\n" + line + session.prompt() + editor.pending()

    async with trio.open_nursery() as nursery:
        if periodic_status and settings.status_interval_s > 0:
            nursery.start_soon(_status_loop, out, control, settings.status_interval_s, frame)
        await out.send(session.prompt())
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                break
            fed = editor.feed(data)
            await out.send(fed.echo)
            for event in fed.events:
                outcome = session.handle_event(event, control, trio.current_time())
                if outcome is None:
                    await out.send(session.prompt())
                    continue
                if isinstance(outcome, RunAction):
                    log.info("console: %s %s", outcome.action, outcome.target or "")
                    try:
                        message = await _perform(control, outcome, settings.action_deadline_s)
                    except EdgeAgentError as exc:
                        reply = session.finish_action(outcome, failure=str(exc))
                    except trio.TooSlowError:
                        reply = session.finish_action(
                            outcome,
                            failure=f"{outcome.action} did not finish within "
                            f"{settings.action_deadline_s:g} s; it may still complete",
                        )
                    else:
                        reply = session.finish_action(outcome, message=message)
                else:
                    reply = outcome
                await out.send(session.render(reply) + session.prompt())
                editor.echo = session.echo
        nursery.cancel_scope.cancel(reason="console: end of input")


# ---- serial ----------------------------------------------------------------------------


def open_serial_fd(path_or_fd: str | int, baud: int) -> int:
    """Open and configure a serial line; return a new fd the caller owns.

    A path is opened with pyserial (``O_RDWR|O_NOCTTY|O_NONBLOCK``, raw 8N1, no flow control,
    exclusive lock), then the fd is ``dup``'d and pyserial's own fd closed (the lock stays with
    the open file). An fd is ``dup``'d and put in raw mode with termios when it is a tty.

    Raises:
        OSError: the port cannot be opened, configured or locked (``SerialException`` is one).
    """
    if isinstance(path_or_fd, int):
        fd = os.dup(path_or_fd)
        if os.isatty(fd):
            try:
                tty.setraw(fd)
                attrs = termios.tcgetattr(fd)
                speed = getattr(termios, f"B{baud}", None)
                if speed is not None:
                    attrs[4] = attrs[5] = speed
                    termios.tcsetattr(fd, termios.TCSANOW, attrs)
                _wait_for_one_byte(fd)
            except termios.error as exc:
                os.close(fd)
                raise OSError(f"cannot configure fd {path_or_fd} as a raw tty: {exc}") from exc
        return fd
    port = serial.Serial()
    port.port = path_or_fd
    port.baudrate = baud
    port.bytesize = serial.EIGHTBITS
    port.parity = serial.PARITY_NONE
    port.stopbits = serial.STOPBITS_ONE
    port.xonxoff = False
    port.rtscts = False
    port.timeout = 0
    port.exclusive = True
    port.open()
    try:
        owned: int = os.dup(port.fd)
    finally:
        port.close()
    try:
        _wait_for_one_byte(owned)
    except termios.error as exc:
        os.close(owned)
        raise OSError(f"cannot configure {path_or_fd}: {exc}") from exc
    return owned


def _wait_for_one_byte(fd: int) -> None:
    """Set VMIN=1, VTIME=0: a read returns when one byte is there, and 0 bytes only at EOF.

    pyserial leaves VMIN=VTIME=0 (it polls), where a tty read returns 0 bytes when idle,
    which `FdStream` would take for end of file.
    """
    attrs = termios.tcgetattr(fd)
    cc = attrs[6]
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _flush_output(fd: int) -> None:
    with contextlib.suppress(termios.error, OSError):
        termios.tcflush(fd, termios.TCOFLUSH)


async def serve_serial_console(
    path_or_fd: str | int,
    control: AgentControl,
    settings: SerialConsoleSettings,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the diagnostics console on a serial line until cancelled; never fails on port I/O.

    Signals started after the first open attempt, whether or not it succeeded (a missing USB
    adapter is retried with back-off, and logged at each attempt).

    Args:
        path_or_fd: the tty/pty path (reopened after failures) or an fd (``dup``'d).
        control: the agent.
        settings: baud, status interval, policy, limits and reopen back-off.
        task_status: started with None.
    """
    name = str(path_or_fd)
    backoff = settings.reopen_initial_s
    started = False
    while True:
        try:
            fd = open_serial_fd(path_or_fd, settings.baud)
        except OSError as exc:
            log.warning("console %s: cannot open: %s; retrying in %.1f s", name, exc, backoff)
        else:
            log.info("console %s: open at %d baud", name, settings.baud)
            if not started:
                task_status.started()
                started = True
            opened = trio.current_time()
            stream = trio.lowlevel.FdStream(fd)
            try:
                async with stream:
                    await run_console_session(
                        stream, control, settings, on_stall=partial(_flush_output, fd)
                    )
                log.warning("console %s: end of file (port gone?); reopening", name)
            except* SESSION_ERRORS as group:
                log.warning(
                    "console %s: I/O error (%s); reopening",
                    name,
                    "; ".join(str(e) for e in group.exceptions),
                )
            if trio.current_time() - opened > settings.reopen_max_s:
                backoff = settings.reopen_initial_s
        if not started:
            task_status.started()
            started = True
        await trio.sleep(backoff)
        backoff = min(backoff * 2, settings.reopen_max_s)


# ---- TCP -------------------------------------------------------------------------------


async def _handle_tcp(
    control: AgentControl,
    settings: SerialConsoleSettings,
    limiter: trio.CapacityLimiter,
    stream: trio.SocketStream,
) -> None:
    try:
        peer = "{}:{}".format(*stream.socket.getpeername()[:2])
    except OSError:
        peer = "?"
    try:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await stream.send_all(b'{"ok":false,"error":"too many console sessions"}\r\n')
            return
        try:
            log.info("console: session from %s", peer)
            await run_console_session(stream, control, settings)
        finally:
            limiter.release()
    except* SESSION_ERRORS as group:
        log.debug("console: session from %s ended: %r", peer, group.exceptions)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_console_socket(
    host: str,
    port: int,
    control: AgentControl,
    settings: SerialConsoleSettings,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the diagnostics console over TCP until cancelled (one session per connection).

    Args:
        host: address to bind; keep it on loopback (the console has no authentication).
        port: TCP port; 0 picks a free one.
        control: the agent.
        settings: the same settings as the serial console (reopen fields unused).
        task_status: started with ``(host, bound_port)``.

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("console listening on socket://%s:%d", host, bound)
    limiter = trio.CapacityLimiter(MAX_TCP_SESSIONS)
    task_status.started((host, bound))
    await trio.serve_listeners(partial(_handle_tcp, control, settings, limiter), listeners)

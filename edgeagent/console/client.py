"""The operator's side of the diagnostics console: `edgeagent console PORT|socket://HOST:PORT`.

What it does: opens the port with pyserial (`serial.serial_for_url`, so a tty path,
``socket://HOST:PORT`` and pyserial's other URL schemes all work), and either runs commands
one-shot (each command's reply is read as one JSON object: the client switches the session to
json mode, then renders the reply as text unless ``--json`` was asked) or bridges stdin lines to
the port and the port to stdout (interactive mode).

What it does not do: no command logic and no rendering of its own: replies are rendered by
`edgeagent.console.commands.render_text`, the same code the agent uses in text mode. It is a
synchronous program (pyserial is blocking); there is no trio here.

Framing: every request is sent as ``Ctrl-U`` + command + ``CR``; the Ctrl-U discards anything
half-typed on the line before it. The reply is the first JSON object with an ``"ok"`` key;
periodic status lines (``{"edgeagent":"status",...}``), echo and other text are skipped.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import serial  # pyserial

from edgeagent.console.commands import json_line, render_text
from edgeagent.control import JsonObject
from edgeagent.errors import EdgeAgentError

log = logging.getLogger(__name__)

KILL_LINE = b"\x15"
MAX_REPLY_BYTES = 4 * 1024 * 1024


class ConsoleClientError(EdgeAgentError):
    """The console did not answer (timeout, port closed, or an unreadable reply)."""


class Port(Protocol):
    """The part of a pyserial port the client uses."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def open_port(url: str, baud: int) -> Port:
    """Open ``url`` (a tty path or a pyserial URL such as ``socket://127.0.0.1:7000``).

    Raises:
        ConsoleClientError: the port cannot be opened (names it).
    """
    try:
        port: Port = serial.serial_for_url(url, baudrate=baud, timeout=1.0)
    except (OSError, ValueError) as exc:
        raise ConsoleClientError(f"cannot open console {url}: {exc}") from exc
    return port


@dataclass(slots=True)
class ConsoleClient:
    """Request/reply over an open console port."""

    port: Port
    timeout_s: float = 40.0
    buf: bytearray = field(default_factory=bytearray, init=False)  # bytes after the last reply

    def send_line(self, command: str) -> None:
        """Send one command line (prefixed with Ctrl-U, ended with CR)."""
        try:
            self.port.write(KILL_LINE + command.encode("utf-8") + b"\r")
            self.port.flush()
        except OSError as exc:
            raise ConsoleClientError(f"cannot write to the console: {exc}") from exc

    def _read_some(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        try:
            self.port.timeout = min(left, 1.0)
            first = self.port.read(1)
            if not first:
                return b""
            self.port.timeout = 0
            return first + self.port.read(65536)
        except OSError as exc:
            raise ConsoleClientError(f"console read failed: {exc}") from exc

    def read_reply(self) -> JsonObject:
        """Return the next reply object, skipping status lines, echo and other text.

        Raises:
            ConsoleClientError: no reply within ``timeout_s`` or the port closed.
        """
        buf = self.buf
        deadline = time.monotonic() + self.timeout_s
        while True:
            nl = buf.find(b"\n")
            while nl >= 0:
                raw = bytes(buf[:nl]).strip()
                del buf[: nl + 1]
                obj = _parse_reply(raw)
                if obj is not None:
                    return obj
                nl = buf.find(b"\n")
            if len(buf) > MAX_REPLY_BYTES:
                raise ConsoleClientError(f"console sent a line longer than {MAX_REPLY_BYTES} bytes")
            data = self._read_some(deadline)
            if not data and time.monotonic() >= deadline:
                raise ConsoleClientError(f"no reply from the console within {self.timeout_s:g} s")
            buf += data

    def request(self, command: str) -> JsonObject:
        """Send ``command`` and return its reply object."""
        self.send_line(command)
        return self.read_reply()


def _parse_reply(raw: bytes) -> JsonObject | None:
    start = raw.find(b"{")
    if start < 0:
        return None
    try:
        obj = json.loads(raw[start:])
    except ValueError:
        return None
    if isinstance(obj, dict) and "ok" in obj:
        reply: JsonObject = obj
        return reply
    return None


def run_commands(
    port: Port,
    commands: Sequence[str],
    *,
    as_json: bool,
    auto_confirm: bool,
    restore_text_mode: bool,
    timeout_s: float,
    out: TextIO,
) -> int:
    """Run ``commands`` one-shot; print each reply; return 0 when every reply is ok, else 1.

    With ``auto_confirm``, a reply asking for confirmation is answered with its token.
    """
    client = ConsoleClient(port, timeout_s)
    switched = client.request("json on")
    if switched.get("ok") is not True:
        raise ConsoleClientError(f"the console refused json mode: {switched.get('error')}")
    status = 0
    for command in commands:
        obj = client.request(command)
        token = obj.get("confirm")
        if obj.get("ok") is not True and auto_confirm and isinstance(token, str):
            obj = client.request(token)
        if as_json:
            out.write(json_line(obj).decode("ascii").rstrip("\r\n") + "\n")
        else:
            out.write(render_text(obj) + "\n")
        out.flush()
        if obj.get("ok") is not True:
            status = 1
    if restore_text_mode:
        client.request("json off")
    return status


def _pump_port_to(port: Port, out: TextIO, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            port.timeout = 0.2
            data = port.read(1)
            if data:
                port.timeout = 0
                data += port.read(65536)
        except (OSError, TypeError, AttributeError) as exc:
            if not stop.is_set():
                log.warning("console closed: %s", exc)
            return
        if data:
            out.write(data.decode("utf-8", "replace").replace("\r\n", "\n"))
            out.flush()


def run_interactive(
    port: Port, *, as_json: bool, stdin: TextIO, out: TextIO, linger_s: float = 1.0
) -> int:
    """Bridge ``stdin`` lines to the port and the port to ``out`` until stdin ends.

    After stdin's end, waits ``linger_s`` for the last replies, then returns 0.
    """
    stop = threading.Event()
    reader = threading.Thread(target=_pump_port_to, args=(port, out, stop), daemon=True)
    reader.start()
    client = ConsoleClient(port)
    client.send_line("json on" if as_json else "json off")
    try:
        for line in stdin:
            client.send_line(line.rstrip("\r\n"))
        stop.wait(linger_s)  # Let the last replies arrive before closing.
    finally:
        stop.set()
        reader.join(timeout=2.0)
    return 0


def main(
    target: str,
    commands: Sequence[str],
    *,
    baud: int = 115200,
    as_json: bool = False,
    auto_confirm: bool = False,
    timeout_s: float = 40.0,
) -> int:
    """Open ``target`` and run one-shot ``commands``, or interactive mode when there are none."""
    port = open_port(target, baud)
    try:
        if commands:
            return run_commands(
                port,
                commands,
                as_json=as_json,
                auto_confirm=auto_confirm,
                restore_text_mode=not target.startswith("socket://"),
                timeout_s=timeout_s,
                out=sys.stdout,
            )
        return run_interactive(port, as_json=as_json, stdin=sys.stdin, out=sys.stdout)
    finally:
        port.close()

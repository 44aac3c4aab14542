"""The serial diagnostics console over a REAL pty.

The agent side (`serve_serial_console`) opens the pty's slave by path, exactly as it opens
/dev/ttyUSB0 on a device; the test is the operator at the other end of the cable (the master).
The agent behind the console is `FakeControl`, an honest in-memory test double.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from edgeagent.console.service import open_serial_fd, serve_serial_console
from edgeagent.control import ConsolePolicy, SerialConsoleSettings
from tests.fakes.fake_control import FakeControl

IO_DEADLINE_S = 10


@dataclass
class Operator:
    """The far end of the serial line: writes bytes, reads lines and replies."""

    stream: trio.lowlevel.FdStream
    buf: bytearray = field(default_factory=bytearray)
    status_lines: list[dict[str, object]] = field(default_factory=list)
    garbage: list[bytes] = field(default_factory=list)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(4096)
            assert data, "console closed"
            self.buf += data
        raw, _, rest = bytes(self.buf).partition(b"\n")
        self.buf[:] = rest
        return raw.rstrip(b"\r")

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            data = await self.stream.receive_some(4096)
            assert data, "console closed"
            self.buf += data
        head, _, rest = bytes(self.buf).partition(marker)
        self.buf[:] = rest
        return head

    async def reply(self) -> dict[str, object]:
        """Return the next reply object; collect periodic status lines on the way."""
        while True:
            raw = await self.line()
            try:
                obj = json.loads(raw)
            except ValueError:
                # Echo, prompts, or a line cut short when stalled output was flushed.
                self.garbage.append(raw)
                continue
            if "ok" in obj:
                return obj  # type: ignore[no-any-return]
            assert obj.get("edgeagent") == "status", obj
            self.status_lines.append(obj)

    async def request(self, command: str) -> dict[str, object]:
        await self.send(command.encode() + b"\r")
        return await self.reply()


def make_pty(tmp_path: Path, name: str = "ttyUSB0") -> tuple[int, int, Path]:
    """Return (master, slave, link): a pty pair and a stable symlink to its slave."""
    master, slave = os.openpty()
    link = tmp_path / name
    link.unlink(missing_ok=True)
    link.symlink_to(os.ttyname(slave))
    return master, slave, link


def settings(**kw: object) -> SerialConsoleSettings:
    base: dict[str, object] = {
        "path": "",
        "status_interval_s": 0.0,
        "policy": ConsolePolicy(restart="confirm", update="allowed", rollback="disabled"),
        "reopen_initial_s": 0.01,
        "reopen_max_s": 0.05,
        "write_deadline_s": 0.5,
    }
    base.update(kw)
    return SerialConsoleSettings(**base)  # type: ignore[arg-type]


class LogWaiter(logging.Handler):
    """Collects the console service's log messages; lets a test wait for one to appear."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._changed.set()

    def seen(self, fragment: str) -> bool:
        return any(fragment in m for m in self.messages)

    async def wait_for(self, fragment: str) -> None:
        while not self.seen(fragment):
            self._changed = trio.Event()
            await self._changed.wait()


@pytest.fixture
def logs() -> Iterator[LogWaiter]:
    logger = logging.getLogger("edgeagent.console.service")
    waiter = LogWaiter()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(waiter)
    yield waiter
    logger.removeHandler(waiter)
    logger.setLevel(old_level)


@pytest.fixture
async def fake() -> FakeControl:
    return FakeControl.with_demo_workloads()


async def start_console(
    nursery: trio.Nursery, tmp_path: Path, control: FakeControl, cfg: SerialConsoleSettings
) -> tuple[Operator, int]:
    master, slave, link = make_pty(tmp_path)
    await nursery.start(serve_serial_console, str(link), control, cfg)
    op = Operator(trio.lowlevel.FdStream(master))
    return op, slave


@pytest.fixture
async def console(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeControl
) -> AsyncIterator[Operator]:
    op, slave = await start_console(nursery, tmp_path, fake, settings())
    with trio.fail_after(IO_DEADLINE_S):
        assert (await op.request("json on"))["ok"] is True
    yield op
    nursery.cancel_scope.cancel()
    os.close(slave)
    await op.stream.aclose()


async def test_status_reply_in_json_mode(console: Operator, fake: FakeControl) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        obj = await console.request("status")
    assert obj["ok"] is True
    assert obj["cmd"] == "status"
    data = obj["data"]
    assert isinstance(data, dict)
    assert data["agent"]["device_id"] == "dev-0001"
    assert [w["name"] for w in data["workloads"]] == ["ticker", "kvstore"]


async def test_crlf_variants_each_give_one_reply(console: Operator) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        await console.send(b"version\r\nvms\nnet\rtrust\r\n")
        cmds = [(await console.reply())["cmd"] for _ in range(4)]
    assert cmds == ["version", "vms", "net", "trust"]


async def test_binary_noise_is_rejected_and_the_line_recovers(console: Operator) -> None:
    noise = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * 3
    noise = noise.replace(b"\x15", b"").replace(b"\x03", b"")
    with trio.fail_after(IO_DEADLINE_S):
        await console.send(noise + b"\r")
        obj = await console.reply()
        assert obj["ok"] is False
        assert "not executed" in str(obj["error"])
        assert (await console.request("version"))["ok"] is True


async def test_command_hidden_in_noise_is_not_executed(
    console: Operator, fake: FakeControl
) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        obj = await console.request("up\x00date")
    assert obj["ok"] is False
    assert "binary noise" in str(obj["error"])
    assert fake.actions == []


async def test_overlong_line_is_one_error(console: Operator) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        await console.send(b"logs " + b"A" * 20000 + b"\r")
        obj = await console.reply()
        assert "longer than 256 bytes" in str(obj["error"])
        assert (await console.request("vms"))["cmd"] == "vms"


async def test_confirmation_flow_over_serial(console: Operator, fake: FakeControl) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        ask = await console.request("restart ticker")
        assert ask["ok"] is False
        assert ask["confirm"] == "yes ticker"
        assert fake.actions == []
        done = await console.request("yes ticker")
    assert done == {
        "ok": True,
        "cmd": "restart",
        "data": {"target": "ticker", "message": "restarted ticker v2"},
    }
    assert fake.actions == [("restart", "ticker")]


async def test_disabled_command_is_refused(console: Operator, fake: FakeControl) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        obj = await console.request("rollback ticker")
    assert obj["ok"] is False
    assert "disabled" in str(obj["error"])
    assert fake.actions == []


async def test_allowed_action_and_refusal_from_the_agent(
    console: Operator, fake: FakeControl
) -> None:
    with trio.fail_after(IO_DEADLINE_S):
        assert (await console.request("update"))["ok"] is True
        fake.refuse_update = True
        obj = await console.request("update")
    assert obj == {"ok": False, "cmd": "update", "error": "an update is already running"}
    assert fake.actions == [("update", None)]


async def test_text_mode_with_echo_and_prompt(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeControl
) -> None:
    op, slave = await start_console(nursery, tmp_path, fake, settings(echo=True))
    with trio.fail_after(IO_DEADLINE_S):
        await op.until(b"edgeagent> ")
        await op.send(b"vmx\x7fs\r")
        out = await op.until(b"edgeagent> ")
    assert out.startswith(b"vmx\b \bs\r\n")
    assert b"NAME" in out
    assert b"ticker" in out
    os.close(slave)


async def test_status_line_redraws_the_half_typed_line_on_a_terminal(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeControl
) -> None:
    cfg = settings(echo=True, status_interval_s=0.02)
    op, slave = await start_console(nursery, tmp_path, fake, cfg)
    with trio.fail_after(IO_DEADLINE_S):
        await op.send(b"vm")
        await op.until(b"vm")  # the echo
        await op.until(b'{"edgeagent":"status"')
        await op.until(b"\r\nedgeagent> vm")
        await op.send(b"s\r")
        await op.until(b"RESTARTS")  # the vms table header: "vm" + "s" ran as one command
    os.close(slave)


async def test_periodic_status_line(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeControl
) -> None:
    op, slave = await start_console(nursery, tmp_path, fake, settings(status_interval_s=0.02))
    with trio.fail_after(IO_DEADLINE_S):
        first = json.loads(await op.line())
        fake.workloads.pop("kvstore")
        while True:
            later = json.loads(await op.line())
            if later["healthy"]:
                break
    assert first["edgeagent"] == "status"
    assert first["healthy"] is False
    assert [w["name"] for w in later["workloads"]] == ["ticker"]
    os.close(slave)


async def test_port_unplugged_and_replugged_is_reopened(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeControl, logs: LogWaiter
) -> None:
    op, slave = await start_console(nursery, tmp_path, fake, settings())
    with trio.fail_after(IO_DEADLINE_S):
        assert (await op.request("json on"))["ok"] is True
        # Unplug: the far end vanishes and the device node goes away.
        await op.stream.aclose()
        os.close(slave)
        (tmp_path / "ttyUSB0").unlink()
        await logs.wait_for("cannot open")
        # Replug: a new device appears under the same name.
        master2, slave2, _ = make_pty(tmp_path)
        op2 = Operator(trio.lowlevel.FdStream(master2))
        while True:
            await op2.send(b"\x15json on\r")
            with trio.move_on_after(0.2):
                if (await op2.reply())["ok"] is True:
                    break
        assert (await op2.request("version"))["cmd"] == "version"
    assert logs.seen("reopening")
    os.close(slave2)
    await op2.stream.aclose()


async def test_console_survives_a_reader_that_never_reads(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeControl, logs: LogWaiter
) -> None:
    op, slave = await start_console(
        nursery, tmp_path, fake, settings(status_interval_s=0.001, write_deadline_s=0.05)
    )
    with trio.fail_after(IO_DEADLINE_S):
        # Nobody reads: the periodic lines fill the pty until writes stall.
        await logs.wait_for("stalled")
        # An operator arrives and talks: the console still answers.
        await op.send(b"\x15json on\r")
        while True:
            obj = await op.reply()
            if obj.get("cmd") == "json":
                break
    os.close(slave)


def test_second_agent_cannot_open_the_same_port(tmp_path: Path) -> None:
    master, slave, link = make_pty(tmp_path)
    fd = open_serial_fd(str(link), 115200)
    try:
        with pytest.raises(OSError, match="lock"):
            open_serial_fd(str(link), 115200)
    finally:
        os.close(fd)
        os.close(slave)
        os.close(master)


async def test_console_on_an_inherited_fd(nursery: trio.Nursery, fake: FakeControl) -> None:
    master, slave = os.openpty()
    await nursery.start(serve_serial_console, slave, fake, settings())
    op = Operator(trio.lowlevel.FdStream(master))
    with trio.fail_after(IO_DEADLINE_S):
        assert (await op.request("json on"))["ok"] is True
    os.close(slave)

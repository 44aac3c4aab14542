"""The TCP console and the operator's client, `edgeagent console socket://HOST:PORT`.

The client runs as a real subprocess through `edgeagent.cli.main` (registering the ``console``
command in-process when the checkout's cli does not list it yet). The agent behind the console
is `FakeControl`, an honest in-memory test double.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from edgeagent.console.service import MAX_TCP_SESSIONS, serve_console_socket
from edgeagent.control import ConsolePolicy, SerialConsoleSettings
from tests.fakes.fake_control import FakeControl

DEADLINE_S = 30
CLI = "import sys, edgeagent.cli as c\nsys.exit(c.main(sys.argv[1:]))\n"
SETTINGS = SerialConsoleSettings(
    path="",
    status_interval_s=0.05,  # periodic lines interleave with replies: the client must skip them
    policy=ConsolePolicy(restart="confirm", update="allowed", rollback="disabled"),
)


@pytest.fixture
async def fake() -> FakeControl:
    return FakeControl.with_demo_workloads()


@pytest.fixture
async def url(nursery: trio.Nursery, fake: FakeControl) -> str:
    host, port = await nursery.start(serve_console_socket, "127.0.0.1", 0, fake, SETTINGS)
    return f"socket://{host}:{port}"


async def edgeagent(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(DEADLINE_S):
        return await trio.run_process(
            [sys.executable, "-c", CLI, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_one_shot_status_json(url: str) -> None:
    proc = await edgeagent("console", url, "-c", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["ok"] is True
    assert obj["cmd"] == "status"
    assert obj["data"]["agent"]["device_id"] == "dev-0001"


async def test_one_shot_text_replies_and_failure_status(url: str) -> None:
    proc = await edgeagent(
        "console", url, "-c", "vms", "-c", "logs ticker -n 2", "-c", "frobnicate"
    )
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "NAME" in out
    assert "tick 48\ntick 49\n" in out
    assert "error: unknown command 'frobnicate'; type 'help' for the list" in out


async def test_confirmation_needed_then_given_with_yes(url: str, fake: FakeControl) -> None:
    proc = await edgeagent("console", url, "-c", "restart ticker")
    assert proc.returncode == 1
    assert b"type 'yes ticker'" in proc.stdout
    assert fake.actions == []
    proc = await edgeagent("console", url, "-c", "restart ticker", "--yes", "--json")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["data"]["message"] == "restarted ticker v2"
    assert fake.actions == [("restart", "ticker")]


async def test_unreachable_console_exits_1_with_a_clear_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        proc = await edgeagent("console", f"socket://127.0.0.1:{port}", "-c", "status")
    assert proc.returncode == 1
    assert b"edgeagent: error: cannot open console socket://127.0.0.1:" in proc.stderr


async def test_interactive_mode_bridges_stdin_and_stdout(url: str) -> None:
    proc = await edgeagent("console", url, stdin=b"version\nvms\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "edgeagent 0.1.0 on device dev-0001" in out
    assert "ticker" in out


async def test_sessions_are_independent(url: str) -> None:
    host, port = url.removeprefix("socket://").split(":")
    with trio.fail_after(DEADLINE_S):
        a = await trio.open_tcp_stream(host, int(port))
        b = await trio.open_tcp_stream(host, int(port))
        async with a, b:
            await a.send_all(b"json on\r")
            await b.send_all(b"version\r")
            got_a = await _read_until(a, b'"cmd":"json"')
            got_b = await _read_until(b, b"edgeagent 0.1.0 on device")
    assert b"ok" in got_a
    assert b'"cmd"' not in got_b  # b stayed in text mode


async def test_too_many_sessions_are_refused(url: str) -> None:
    host, port = url.removeprefix("socket://").split(":")
    streams = []
    with trio.fail_after(DEADLINE_S):
        for _ in range(MAX_TCP_SESSIONS):
            s = await trio.open_tcp_stream(host, int(port))
            streams.append(s)
            await s.send_all(b"json on\r")
            await _read_until(s, b'"cmd":"json"')
        extra = await trio.open_tcp_stream(host, int(port))
        refused = await _read_until(extra, b"too many console sessions")
        await extra.aclose()
        for s in streams:
            await s.aclose()
    assert refused.startswith(b'{"ok":false')


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before {marker!r}; got {data!r}"
        data += chunk
    return data


async def test_confirmation_from_another_session_is_not_accepted(
    url: str, fake: FakeControl
) -> None:
    host, port = url.removeprefix("socket://").split(":")
    with trio.fail_after(DEADLINE_S):
        a = await trio.open_tcp_stream(host, int(port))
        b = await trio.open_tcp_stream(host, int(port))
        async with a, b:
            await a.send_all(b"restart ticker\r")
            await _read_until(a, b"type 'yes ticker'")
            await b.send_all(b"yes ticker\r")
            refused = await _read_until(b, b"nothing to confirm")
            await a.send_all(b"yes ticker\r")
            await _read_until(a, b"restarted ticker v2")
    assert b"error" in refused
    assert fake.actions == [("restart", "ticker")]

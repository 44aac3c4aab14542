"""Persisted agent state: lock, atomic state file, volumes, console ring buffer, orphans."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.agent.desired import TargetEntry, parse_workload
from edgeagent.agent.state import (
    CONSOLE_LINE_MAX,
    CONSOLE_LINES,
    CONSOLE_LOG_BYTES,
    AgentBusyError,
    ConsoleLog,
    LineFramer,
    StateFile,
    StateLock,
    WorkloadState,
    ensure_volume,
    is_gone,
    kill_orphans,
    parse_state,
    process_start_ticks,
    render_state,
)
from edgeagent.errors import ConfigError
from edgeagent.publisher.policy import target_custom


def test_second_agent_on_the_same_state_folder_refuses(tmp_path: Path) -> None:
    state = tmp_path
    first = StateLock(state)
    first.acquire()
    try:
        with pytest.raises(AgentBusyError, match="another edgeagent agent is running"):
            StateLock(state).acquire()
    finally:
        first.release()
    again = StateLock(state)
    again.acquire()
    again.release()


def test_state_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    state_dir = tmp_path
    w = parse_workload(TargetEntry("kv", 10, "b" * 64, target_custom(version="3", block=["s"])))
    ws = {
        "kv": WorkloadState(
            current=w,
            phase="health-window",
            bad=[("kv", "2", "c" * 64)],
            pids=[(123, 456)],
            last_error="x",
        )
    }
    f = StateFile(state_dir)
    f.save(ws)
    loaded = f.load()
    assert loaded["kv"].current == w
    assert loaded["kv"].phase == "health-window"
    assert loaded["kv"].bad == [("kv", "2", "c" * 64)]
    assert loaded["kv"].pids == [(123, 456)]
    assert [p.name for p in state_dir.iterdir()] == ["state.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{", "not valid JSON"),
        (b'{"schema": 2, "workloads": {}}', "schema"),
        (b'{"schema": 1, "workloads": []}', "workloads"),
        (b'{"schema": 1, "workloads": {"a": {"phase": "dancing"}}}', "phase"),
        (b'{"schema": 1, "workloads": {"../x": {}}}', "target name"),
        (b'{"schema": 1, "workloads": {"a": {"bad": [1]}}}', "bad"),
        (b'{"schema": 1, "workloads": {"a": {"pids": [["1", 2]]}}}', "pids"),
        (b'{"schema": 1, "workloads": {"a": {"current": {"name": "a"}}}}', "current"),
    ],
)
def test_malformed_state_file_is_a_config_error_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_state(data, "state.json")


@given(st.binary(max_size=200))
def test_state_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_state(data, "state.json")


def test_empty_state_renders_and_parses() -> None:
    assert parse_state(render_state({}), "s") == {}


def test_volume_follows_the_workload_and_keeps_its_bytes(tmp_path: Path) -> None:
    state_dir = tmp_path
    p = ensure_volume(state_dir, "kv", "storage")
    assert p == state_dir / "volumes" / "kv" / "storage.img"
    with p.open("r+b") as f:
        f.write(b"KVS1data")
    assert ensure_volume(state_dir, "kv", "storage").read_bytes()[:8] == b"KVS1data"


def test_console_framer_handles_binary_noise_and_overlong_lines() -> None:
    f = LineFramer()
    assert f.feed(b"HEART") == []
    assert f.feed(b"BEAT seq=1 uptime_ms=5\r\n\x00\x1b[2Jbin\xff\n") == [
        "HEARTBEAT seq=1 uptime_ms=5",
        "??[2Jbin\ufffd",
    ]
    flood = f.feed(b"x" * (CONSOLE_LINE_MAX * 3))
    assert len(flood) == 1
    assert flood[0].endswith("[cut]")
    assert f.feed(b"x" * 10 + b"\nnext\n") == ["next"]


def test_console_log_is_bounded_rotated_and_survives_restart(tmp_path: Path) -> None:
    state_dir = tmp_path
    log = ConsoleLog(state_dir, "flood")
    line = "y" * 99
    for _ in range(3 * CONSOLE_LOG_BYTES // 100):
        log.add([line])
    log.mark("done")
    log.close()
    assert len(log.lines) == CONSOLE_LINES
    files = sorted(p.name for p in (state_dir / "console").iterdir())
    assert files == ["flood.log", "flood.log.1"]
    for p in (state_dir / "console").iterdir():
        assert p.stat().st_size <= CONSOLE_LOG_BYTES
    again = ConsoleLog(state_dir, "flood")
    assert again.tail(1) == ["[agent] done"]
    assert again.tail(3)[:2] == [line, line]
    assert again.tail(0) == []
    again.close()


def test_orphaned_guest_of_a_killed_agent_is_killed_but_a_reused_pid_is_not() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = process_start_ticks(proc.pid)
        assert ticks is not None
        assert kill_orphans([(proc.pid, ticks + 1)]) == []  # Start time differs: not ours.
        assert not is_gone(proc.pid)
        assert kill_orphans([(proc.pid, ticks)]) == [proc.pid]
        proc.wait(timeout=10)
        assert is_gone(proc.pid)
    finally:
        proc.kill()
        proc.wait()

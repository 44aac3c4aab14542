"""Restart policy: back-off, crash loops, heartbeat deadlines, one-shot jobs (pure, no clock)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.agent.policy import TRANSITIONS, RestartPolicy, RestartSettings

S = RestartSettings(
    heartbeat_deadline_s=5.0,
    backoff_initial_s=1.0,
    backoff_max_s=8.0,
    crash_loop_restarts=4,
    crash_loop_window_s=60.0,
)


def state_of(p: RestartPolicy) -> str:
    return p.state


def crash(p: RestartPolicy, now: float) -> float | None:
    p.booted(now)
    return p.exited(now + 0.1, ok=False, stopped_by_agent=False, message="exit 2")


def test_backoff_doubles_up_to_the_maximum_then_crash_loop() -> None:
    p = RestartPolicy(S)
    delays = []
    now = 0.0
    for _ in range(3):
        at = crash(p, now)
        assert at is not None
        delays.append(round(at - (now + 0.1), 3))
        assert p.state == "backoff"
        now = at
    assert delays == [1.0, 2.0, 4.0]
    at = crash(p, now)
    assert p.state == "crashloop"
    assert at == pytest.approx(now + 0.1 + S.backoff_max_s)
    assert "crash loop" in p.reason
    assert not p.healthy
    assert p.restarts == 4


def test_crash_loop_needs_restarts_within_the_window() -> None:
    p = RestartPolicy(S)
    now = 0.0
    for _ in range(6):
        crash(p, now)
        p.booted(now + 20)
        p.heartbeat(now + 21)  # Healthy in between: back-off resets.
        p.exited(now + 25, ok=False, stopped_by_agent=False, message="x")
        now += 100.0  # Far apart: never N within the window.
        assert p.state == "backoff"


def test_heartbeat_resets_the_backoff() -> None:
    p = RestartPolicy(S)
    crash(p, 0.0)
    crash(p, 2.0)
    p.booted(10.0)
    p.heartbeat(11.0)
    assert p.failures == 0
    at = p.exited(12.0, ok=False, stopped_by_agent=False, message="x")
    assert at == pytest.approx(13.0)


def test_guest_that_never_heartbeats_becomes_unhealthy_and_its_exit_is_a_failure() -> None:
    p = RestartPolicy(S)
    p.booted(0.0)
    assert p.deadline() == 5.0
    assert not p.check(4.9)
    assert p.check(5.0)
    assert p.unhealthy
    assert "no first heartbeat within 5 s" in p.reason
    # The supervisor stops it; the stop is not an operator stop, so it counts.
    at = p.exited(5.5, ok=True, stopped_by_agent=True, message="signal")
    assert at is not None
    assert p.state == "backoff"


def test_heartbeat_deadline_follows_the_last_beat() -> None:
    p = RestartPolicy(S)
    p.booted(0.0)
    p.heartbeat(3.0)
    assert p.state == "running"
    assert p.deadline() == 8.0
    assert p.check(8.0)
    assert "no heartbeat within" in p.reason


def test_one_shot_exit_zero_completes_without_restart() -> None:
    p = RestartPolicy(S)
    p.booted(0.0)
    assert p.exited(0.2, ok=True, stopped_by_agent=False, message="exit 0") is None
    assert p.state == "stopped"
    assert p.healthy


def test_agent_stop_is_not_a_failure_and_operator_restart_restarts() -> None:
    p = RestartPolicy(S)
    p.booted(0.0)
    p.heartbeat(1.0)
    assert p.exited(2.0, ok=False, stopped_by_agent=True, message="signal") is None
    assert p.state == "stopped"
    assert p.failures == 0
    p.restart()
    assert p.next_start_at is None
    p.booted(3.0)
    assert state_of(p) == "starting"


def test_without_required_heartbeats_there_is_no_deadline() -> None:
    p = RestartPolicy(RestartSettings(heartbeat_required=False))
    p.booted(0.0)
    assert p.deadline() is None
    assert not p.check(1e9)
    assert p.healthy


def test_event_in_wrong_state_is_a_programming_error() -> None:
    p = RestartPolicy(S)
    with pytest.raises(RuntimeError, match="exited_ok"):
        p.exited(0.0, ok=True, stopped_by_agent=False, message="")


_EVENTS = st.sampled_from(["boot", "beat", "check", "ok", "fail", "stop", "restart"])


@given(st.lists(st.tuples(_EVENTS, st.floats(0, 10)), max_size=40))
def test_any_event_sequence_keeps_invariants(events: list[tuple[str, float]]) -> None:
    p = RestartPolicy(S)
    now = 0.0
    for event, dt in events:
        now += dt
        live = p.state in ("starting", "running")
        if event == "boot" and not live:
            p.booted(now)
        elif event == "beat":
            p.heartbeat(now)
        elif event == "check":
            p.check(now)
        elif event in ("ok", "fail") and live:
            at = p.exited(now, ok=event == "ok", stopped_by_agent=False, message="m")
            if at is not None:
                assert now < at <= now + S.backoff_max_s
        elif event == "stop":
            p.stopped()
        elif event == "restart":
            p.restart()
        assert p.state in {s for (s, _e) in TRANSITIONS} | {"crashloop"}
        assert p.failures >= 0
        assert p.restarts >= p.failures


PURE = ["desired.py", "policy.py", "ota.py"]
BANNED = {"trio", "socket", "subprocess", "os", "time", "random", "httpx", "shutil", "pathlib"}


@pytest.mark.parametrize("name", PURE)
def test_agent_decision_cores_import_no_io(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "edgeagent" / "agent" / name
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    assert not found & BANNED

"""OTA phase machine: transitions, health-window verdicts, recovery after a kill (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.agent import ota
from edgeagent.agent.ota import Trial, judge, recover, step


def test_happy_path_phases() -> None:
    p: ota.Phase = "idle"
    for event, expected in [
        ("offer", "pulling"),
        ("pulled", "verified"),
        ("starting", "starting-new"),
        ("started", "health-window"),
        ("commit", "committed"),
        ("offer", "pulling"),
    ]:
        p = step(p, event)  # type: ignore[arg-type]
        assert p == expected


def test_rollback_from_health_window_and_from_boot_failure() -> None:
    assert step("health-window", "rollback") == "rolled-back"
    assert step("starting-new", "rollback") == "rolled-back"
    assert step("rolled-back", "offer") == "pulling"


def test_first_install_commits_without_a_window() -> None:
    assert step("verified", "install") == "committed"


def test_second_offer_during_an_update_is_refused() -> None:
    for phase in ("pulling", "verified", "starting-new", "health-window"):
        with pytest.raises(RuntimeError, match="offer"):
            step(phase, "offer")


def test_kill_at_any_phase_recovers_to_a_resting_or_retryable_phase() -> None:
    assert recover("health-window") == "verified"
    assert recover("starting-new") == "verified"
    assert recover("pulling") == "idle"
    for phase in ota.RESTING:
        assert recover(phase) == phase
    for phase in ota.PHASES:
        assert recover(phase) in (*ota.RESTING, "verified")


def test_two_writer_rule() -> None:
    assert ota.must_stop_old_first(("storage",))
    assert not ota.must_stop_old_first(())


def test_candidate_that_exits_nonzero_is_rolled_back() -> None:
    t = Trial(started_at=0.0, heartbeats=3, exit_ok=False)
    assert judge(t, 0.5, window_s=10, heartbeat_required=True) == "rollback"


def test_candidate_that_misses_heartbeats_is_rolled_back() -> None:
    t = Trial(started_at=0.0, unhealthy=True)
    assert judge(t, 0.5, window_s=10, heartbeat_required=True) == "rollback"


def test_candidate_commits_only_after_the_window_and_a_heartbeat() -> None:
    assert judge(Trial(0.0, heartbeats=5), 9.9, window_s=10, heartbeat_required=True) == "wait"
    assert judge(Trial(0.0, heartbeats=0), 10.0, window_s=10, heartbeat_required=True) == "wait"
    assert judge(Trial(0.0, heartbeats=1), 10.0, window_s=10, heartbeat_required=True) == "commit"
    assert judge(Trial(0.0), 10.0, window_s=10, heartbeat_required=False) == "commit"


def test_one_shot_candidate_that_exits_zero_commits_at_once() -> None:
    assert judge(Trial(0.0, exit_ok=True), 0.1, window_s=10, heartbeat_required=True) == "commit"


@given(
    st.floats(0, 100),
    st.integers(0, 5),
    st.sampled_from([None, True, False]),
    st.booleans(),
    st.floats(0, 20),
)
def test_failure_always_wins(
    now: float, beats: int, exit_ok: bool | None, unhealthy: bool, window: float
) -> None:
    verdict = judge(
        Trial(0.0, heartbeats=beats, exit_ok=exit_ok, unhealthy=unhealthy),
        now,
        window_s=window,
        heartbeat_required=True,
    )
    if unhealthy or exit_ok is False:
        assert verdict == "rollback"
    elif verdict == "commit":
        assert exit_ok is True or (now >= window and beats > 0)

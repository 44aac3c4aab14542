"""The trusted clock (ADR-0004): pure rules and the persisted floor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgeagent.errors import StoreError
from edgeagent.verify import clock
from edgeagent.verify.clock import TrustedClock

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = datetime(2026, 1, 1, tzinfo=UTC)


def test_without_floor_the_system_clock_rules() -> None:
    assert clock.trusted_now(EPOCH, None, 5.0) == EPOCH


def test_floor_advances_with_monotonic_time_when_system_clock_is_behind() -> None:
    assert clock.trusted_now(EPOCH, T, 60.0) == T + timedelta(seconds=60)


def test_system_clock_ahead_of_floor_wins() -> None:
    assert clock.trusted_now(T + timedelta(days=1), T, 1.0) == T + timedelta(days=1)


def test_negative_elapsed_never_moves_time_back() -> None:
    assert clock.trusted_now(EPOCH, T, -100.0) == T


def test_floor_never_goes_down() -> None:
    assert clock.raised_floor(T, EPOCH) == T
    assert clock.raised_floor(None, EPOCH) == EPOCH


def test_floor_round_trip_and_bad_file() -> None:
    assert clock.parse_floor(clock.render_floor(T), "f") == T
    with pytest.raises(StoreError, match=r"STATE/clock-floor: bad clock floor"):
        clock.parse_floor(b"v1 yesterday", "STATE/clock-floor")
    with pytest.raises(StoreError, match="bad clock floor"):
        clock.parse_floor(b"v1 2026-01-01T00:00:00", "f")  # No zone.


def test_trusted_clock_persists_floor(tmp_path: Path) -> None:
    assert TrustedClock(tmp_path / "state").floor is None
    c = TrustedClock(tmp_path / "state")
    c.commit()
    first = c.floor
    assert first is not None
    again = TrustedClock(tmp_path / "state")
    assert again.floor == first
    assert again.now() >= first
    assert (tmp_path / "state" / clock.FLOOR_FILE).read_bytes().startswith(b"v1 ")


def test_floor_written_only_when_it_moved_a_step() -> None:
    assert clock.floor_needs_write(None, T)
    assert not clock.floor_needs_write(T, T + timedelta(seconds=5))
    assert clock.floor_needs_write(T, T + clock.FLOOR_WRITE_STEP)

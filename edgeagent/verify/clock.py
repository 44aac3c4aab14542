"""The trusted clock used to judge metadata expiry (ADR-0004).

What it does: answers "what time is it, for expiry checks?" as
``max(system clock, persisted floor + monotonic time elapsed since the floor was loaded)`` and
raises the persisted floor after each successful metadata update. The pure part
(`trusted_now`, `raised_floor`, `parse_floor`, `render_floor`) decides; `TrustedClock` does the
file I/O (atomic write: temp file, fsync, rename, fsync the folder) and reads the clocks.
`SystemClock` is the plain system clock (for ``edgeagent tuf-client``, so that ``faketime``
works as the TUF conformance suite expects).

What it does not do: it does not get time from the network (no NTP/roughtime) and it cannot make a
device whose clock is at 1970 detect a freeze attack on its very first update: version
rollback checks protect that device until its clock is right (ADR-0004).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from edgeagent.errors import StoreError

log = logging.getLogger(__name__)

FLOOR_FILE = "clock-floor"  # Deliberately not *.json: it is not TUF metadata.
FLOOR_FORMAT_VERSION = 1
FLOOR_WRITE_STEP = timedelta(minutes=1)


class Clock(Protocol):
    """A source of "now" for expiry checks."""

    def now(self) -> datetime:
        """Return the current trusted time (timezone-aware, UTC)."""
        ...

    def commit(self) -> None:
        """Record that an update succeeded at `now()` (raise the floor, if any)."""
        ...


# Pure part ----------------------------------------------------------------------------------


def trusted_now(system_now: datetime, floor: datetime | None, elapsed_s: float) -> datetime:
    """Return max(system_now, floor + elapsed) (ADR-0004 §2).

    Args:
        system_now: the system clock reading (may be 1970 on a device without RTC).
        floor: the persisted floor, or None when no update has ever succeeded.
        elapsed_s: monotonic seconds since the floor was read; negative values count as 0.
    """
    if floor is None:
        return system_now
    return max(system_now, floor + timedelta(seconds=max(0.0, elapsed_s)))


def raised_floor(old: datetime | None, now: datetime) -> datetime:
    """Return the new floor after a successful update at trusted time ``now``: never lower."""
    return now if old is None else max(old, now)


def floor_needs_write(persisted: datetime | None, new: datetime) -> bool:
    """Persist only when the floor moved by at least `FLOOR_WRITE_STEP` (ADR-0004 §2).

    Skipping smaller steps saves two fsyncs per refresh; the persisted floor then lags the
    true one by less than the step, which only widens the freeze window by that much.
    """
    return persisted is None or new - persisted >= FLOOR_WRITE_STEP


def render_floor(floor: datetime) -> bytes:
    """Serialise a floor (``v1 <ISO-8601 UTC>``)."""
    return f"v{FLOOR_FORMAT_VERSION} {floor.astimezone(UTC).isoformat()}\n".encode()


def parse_floor(data: bytes, source: str) -> datetime:
    """Parse a floor written by `render_floor`.

    Raises:
        StoreError: the content is not ``v1 <ISO time with zone>`` (names ``source``).
    """
    try:
        tag, _, value = data.decode("ascii").strip().partition(" ")
        if tag != f"v{FLOOR_FORMAT_VERSION}":
            raise ValueError(f"unknown format tag {tag!r}")
        floor = datetime.fromisoformat(value)
        if floor.tzinfo is None:
            raise ValueError("time has no zone")
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(
            f"{source}: bad clock floor: expected 'v{FLOOR_FORMAT_VERSION} <ISO-8601 time with "
            f"zone>': {exc}"
        ) from exc
    return floor.astimezone(UTC)


# I/O part -----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the folder, fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that renames and new names in it survive a power cut."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class SystemClock:
    """The system clock through the C library (honours ``faketime``); no floor."""

    def now(self) -> datetime:
        """Return the system time."""
        return datetime.now(UTC)

    def commit(self) -> None:
        """Nothing to record."""


@dataclass(slots=True)
class TrustedClock:
    """System clock held above a persisted floor that advances with monotonic time.

    Args:
        state_dir: folder holding the floor file (created if missing).
    """

    state_dir: Path
    _floor: datetime | None = None
    _persisted: datetime | None = None
    _loaded_at: float = 0.0

    def __post_init__(self) -> None:
        path = self.state_dir / FLOOR_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._floor = None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read clock floor: {exc}") from exc
        else:
            self._floor = parse_floor(data, str(path))
        self._persisted = self._floor
        self._loaded_at = time.monotonic()

    @property
    def floor(self) -> datetime | None:
        """The floor as loaded or last committed."""
        return self._floor

    def now(self) -> datetime:
        """Return max(system clock, floor + monotonic time since load)."""
        return trusted_now(datetime.now(UTC), self._floor, time.monotonic() - self._loaded_at)

    def commit(self) -> None:
        """Raise the floor to `now()`; persist it atomically when it moved enough."""
        now = self.now()
        new = raised_floor(self._floor, now)
        if not floor_needs_write(self._persisted, new):
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_dir / FLOOR_FILE, render_floor(new))
        except OSError as exc:
            path = self.state_dir / FLOOR_FILE
            raise StoreError(f"{path}: cannot write clock floor: {exc}") from exc
        self._floor = new
        self._persisted = new
        self._loaded_at = time.monotonic()
        log.debug("clock floor raised to %s", new.isoformat())

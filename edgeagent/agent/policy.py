"""Restart policy of one supervised workload: back-off, crash loops, heartbeat deadlines. [pure]

Rules / theory of operation (the h11 ``_state.py`` style: one transition table, `TRANSITIONS`):

- A workload instance is booted (``booted``): state ``starting``. Its first heartbeat must come
  within ``heartbeat_deadline_s`` of boot, and each next one within ``heartbeat_deadline_s`` of
  the previous one (`deadline`). A heartbeat makes it ``running`` and resets the consecutive
  failure count (so the back-off starts small again).
- A missed deadline (``unhealthy``) marks the instance unhealthy; the supervisor then stops it,
  and its exit counts as a failure whatever the status.
- An exit with status 0 that was not caused by the agent (``exited_ok``) is a completed
  run-to-completion job: state ``stopped``, not restarted (``restart-policy = on-failure``).
  A one-shot workload such as ``kvstore put`` is healthy this way.
- Any other exit (``exited_fail``) schedules a restart after ``initial * 2**(failures-1)``
  seconds, capped at ``restart_backoff_max_s``: state ``backoff``. When ``crash_loop_restarts``
  restarts fall within ``crash_loop_window_s``, the state is ``crashloop`` instead: the
  workload is reported unhealthy and restarted at the maximum back-off (a device in the field
  never gives up for good; an operator or a new version ends the loop).
- A stop the agent asked for (``stopped``: update, shutdown, console) is not a failure.
- ``restart`` (console) from ``stopped``, ``backoff`` or ``crashloop`` restarts at once.

Events in a state not listed in `TRANSITIONS` are programming errors (RuntimeError).

What this module does not do: no clock (``now`` is passed in, in seconds of a monotonic
clock), no processes, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

State = Literal["idle", "starting", "running", "backoff", "crashloop", "stopped"]
Event = Literal[
    "booted", "heartbeat", "unhealthy", "exited_ok", "exited_fail", "stopped", "restart"
]

_LIVE: tuple[State, ...] = ("starting", "running")
_DOWN: tuple[State, ...] = ("idle", "backoff", "crashloop", "stopped")

#: (state, event) -> next state. "exited_fail" goes to "backoff"; `exited` upgrades it to
#: "crashloop" when the crash-loop rule matches.
TRANSITIONS: dict[tuple[State, Event], State] = {
    **{(s, "booted"): "starting" for s in _DOWN},
    ("starting", "heartbeat"): "running",
    ("running", "heartbeat"): "running",
    **{(s, "unhealthy"): s for s in _LIVE},
    **{(s, "exited_ok"): "stopped" for s in _LIVE},
    **{(s, "exited_fail"): "backoff" for s in _LIVE},
    **{(s, "stopped"): "stopped" for s in (*_LIVE, *_DOWN)},
    **{(s, "restart"): "idle" for s in _DOWN},
}


@dataclass(frozen=True, slots=True)
class RestartSettings:
    """The knobs (from ``[health]`` in agent.toml)."""

    heartbeat_deadline_s: float = 10.0
    heartbeat_required: bool = True
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0


@dataclass(slots=True)
class RestartPolicy:
    """The state of one workload's restart policy (mutable; one per supervised workload)."""

    settings: RestartSettings
    state: State = "idle"
    failures: int = 0
    restarts: int = 0
    unhealthy: bool = False
    started_at: float | None = None
    last_heartbeat: float | None = None
    next_start_at: float | None = None
    reason: str = ""
    _restart_times: list[float] = field(default_factory=list)

    def _go(self, event: Event) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise RuntimeError(f"restart policy: event {event!r} in state {self.state!r}")
        self.state = nxt

    def booted(self, now: float) -> None:
        """An instance was started."""
        self._go("booted")
        self.started_at = now
        self.last_heartbeat = None
        self.unhealthy = False
        self.next_start_at = None

    def heartbeat(self, now: float) -> None:
        """The guest printed a heartbeat line."""
        if self.state not in _LIVE:
            return  # A line that raced with the exit: ignore it.
        self._go("heartbeat")
        self.last_heartbeat = now
        self.failures = 0
        self.reason = ""

    def deadline(self) -> float | None:
        """When the next heartbeat is due (monotonic seconds), or None when none is awaited."""
        s = self.settings
        if not s.heartbeat_required or self.state not in _LIVE or self.unhealthy:
            return None
        since = self.last_heartbeat if self.last_heartbeat is not None else self.started_at
        assert since is not None
        return since + s.heartbeat_deadline_s

    def check(self, now: float) -> bool:
        """Apply the deadline at ``now``; True when the instance just became unhealthy."""
        due = self.deadline()
        if due is None or now < due:
            return False
        self._go("unhealthy")
        self.unhealthy = True
        what = "first heartbeat" if self.last_heartbeat is None else "heartbeat"
        self.reason = f"no {what} within {self.settings.heartbeat_deadline_s:g} s"
        return True

    def exited(self, now: float, *, ok: bool, stopped_by_agent: bool, message: str) -> float | None:
        """The instance ended.

        Args:
            now: monotonic time.
            ok: the guest exited by itself with status 0.
            stopped_by_agent: the agent stopped it on purpose (not for being unhealthy).
            message: how it ended, for the status.

        Returns:
            When to start it again (monotonic), or None for "not automatically".
        """
        if stopped_by_agent and not self.unhealthy:
            self._go("stopped")
            return None
        if ok and not self.unhealthy:
            self._go("exited_ok")
            self.reason = ""
            return None
        self._go("exited_fail")
        if not self.unhealthy:
            self.reason = message
        self.failures += 1
        self.restarts += 1
        s = self.settings
        self._restart_times = [t for t in self._restart_times if now - t < s.crash_loop_window_s]
        self._restart_times.append(now)
        delay = min(s.backoff_initial_s * 2 ** (self.failures - 1), s.backoff_max_s)
        if len(self._restart_times) >= s.crash_loop_restarts:
            self.state = "crashloop"
            delay = s.backoff_max_s
            self.reason = (
                f"crash loop: {len(self._restart_times)} restarts in "
                f"{s.crash_loop_window_s:g} s ({self.reason})"
            )
        self.next_start_at = now + delay
        return self.next_start_at

    def stopped(self) -> None:
        """The agent stopped the workload (or it never started)."""
        self._go("stopped")
        self.next_start_at = None

    def restart(self) -> None:
        """Operator restart: start again now, keeping the counters."""
        if self.state in _LIVE:
            return
        self._go("restart")
        self.next_start_at = None

    @property
    def healthy(self) -> bool:
        """Running and heartbeating (or, without heartbeats, running or completed)."""
        if self.unhealthy or self.state in ("backoff", "crashloop"):
            return False
        if self.state == "running":
            return True
        if self.state == "starting":
            return not self.settings.heartbeat_required
        return self.state == "stopped" and not self.reason

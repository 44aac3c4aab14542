"""Over-the-air update of one workload: the phase machine and its decisions. [pure]

Rules / theory of operation (ADR 0007 §2). Phases, persisted after every transition:

    idle ──offer──> pulling ──pulled──> verified ──starting──> starting-new ──started──>
    health-window ──(healthy for the whole window)──> committed
                  └─(exit != 0, missed heartbeat, boot failure)──> rolled-back (mark bad)
    pulling ──pull_failed──> idle (the error is reported; retried at the next poll)
    verified ──install──> committed (first install: nothing to roll back to; supervision only)

- ``offer`` is only taken in a resting phase (idle, committed, rolled-back): one update per
  workload at a time.
- ``starting-new`` is the phase in which the old version is stopped first when the workload
  has block devices (the never-two-writers rule: a volume is attached to at most one running
  guest); without block devices the old one keeps running and both overlap for the window.
- The health window (`judge`): the candidate is committed once ``health_window_s`` has passed
  since it booted and it has sent at least one heartbeat (or heartbeats are not required), or
  as soon as it exits by itself with status 0 (a run-to-completion job). It is rolled back if it
  exits otherwise, or misses its heartbeat deadline, before that.
- After a restart of the agent (SIGKILL at any moment), `recover` maps the persisted phase to a
  resting or restartable one: a candidate that was pulled and verified is tried again from
  ``verified`` (its guest died with the agent and it was never committed); one that was being
  pulled goes back to ``idle`` and the next poll offers it again (a kept partial download
  resumes). The current version is untouched until ``committed`` is persisted, so
  the state on disk always names exactly one version that owns the volumes.

What this module does not do: no clock (``now`` comes in), no processes, no files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal[
    "idle", "pulling", "verified", "starting-new", "health-window", "committed", "rolled-back"
]
PHASES: tuple[Phase, ...] = (
    "idle",
    "pulling",
    "verified",
    "starting-new",
    "health-window",
    "committed",
    "rolled-back",
)
OtaEvent = Literal[
    "offer", "pulled", "pull_failed", "install", "starting", "started", "commit", "rollback"
]
RESTING: tuple[Phase, ...] = ("idle", "committed", "rolled-back")

#: (phase, event) -> next phase.
TRANSITIONS: dict[tuple[Phase, OtaEvent], Phase] = {
    **{(p, "offer"): "pulling" for p in RESTING},
    ("pulling", "pulled"): "verified",
    ("pulling", "pull_failed"): "idle",
    ("verified", "install"): "committed",
    ("verified", "starting"): "starting-new",
    ("starting-new", "started"): "health-window",
    ("starting-new", "rollback"): "rolled-back",
    ("health-window", "commit"): "committed",
    ("health-window", "rollback"): "rolled-back",
}

#: Where a persisted phase resumes after an agent restart.
RECOVERY: dict[Phase, Phase] = {
    "idle": "idle",
    "committed": "committed",
    "rolled-back": "rolled-back",
    "pulling": "idle",
    "verified": "verified",
    "starting-new": "verified",
    "health-window": "verified",
}


def step(phase: Phase, event: OtaEvent) -> Phase:
    """Return the phase after ``event``.

    Raises:
        RuntimeError: the event is not allowed in ``phase`` (a programming error).
    """
    nxt = TRANSITIONS.get((phase, event))
    if nxt is None:
        raise RuntimeError(f"ota: event {event!r} in phase {phase!r}")
    return nxt


def recover(phase: Phase) -> Phase:
    """The phase to resume from after an agent restart (see the module docstring)."""
    return RECOVERY[phase]


def must_stop_old_first(blocks: tuple[str, ...]) -> bool:
    """The never-two-writers rule: a workload with block devices never overlaps versions."""
    return bool(blocks)


Verdict = Literal["wait", "commit", "rollback"]


@dataclass(frozen=True, slots=True)
class Trial:
    """What the supervisor has observed of a candidate in its health window.

    Attributes:
        started_at: monotonic time the candidate booted.
        heartbeats: heartbeat lines seen so far.
        exit_ok: None while running; True/False once it exited (status 0 by itself or not).
        unhealthy: it missed its heartbeat deadline.
        message: how it ended or why it is unhealthy.
    """

    started_at: float
    heartbeats: int = 0
    exit_ok: bool | None = None
    unhealthy: bool = False
    message: str = ""


def judge(trial: Trial, now: float, *, window_s: float, heartbeat_required: bool) -> Verdict:
    """Decide a candidate's fate at ``now`` (see the module docstring)."""
    if trial.unhealthy or trial.exit_ok is False:
        return "rollback"
    if trial.exit_ok is True:
        return "commit"
    if now - trial.started_at < window_s:
        return "wait"
    if heartbeat_required and trial.heartbeats == 0:
        return "wait"  # The heartbeat deadline turns a silent candidate into a rollback.
    return "commit"

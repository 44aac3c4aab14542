"""Host OTA: the A/B slot state machine of the device (issue 5 §3, ADR 0010). [pure]

Rules / theory of operation
===========================

Two root slots, "a" and "b". ``good`` is the slot known to boot into a healthy agent; the other
one is the **target**: the only slot an update ever writes. Phases, persisted in
``STATE/host-ota.json``::

    idle ─offer→ downloading(offset) ─written→ written ─read-back ok→ verified ─stage→ staged
    staged ─(reboot; the loader boots the target once)→ trial ─healthy→ committed
    trial ─(unhealthy at the end of the window)→ rolled-back (version marked bad) + reboot
    staged|trial ─(the agent finds itself on the good slot again)→ rolled-back (marked bad)
    downloading|written ─(digest mismatch, tampered bytes)→ idle (refused until restart)

``committed`` and ``rolled-back`` are resting phases like ``idle``. Every decision returns
`Decision`: the new state, the boot-entry changes to make on the ESP **first**, and then the
step the shell runs **after persisting** the new state. Boot-entry changes are idempotent, so
redoing them after a power cut is harmless; the order "ESP, then persist" is what keeps every
power cut safe (each case is listed in ADR 0010 §4):

1. Never write the slot we booted from: writing starts only from `Booted`/`Offer` on the good
   slot, and the target is always ``other(good)``. Before the first byte, the target's boot
   entry is marked bad (``+0-0``) so a half-written slot is never chosen by the loader, and the
   good slot is blessed (plain name) and made the loader's default.
2. Never both slots untried/bad: the good slot's entry is always plain (blessed) before the
   target is touched, and it stays so until the target itself is blessed at commit.
3. A good slot's boots are never counted: only the target gets a ``+1-0`` ("try once") name,
   at stage time; the loader's default names that exact counted file, so once the loader has
   consumed the try (``+0-1``) the default no longer matches and it falls back to the only
   entry with tries left: the good slot (systemd-boot's rules, ADR 0010 §2).
4. Commit = make the target the default (plain name) and bless it, then persist; rollback =
   mark the target bad and make the good slot the default, then persist, then reboot.
5. A rolled-back ``(version, sha256)`` is never offered again (``bad``); a candidate refused for
   a digest mismatch is not retried until the agent restarts (``failed``, cleared by
   `Booted`), like workload verification failures (ADR 0007 §2).

What this module does not do: no files, no clock (``now`` comes in), no ESP access (bootctl),
no network (writer). The reboot window is decided by `reboot_allowed`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from edgeagent.errors import ConfigError

SLOTS = ("a", "b")
SCHEMA = 1

Phase = Literal[
    "idle", "downloading", "written", "verified", "staged", "trial", "committed", "rolled-back"
]
PHASES: tuple[Phase, ...] = (
    "idle",
    "downloading",
    "written",
    "verified",
    "staged",
    "trial",
    "committed",
    "rolled-back",
)
RESTING: frozenset[Phase] = frozenset({"idle", "committed", "rolled-back"})
#: Phases in which the target slot holds (part of) the candidate.
WRITING: frozenset[Phase] = frozenset({"downloading", "written", "verified"})

#: What the shell runs after persisting: stream into the target from ``state.offset``, read the
#: whole target back, stage it, wait for the reboot window then reboot, reboot now, or watch the
#: agent's health (trial, or a first healthy report on a resting boot).
Step = Literal["write", "read-back", "stage", "reboot-in-window", "reboot", "watch-health"]

EspKind = Literal["bless", "mark-bad", "mark-trial", "default", "default-trial"]


def other(slot: str) -> str:
    """The other slot of the A/B pair."""
    if slot not in SLOTS:
        raise RuntimeError(f"not a slot: {slot!r}")
    return "b" if slot == "a" else "a"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A signed host-slot target: its version, sha256 and length (from TUF metadata)."""

    version: str
    sha256: str
    length: int

    @property
    def key(self) -> tuple[str, str]:
        """What "bad" is recorded against: ``(version, sha256)``."""
        return (self.version, self.sha256)


@dataclass(frozen=True, slots=True)
class EspAction:
    """One idempotent boot-entry change for slot ``slot`` (bootctl turns it into renames).

    Kinds: ``bless`` (drop the counter: good), ``mark-bad`` (``+0-N``: never picked),
    ``mark-trial`` (``+1-0``: try once), ``default`` (loader default = the slot's plain entry),
    ``default-trial`` (loader default = the slot's ``+1-0`` entry).
    """

    kind: EspKind
    slot: str


@dataclass(frozen=True, slots=True)
class SlotState:
    """The persisted host OTA state (see the module docstring)."""

    good: str
    good_version: str
    good_sha256: str = ""
    phase: Phase = "idle"
    candidate: Candidate | None = None
    offset: int = 0
    trial_since: float | None = None
    #: Version known to be intact in the target slot (the previous good), None once overwritten.
    other_version: str | None = None
    bad: tuple[tuple[str, str], ...] = ()
    failed: tuple[str, str] | None = None
    last: str = ""

    @property
    def target(self) -> str:
        """The slot updates are written to: never the good one."""
        return other(self.good)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do: ESP changes first, then persist ``state``, then run ``step`` (if any)."""

    state: SlotState
    esp: tuple[EspAction, ...] = ()
    step: Step | None = None


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Booted:
    """The agent started; the kernel command line says it runs from ``slot``."""

    slot: str
    now: float


@dataclass(frozen=True, slots=True)
class Offer:
    """The registry publishes host-slot target ``candidate`` for this device."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class Progress:
    """``offset`` bytes of the candidate are written and fsynced into the target slot."""

    offset: int


@dataclass(frozen=True, slots=True)
class Written:
    """All bytes are in the target slot and the streaming hash matched the signed sha256."""


@dataclass(frozen=True, slots=True)
class WriteRefused:
    """The bytes did not verify (digest, length): refuse this candidate until restart."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReadBack:
    """The sha256 of the target slot's first ``candidate.length`` bytes, read back."""

    sha256: str


@dataclass(frozen=True, slots=True)
class Stage:
    """Make the verified target the try-once default (the shell does it right away)."""


@dataclass(frozen=True, slots=True)
class Health:
    """The agent's health checks: ``ok`` (agent up, trust loaded, workloads healthy)."""

    ok: bool
    detail: str
    now: float
    window_s: float


Event = Booted | Offer | Progress | Written | WriteRefused | ReadBack | Stage | Health


def initial_state(booted: str, version: str) -> SlotState:
    """The state of a device whose agent starts for the first time: the booted slot is good."""
    return SlotState(good=booted, good_version=version, other_version=version)


def decide(state: SlotState, event: Event) -> Decision:
    """Feed one event to the machine (see the module docstring for the rules).

    Raises:
        RuntimeError: an event that cannot happen in this phase (a shell bug).
    """
    if isinstance(event, Booted):
        return _booted(state, event)
    if isinstance(event, Offer):
        return _offer(state, event.candidate)
    if isinstance(event, Health):
        return _health(state, event)
    cand = state.candidate
    if isinstance(event, Progress):
        _expect(state, event, "downloading")
        assert cand is not None
        if not 0 <= event.offset <= cand.length:
            raise RuntimeError(f"progress {event.offset} outside 0..{cand.length}")
        return Decision(replace(state, offset=event.offset), step=None)
    if isinstance(event, Written):
        _expect(state, event, "downloading")
        assert cand is not None
        last = f"written {cand.version} into slot {state.target}"
        new = replace(state, phase="written", offset=cand.length, last=last)
        return Decision(new, step="read-back")
    if isinstance(event, WriteRefused):
        _expect(state, event, "downloading", "written")
        return Decision(_refuse(state, event.reason))
    if isinstance(event, ReadBack):
        _expect(state, event, "written")
        assert cand is not None
        if event.sha256 != cand.sha256:
            why = f"slot {state.target} read back as sha256:{event.sha256}, signed {cand.sha256}"
            return Decision(_refuse(state, why))
        last = f"verified {cand.version} in slot {state.target} by reading it back"
        return Decision(replace(state, phase="verified", last=last), step="stage")
    if isinstance(event, Stage):
        _expect(state, event, "verified")
        assert cand is not None
        t = state.target
        esp = (EspAction("mark-trial", t), EspAction("default-trial", t))
        last = f"staged {cand.version} in slot {t}: boots once at the next reboot"
        return Decision(replace(state, phase="staged", last=last), esp, "reboot-in-window")
    raise RuntimeError(f"unknown event {event!r}")


def _expect(state: SlotState, event: object, *phases: Phase) -> None:
    if state.phase not in phases or state.candidate is None:
        raise RuntimeError(f"{type(event).__name__} in phase {state.phase}")


def _refuse(state: SlotState, reason: str) -> SlotState:
    cand = state.candidate
    assert cand is not None
    return replace(
        state,
        phase="idle",
        candidate=None,
        offset=0,
        failed=cand.key,
        last=f"refused {cand.version}: {reason}",
    )


def _start(state: SlotState, cand: Candidate) -> Decision:
    # Rule 1 and 2: bless and default the good slot, then make the target unbootable.
    g, t = state.good, state.target
    esp = (EspAction("bless", g), EspAction("default", g), EspAction("mark-bad", t))
    new = replace(
        state,
        phase="downloading",
        candidate=cand,
        offset=0,
        trial_since=None,
        other_version=None,
        last=f"downloading {cand.version} into slot {t}",
    )
    return Decision(new, esp, "write")


_RESUME: dict[Phase, Step] = {
    "downloading": "write",
    "written": "read-back",
    "verified": "stage",
    "staged": "reboot-in-window",
}


def _offer(state: SlotState, cand: Candidate) -> Decision:
    if cand.key in state.bad or cand.key == state.failed:
        return Decision(state)
    if cand.version == state.good_version and state.good_sha256 in ("", cand.sha256):
        return Decision(state)  # Already running it (a flashed slot's sha256 is unknown).
    if state.phase == "trial":
        return Decision(state)  # Resolve the trial first.
    if state.candidate == cand and state.phase in _RESUME:
        return Decision(state, step=_RESUME[state.phase])  # Carry on where it stopped.
    # Resting, or a different candidate replaces one being written or staged: the target is
    # never the booted slot, so starting over is safe.
    return _start(state, cand)


def _booted(state: SlotState, ev: Booted) -> Decision:
    fresh = replace(state, failed=None)
    cand = state.candidate
    if ev.slot == state.good:
        if state.phase in ("staged", "trial"):
            # The trial boot did not reach a healthy agent (or never happened): the loader
            # fell back to the good slot. Rule 5: the candidate is bad.
            assert cand is not None
            return _rollback(fresh, f"boot of slot {state.target} did not stay up", step=None)
        if state.phase == "downloading":
            return Decision(fresh, step="write")
        if state.phase == "written":
            return Decision(fresh, step="read-back")
        if state.phase == "verified":
            return Decision(fresh, step="stage")
        return Decision(fresh, step="watch-health")
    if state.phase in ("verified", "staged", "trial"):
        # Booted into the target: the loader took the try-once entry (staging reached the ESP
        # even if the state was persisted before it). The health window starts now.
        since = state.trial_since if state.phase == "trial" else ev.now
        assert cand is not None
        new = replace(fresh, phase="trial", trial_since=since, last=f"trial of {cand.version}")
        return Decision(new, step="watch-health")
    # The loader chose the other slot although nothing is on trial (an operator, or the good
    # slot stopped booting). The running slot is what we have: adopt it, abandon any write.
    adopted = state.other_version or "unknown"
    new = replace(
        fresh,
        good=ev.slot,
        good_version=adopted,
        good_sha256="",
        phase="idle",
        candidate=None,
        offset=0,
        trial_since=None,
        other_version=None,
        last=f"booted slot {ev.slot} unexpectedly; adopted it as good",
    )
    return Decision(new, step="watch-health")


def _rollback(state: SlotState, why: str, *, step: Step | None) -> Decision:
    cand = state.candidate
    assert cand is not None
    t = state.target
    bad = state.bad if cand.key in state.bad else (*state.bad, cand.key)
    new = replace(
        state,
        phase="rolled-back",
        candidate=None,
        offset=0,
        trial_since=None,
        other_version=None,
        bad=bad,
        last=f"rolled back {cand.version}: {why}",
    )
    return Decision(new, (EspAction("mark-bad", t), EspAction("default", state.good)), step)


def _health(state: SlotState, ev: Health) -> Decision:
    if state.phase != "trial":
        if ev.ok and state.phase in RESTING:
            # A healthy resting boot: make sure the good slot is blessed and the default
            # (a freshly flashed disk boots slot A on trial, ADR 0008 §2).
            esp = (EspAction("bless", state.good), EspAction("default", state.good))
            return Decision(state, esp)
        return Decision(state)
    cand = state.candidate
    assert cand is not None
    assert state.trial_since is not None
    t = state.target
    if ev.ok:
        new = replace(
            state,
            good=t,
            good_version=cand.version,
            good_sha256=cand.sha256,
            phase="committed",
            candidate=None,
            offset=0,
            trial_since=None,
            other_version=state.good_version,
            last=f"committed {cand.version} in slot {t}",
        )
        # Rule 4: default first, then bless: a power cut in between falls back to the old
        # good slot (the default names a plain file that does not exist yet).
        return Decision(new, (EspAction("default", t), EspAction("bless", t)))
    if ev.now - state.trial_since >= ev.window_s:
        return _rollback(state, f"unhealthy after {ev.window_s:g} s: {ev.detail}", step="reboot")
    return Decision(state)


# Persistence -------------------------------------------------------------------------------


def dump_state(state: SlotState) -> bytes:
    """The state as JSON bytes (``host-ota.json``)."""
    cand = state.candidate
    doc = {
        "schema": SCHEMA,
        "good": state.good,
        "good_version": state.good_version,
        "good_sha256": state.good_sha256,
        "phase": state.phase,
        "candidate": None
        if cand is None
        else {"version": cand.version, "sha256": cand.sha256, "length": cand.length},
        "offset": state.offset,
        "trial_since": state.trial_since,
        "other_version": state.other_version,
        "bad": [list(k) for k in state.bad],
        "failed": None if state.failed is None else list(state.failed),
        "last": state.last,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


@dataclass(slots=True)
class _Reader:
    source: str
    doc: dict[str, object] = field(default_factory=dict)

    def err(self, key: str, expected: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: field '{key}': expected {expected}, got {self.doc.get(key)!r}"
        )

    def text(self, key: str) -> str:
        v = self.doc.get(key)
        if not isinstance(v, str):
            raise self.err(key, "a string")
        return v

    def pair(self, v: object, key: str) -> tuple[str, str]:
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v):
            return (str(v[0]), str(v[1]))
        raise self.err(key, "a [version, sha256] pair")


def load_state(data: bytes, source: str = "host-ota.json") -> SlotState:
    """Parse ``host-ota.json`` strictly.

    Raises:
        ConfigError: not JSON, wrong schema, or a field of the wrong type (names the field).
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    r = _Reader(source, doc)
    if doc.get("schema") != SCHEMA:
        raise r.err("schema", str(SCHEMA))
    good = r.text("good")
    if good not in SLOTS:
        raise r.err("good", "'a' or 'b'")
    phase = r.text("phase")
    if phase not in PHASES:
        raise r.err("phase", f"one of {PHASES}")
    raw = doc.get("candidate")
    cand: Candidate | None = None
    if raw is not None:
        if not (
            isinstance(raw, dict)
            and isinstance(raw.get("version"), str)
            and isinstance(raw.get("sha256"), str)
            and isinstance(raw.get("length"), int)
        ):
            raise r.err("candidate", "{version, sha256, length}")
        cand = Candidate(str(raw["version"]), str(raw["sha256"]), int(raw["length"]))
    if (cand is None) != (phase in RESTING):
        raise r.err("candidate", f"a candidate exactly when the phase ({phase}) is not resting")
    offset = doc.get("offset")
    if not isinstance(offset, int) or offset < 0 or (cand and offset > cand.length):
        raise r.err("offset", "an integer within the candidate's length")
    since = doc.get("trial_since")
    if since is not None and not isinstance(since, int | float):
        raise r.err("trial_since", "a number or null")
    if phase == "trial" and since is None:
        raise r.err("trial_since", "a number in phase trial")
    other_v = doc.get("other_version")
    if other_v is not None and not isinstance(other_v, str):
        raise r.err("other_version", "a string or null")
    bad_raw = doc.get("bad")
    if not isinstance(bad_raw, list):
        raise r.err("bad", "a list")
    failed_raw = doc.get("failed")
    return SlotState(
        good=good,
        good_version=r.text("good_version"),
        good_sha256=r.text("good_sha256"),
        phase=_phase(phase),
        candidate=cand,
        offset=offset,
        trial_since=None if since is None else float(since),
        other_version=other_v,
        bad=tuple(r.pair(x, "bad") for x in bad_raw),
        failed=None if failed_raw is None else r.pair(failed_raw, "failed"),
        last=r.text("last"),
    )


def _phase(value: str) -> Phase:
    for p in PHASES:
        if p == value:
            return p
    raise RuntimeError(value)


# Reboot window ------------------------------------------------------------------------------

_WINDOW_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


def parse_window(value: str) -> tuple[int, int] | None:
    """``"always"`` -> None; ``"HH:MM-HH:MM"`` (UTC) -> (start, end) minutes of the day.

    Raises:
        ValueError: anything else (the config names the key).
    """
    if value == "always":
        return None
    m = _WINDOW_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"expected 'always' or 'HH:MM-HH:MM' (UTC), got {value!r}")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"empty reboot window {value!r}")
    return (start, end)


def reboot_allowed(window: tuple[int, int] | None, minute_of_day_utc: int) -> bool:
    """Whether a reboot may happen now; a window may wrap midnight (``22:00-04:00``)."""
    if window is None:
        return True
    start, end = window
    if start < end:
        return start <= minute_of_day_utc < end
    return minute_of_day_utc >= start or minute_of_day_utc < end

"""edge-tender's lifecycle events and the end-of-run decision (pure).

edge-tender writes one JSON object per line to ``--events-fd=N``
(host-os/tender/README.md)::

    {"event": "started", "t_ns": ...}
    {"event": "first_output", "t_ns": ...}
    {"event": "exit", "t_ns": ..., "status": S, "reason": "halt|abi|kvm|io|signal|setup",
     "message": "..."}
    {"event": "fault", "t_ns": ..., ...registers...}

`EventFramer` cuts the byte stream into lines (with a line-length cap, like h11's
header cap) and parses them; `TailBuffer` keeps the last bytes of the console for
error messages; `decide_result` combines the exit status, the events and what the
runner saw into a `VmResult`.

What this module does not do: it reads no pipes and keeps no clock; the runner
feeds it bytes and times. Malformed event lines are returned as None and left to
the caller to log: the tender is trusted, but a bad line must not stop the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from edgeagent.vmm.imageformat import RunnerKind
from edgeagent.vmm.spec import TENDER_SIGNAL, ExitInfo, ExitReason, describe_exit

#: Longest event line accepted; a longer one is dropped whole.
MAX_EVENT_LINE = 16 * 1024
#: Console bytes kept for error messages.
CONSOLE_TAIL_BYTES = 4096

JsonScalar = str | int | float | bool | None
#: Who ran a VM: the image-format runners, or the xen runner (chosen by the target's kind).
ResultRunner = RunnerKind | Literal["xen"]


@dataclass(frozen=True, slots=True)
class TenderEvent:
    """One lifecycle event.

    Attributes:
        event: the event name ("started", "first_output", "exit", "fault", or a newer one).
        t_ns: the tender's monotonic timestamp in ns, if given.
        fields: every scalar field of the line, including the two above.
    """

    event: str
    t_ns: int | None
    fields: tuple[tuple[str, JsonScalar], ...]

    def get(self, key: str) -> JsonScalar:
        """Return one field's value, or None."""
        for name, value in self.fields:
            if name == key:
                return value
        return None


def parse_event(line: bytes) -> TenderEvent | None:
    """Parse one event line (without its newline); None if it is not a valid event."""
    try:
        obj: object = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    event = obj.get("event")
    if not isinstance(event, str):
        return None
    fields: list[tuple[str, JsonScalar]] = []
    for key, value in obj.items():
        if isinstance(value, str | int | float | bool) or value is None:
            fields.append((str(key), value))
    t_ns = obj.get("t_ns")
    return TenderEvent(
        event=event,
        t_ns=t_ns if isinstance(t_ns, int) and not isinstance(t_ns, bool) else None,
        fields=tuple(fields),
    )


class EventFramer:
    """Cuts a byte stream into newline-terminated event lines and parses them.

    A line longer than `MAX_EVENT_LINE` is dropped (counted in ``dropped``), as is
    a line that is not a JSON object with an "event" string.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[TenderEvent]:
        """Add bytes; return the events completed by them."""
        out: list[TenderEvent] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_EVENT_LINE:
                    self._buf.clear()
                    if not self._discarding:
                        self.dropped += 1
                    self._discarding = True
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._discarding:
                self._discarding = False
                continue
            event = parse_event(line) if len(line) <= MAX_EVENT_LINE else None
            if event is None:
                self.dropped += 1
            else:
                out.append(event)


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int = CONSOLE_TAIL_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append bytes, forgetting the oldest beyond the limit."""
        self._buf += data
        if len(self._buf) > self._limit:
            del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        """The kept bytes as text (undecodable bytes replaced)."""
        return self._buf.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class VmResult:
    """How a VM run ended.

    Attributes:
        runner: "tender", "qemu" or "xen".
        process_status: the runner's exit status (negative: killed by that signal); for
            "xen", the domain's shutdown reason code (-1: it did not shut down by itself).
        guest_status: the guest's exit status, or None if it did not report one.
        reason: halt, abort, usage, setup, abi, kvm, signal, io or shutdown.
        message: a sentence for humans (the tender's own message when it sent one).
        exit_status: what `edgeagent boot` exits with (see `ExitInfo`).
        first_output_s: seconds from process start to the first console byte, as the
            runner measured it; None if the guest printed nothing.
        events: the tender's events, in order.
        console_tail: the last console output.
        stderr_tail: the last lines the runner printed on stderr.
    """

    runner: ResultRunner
    process_status: int
    guest_status: int | None
    reason: ExitReason
    message: str
    exit_status: int
    first_output_s: float | None
    events: tuple[TenderEvent, ...]
    console_tail: str
    stderr_tail: str

    @property
    def ok(self) -> bool:
        """Whether the guest exited by itself with status 0."""
        return self.guest_status == 0 and self.reason in ("halt", "shutdown")


def first_error_line(stderr_text: str) -> str:
    """Return QEMU's first error line (``qemu...: msg`` that is not a warning), or ""."""
    for line in stderr_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("qemu") and ":" in stripped and "warning:" not in stripped:
            return stripped
    return ""


def decide_result(
    *,
    runner: RunnerKind,
    process_status: int,
    events: tuple[TenderEvent, ...],
    stopped_by_signal: int | None,
    first_output_s: float | None,
    console_tail: str,
    stderr_tail: str,
) -> VmResult:
    """Combine what the runner saw into a `VmResult`.

    Args:
        runner: "tender" or "qemu".
        process_status: the exit status as `subprocess` reports it.
        events: the tender's events (empty for QEMU).
        stopped_by_signal: the signal the runner sent to stop the VM, if it did.
        first_output_s: seconds to the first console byte, or None.
        console_tail: the last console output.
        stderr_tail: the runner's last stderr output.
    """
    info: ExitInfo = describe_exit(
        runner,
        process_status,
        qemu_error=first_error_line(stderr_tail) if runner == "qemu" else "",
    )
    message = info.message
    exit_event = next((e for e in reversed(events) if e.event == "exit"), None)
    if exit_event is not None:
        tender_message = exit_event.get("message")
        if isinstance(tender_message, str) and tender_message and info.guest_status is None:
            message = f"{tender_message} (edge-tender status {process_status})"
    reason = info.reason
    guest_status = info.guest_status
    exit_status = info.exit_status
    if stopped_by_signal is not None and (guest_status is None or runner == "qemu"):
        # We stopped it: QEMU exits 0 on SIGTERM, the tender 244; either way the
        # guest did not choose to exit. (A tender guest that halted just before our
        # signal arrived keeps its own status.)
        reason = "signal"
        guest_status = None
        exit_status = TENDER_SIGNAL
        message = f"stopped by edgeagent with signal {stopped_by_signal} ({info.message})"
    return VmResult(
        runner=runner,
        process_status=process_status,
        guest_status=guest_status,
        reason=reason,
        message=message,
        exit_status=exit_status,
        first_output_s=first_output_s,
        events=events,
        console_tail=console_tail,
        stderr_tail=stderr_tail,
    )

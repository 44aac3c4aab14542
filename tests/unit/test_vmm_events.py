"""Tender events framing and the end-of-run decision."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeagent.vmm.events import (
    MAX_EVENT_LINE,
    EventFramer,
    TailBuffer,
    VmResult,
    decide_result,
    first_error_line,
    parse_event,
)


def test_parse_exit_event() -> None:
    event = parse_event(b'{"event":"exit","t_ns":12,"status":242,"reason":"abi","message":"m"}')
    assert event is not None
    assert (event.event, event.t_ns, event.get("status"), event.get("reason")) == (
        "exit",
        12,
        242,
        "abi",
    )
    assert event.get("missing") is None


def test_nested_values_are_dropped_not_trusted() -> None:
    event = parse_event(b'{"event":"fault","regs":{"rip":1},"rip":"0x1000"}')
    assert event is not None
    assert event.get("regs") is None
    assert event.get("rip") == "0x1000"


def test_non_event_lines_are_rejected() -> None:
    for line in (b"", b"not json", b"[1]", b'{"t_ns":1}', b'{"event":3}', b"\xff\xfe"):
        assert parse_event(line) is None


def test_framer_joins_split_lines_and_counts_bad_ones() -> None:
    framer = EventFramer()
    assert framer.feed(b'{"event":"sta') == []
    events = framer.feed(b'rted","t_ns":1}\ngarbage\n{"event":"exit"}\n{"event"')
    assert [e.event for e in events] == ["started", "exit"]
    assert framer.dropped == 1


def test_framer_drops_an_endless_line_in_bounded_memory() -> None:
    framer = EventFramer()
    for _ in range(10):
        assert framer.feed(b"x" * MAX_EVENT_LINE) == []
    assert framer.dropped == 1
    assert [e.event for e in framer.feed(b'tail\n{"event":"exit"}\n')] == ["exit"]


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_framer_never_raises(chunks: list[bytes]) -> None:
    framer = EventFramer()
    for chunk in chunks:
        framer.feed(chunk)


def test_tail_buffer_keeps_the_last_bytes() -> None:
    tail = TailBuffer(limit=8)
    tail.feed(b"0123456789")
    tail.feed(b"ab")
    assert tail.text() == "456789ab"


def test_first_error_line_skips_warnings() -> None:
    text = "qemu-system-x86_64: warning: x\nqemu: could not load kernel\n"
    assert first_error_line(text) == "qemu: could not load kernel"
    assert first_error_line("hello\n") == ""


def _decide(**kw: object) -> VmResult:
    base: dict[str, object] = {
        "runner": "tender",
        "process_status": 0,
        "events": (),
        "stopped_by_signal": None,
        "first_output_s": 0.01,
        "console_tail": "SUCCESS\n",
        "stderr_tail": "",
    }
    base.update(kw)
    return decide_result(**base)  # type: ignore[arg-type]


def test_guest_success() -> None:
    result = _decide()
    assert result.ok
    assert result.exit_status == 0


def test_tender_message_is_attached_to_a_tender_error() -> None:
    event = parse_event(b'{"event":"exit","status":242,"reason":"abi","message":"bad pointer"}')
    assert event is not None
    result = _decide(process_status=242, events=(event,))
    assert result.reason == "abi"
    assert result.message == "bad pointer (edge-tender status 242)"
    assert not result.ok


def test_stopped_tender_is_a_signal_stop() -> None:
    result = _decide(process_status=244, stopped_by_signal=15)
    assert (result.reason, result.exit_status, result.guest_status) == ("signal", 244, None)
    assert "signal 15" in result.message


def test_guest_that_halted_before_the_stop_keeps_its_status() -> None:
    result = _decide(process_status=0, stopped_by_signal=15)
    assert (result.reason, result.exit_status) == ("halt", 0)


def test_stopped_qemu_exiting_0_is_not_a_guest_success() -> None:
    result = _decide(runner="qemu", process_status=0, stopped_by_signal=15)
    assert (result.reason, result.exit_status, result.guest_status) == ("signal", 244, None)


def test_qemu_startup_error_from_stderr() -> None:
    result = _decide(runner="qemu", process_status=1, stderr_tail="qemu: could not open kernel")
    assert (result.reason, result.exit_status) == ("setup", 241)

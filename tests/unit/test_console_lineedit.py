"""The serial console's line editor: framing, editing keys, and garbage that must not run."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeagent.console.lineedit import Cancelled, Event, Line, LineEditor, Rejected


def feed_all(data: bytes, *, max_line: int = 256, chunks: list[int] | None = None) -> list[Event]:
    editor = LineEditor(max_line=max_line)
    events: list[Event] = []
    if chunks is None:
        events.extend(editor.feed(data).events)
        return events
    pos = 0
    for size in chunks:
        events.extend(editor.feed(data[pos : pos + size]).events)
        pos += size
    events.extend(editor.feed(data[pos:]).events)
    return events


def lines(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Line)]


def test_accepts_cr_lf_and_crlf_line_ends() -> None:
    assert lines(feed_all(b"a\rb\nc\r\nd\r")) == ["a", "b", "c", "d"]


def test_crlf_split_across_reads_is_one_line_end() -> None:
    editor = LineEditor()
    first = editor.feed(b"status\r").events
    second = editor.feed(b"\nvms\r").events
    assert first == (Line("status"),)
    assert second == (Line("vms"),)


def test_lf_cr_gives_an_empty_second_line_not_a_command() -> None:
    assert feed_all(b"vms\n\r") == [Line("vms"), Line("")]


def test_backspace_and_del_erase_characters() -> None:
    assert lines(feed_all(b"statx\x08us\r")) == ["status"]
    assert lines(feed_all(b"vmz\x7fs\r")) == ["vms"]
    assert lines(feed_all(b"\x08\x08vms\r")) == ["vms"]


def test_backspace_erases_a_whole_utf8_character() -> None:
    assert lines(feed_all("xé\x7f\r".encode())) == ["x"]


def test_ctrl_u_kills_the_line_silently() -> None:
    assert feed_all(b"garbage\x00\x15status\r") == [Line("status")]


def test_ctrl_c_cancels_the_line() -> None:
    assert feed_all(b"restart ticker\x03vms\r") == [Cancelled(), Line("vms")]


def test_tab_is_a_space_and_xon_xoff_are_ignored() -> None:
    assert lines(feed_all(b"logs\tticker\x11\x13\r")) == ["logs ticker"]


def test_arrow_keys_and_ansi_sequences_are_dropped() -> None:
    data = b"\x1b[A\x1b[1;5Cst\x1bOAatus\x1b]0;title\x07\x1b(B\x1b7\x1bP1$r\x1b\\\r"
    assert feed_all(data) == [Line("status")]


def test_rejects_command_hidden_in_binary_noise() -> None:
    # Dropping the NUL would leave "restart ticker": the whole line must be refused instead.
    events = feed_all(b"re\x00start ticker\r")
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert "0x00" in events[0].reason


def test_rejects_invalid_utf8() -> None:
    events = feed_all(b"status\xff\xfe\r")
    assert events == [Rejected("line is not valid UTF-8; not executed")]


def test_rejects_c1_controls_encoded_as_utf8() -> None:
    events = feed_all("status\u009b\r".encode())
    assert len(events) == 1
    assert isinstance(events[0], Rejected)


def test_rejects_malformed_escape_sequence() -> None:
    events = feed_all(b"st\x1b[\x01atus\r")
    assert len(events) == 1
    assert isinstance(events[0], Rejected)


def test_unterminated_osc_is_cut_by_newline_and_rejected() -> None:
    events = feed_all(b"\x1b]0;status\rvms\r")
    assert isinstance(events[0], Rejected)
    assert events[1:] == [Line("vms")]


def test_overlong_line_is_reported_once_and_not_executed() -> None:
    events = feed_all(b"status " + b"x" * 5000 + b"\rvms\r", max_line=64)
    assert len(events) == 2
    assert isinstance(events[0], Rejected)
    assert "longer than 64 bytes" in events[0].reason
    assert events[1] == Line("vms")


def test_line_of_exactly_max_bytes_is_accepted() -> None:
    assert lines(feed_all(b"a" * 64 + b"\r", max_line=64)) == ["a" * 64]
    assert isinstance(feed_all(b"a" * 65 + b"\r", max_line=64)[0], Rejected)


def test_echo_for_interactive_terminals() -> None:
    editor = LineEditor(echo=True)
    fed = editor.feed(b"vmx\x7fs\r")
    assert fed.echo == b"vmx\b \bs\r\n"
    assert fed.events == (Line("vms"),)
    assert LineEditor(echo=False).feed(b"vms\r").echo == b""


def test_pending_shows_the_half_typed_line() -> None:
    editor = LineEditor()
    editor.feed(b"\rlogs tic")
    assert editor.pending() == b"logs tic"


# ---- properties ---------------------------------------------------------------------------


@given(st.binary(max_size=2000), st.lists(st.integers(0, 50), max_size=40))
def test_never_raises_and_never_yields_a_line_over_the_cap(data: bytes, chunks: list[int]) -> None:
    events = feed_all(data, max_line=32, chunks=chunks)
    for e in events:
        if isinstance(e, Line):
            assert len(e.text.encode()) <= 32
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in e.text)


@given(st.binary(max_size=500), st.lists(st.integers(1, 30), max_size=30))
def test_chunking_does_not_change_the_events(data: bytes, chunks: list[int]) -> None:
    assert feed_all(data, chunks=chunks) == feed_all(data)


_NOISE = st.sampled_from([0x00, 0x01, 0x02, 0x04, 0x05, 0x0B, 0x0C, 0x0E, 0x1A, 0x1C, 0x1F])
_TEXT = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\x15\x03"))


@given(_TEXT, _NOISE, _TEXT)
def test_garbage_never_becomes_a_command(before: bytes, noise: int, after: bytes) -> None:
    # Any line that carries a stray control byte is rejected as a whole, whatever surrounds it.
    events = feed_all(before + bytes([noise]) + after + b"\r")
    assert len(events) == 1
    assert isinstance(events[0], Rejected)


@given(st.binary(max_size=600))
def test_one_newline_recovers_from_any_noise(noise: bytes) -> None:
    events = feed_all(noise + b"\r\nstatus\r", max_line=64)
    assert events[-1] == Line("status")

"""A byte-fed line editor and framer for a serial diagnostics console [pure].

What it does: turns the raw bytes arriving on a serial line (or a TCP console) into events:
a complete `Line`, a `Rejected` line (overlong, binary noise, invalid UTF-8, malformed escape
sequence) that must not be executed, or `Cancelled` (Ctrl-C). It also produces the bytes to
echo back when the session is interactive.

What it does not do: no I/O, no command parsing, no clock. The shell feeds bytes in and
writes the echo bytes out; `edgeagent.console.commands` interprets the lines.

Rules / theory of operation:

1. A line ends at CR, LF or CRLF (an LF directly after a CR is swallowed, also across
   ``feed`` calls). Empty lines are reported as ``Line("")`` (the session ignores them).
2. Editing keys: BS (0x08) and DEL (0x7f) erase the last character (a whole UTF-8 sequence);
   Ctrl-U (0x15) kills the line silently (clients send it before a command to discard any
   half-typed garbage); Ctrl-C (0x03) cancels the line and reports `Cancelled`. TAB is a space.
   XON/XOFF (0x11, 0x13) are ignored: terminals send them for flow control.
3. ANSI escape sequences (CSI ``ESC [ ... final``, SS3 ``ESC O x``, ``ESC`` + intermediates +
   final, and string sequences OSC/DCS/SOS/PM/APC ended by BEL or ``ESC \\``) are dropped
   without effect, so arrow keys do nothing harmful. A sequence that is malformed, too long,
   or cut by CR/LF taints the line.
4. Every other C0 control byte, C1 byte and invalid UTF-8 *taints* the line: the bytes are
   dropped and, at the line's end, the whole line is `Rejected` instead of executed. Garbage
   therefore never turns into a command by having its noise filtered out
   (``re\\x00start x`` is rejected, not run as ``restart x``).
5. A line longer than ``max_line`` bytes switches to discard mode until its end, then is
   reported once as `Rejected`; no `Line` is ever longer than ``max_line`` bytes.
6. CR/LF always resets the escape and discard state, so one newline recovers from any noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

DEFAULT_MAX_LINE = 256
MAX_ESCAPE_LEN = 64  # bytes inside one escape sequence before it counts as noise

_BS, _DEL, _CTRL_U, _CTRL_C = 0x08, 0x7F, 0x15, 0x03
_CR, _LF, _TAB, _ESC, _BEL = 0x0D, 0x0A, 0x09, 0x1B, 0x07
_IGNORED = frozenset({0x11, 0x13})  # XON, XOFF
_STRING_INTRODUCERS = frozenset(b"]PX^_")  # OSC, DCS, SOS, PM, APC
_SS = frozenset(b"NO")  # SS2, SS3: one more byte follows


@dataclass(frozen=True, slots=True)
class Line:
    """A complete line, valid UTF-8, at most ``max_line`` bytes, without its terminator."""

    text: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that must not be executed; ``reason`` says why (for the error reply)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The operator pressed Ctrl-C: the line (and any pending confirmation) is abandoned."""


Event = Line | Rejected | Cancelled


@dataclass(frozen=True, slots=True)
class Fed:
    """What one ``feed`` produced: the events in order and the bytes to echo back."""

    events: tuple[Event, ...]
    echo: bytes


class _State(Enum):
    NORMAL = auto()
    ESC = auto()  # after ESC
    ESC_INTERMEDIATE = auto()  # ESC + 0x20..0x2F..., waiting for a final byte
    CSI = auto()  # after ESC [
    SS = auto()  # after ESC N / ESC O: one byte follows
    STRING = auto()  # OSC/DCS/...: until BEL or ESC \
    STRING_ESC = auto()  # ESC seen inside a string sequence
    DISCARD = auto()  # overlong line: drop until CR/LF


class LineEditor:
    """Frames and edits console input; see the module rules.

    Args:
        max_line: the longest line, in bytes, that can become a `Line`.
        echo: whether ``feed`` returns echo bytes (for people on a terminal).
    """

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, echo: bool = False) -> None:
        """Start with an empty line."""
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {max_line}")
        self.max_line = max_line
        self.echo = echo
        self._buf = bytearray()
        self._state = _State.NORMAL
        self._esc_len = 0
        self._taint: str | None = None
        self._seen = 0  # bytes of the current line, including dropped ones (for messages)
        self._after_cr = False

    def feed(self, data: bytes | bytearray) -> Fed:
        """Consume ``data`` and return the events it completed plus the echo bytes."""
        events: list[Event] = []
        echo = bytearray()
        for b in data:
            self._byte(b, events, echo)
        return Fed(tuple(events), bytes(echo) if self.echo else b"")

    def pending(self) -> bytes:
        """Return the bytes typed so far on the current line (to redraw it after output)."""
        return bytes(self._buf) if self._state is not _State.DISCARD else b""

    # ---- internals --------------------------------------------------------------------

    def _byte(self, b: int, events: list[Event], echo: bytearray) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if b in (_CR, _LF):
            if b == _LF and after_cr:
                return  # second half of CRLF
            if self._state not in (_State.NORMAL, _State.DISCARD):
                self._taint_once("escape sequence cut by end of line")
            self._end_line(events, echo)
            self._after_cr = b == _CR
            return
        self._seen += 1
        state = self._state
        if state is _State.DISCARD:
            return
        if state is not _State.NORMAL:
            self._escape_byte(b, events, echo)
            return
        self._normal_byte(b, events, echo)

    def _normal_byte(self, b: int, events: list[Event], echo: bytearray) -> None:
        if b in (_BS, _DEL):
            self._erase(echo)
        elif b == _CTRL_U:
            self._reset_line()
            echo += b"^U\r\n"
        elif b == _CTRL_C:
            self._reset_line()
            events.append(Cancelled())
            echo += b"^C\r\n"
        elif b == _ESC:
            self._state = _State.ESC
            self._esc_len = 0
        elif b in _IGNORED:
            pass
        elif b == _TAB:
            self._append(0x20, echo)
        elif b < 0x20:
            self._taint_once(f"control byte 0x{b:02x}")
        else:
            self._append(b, echo)

    def _escape_byte(self, b: int, events: list[Event], echo: bytearray) -> None:
        self._esc_len += 1
        if self._esc_len > MAX_ESCAPE_LEN:
            self._taint_once("escape sequence too long")
            self._state = _State.NORMAL
            return
        state = self._state
        if state is _State.ESC:
            if b == ord("["):
                self._state = _State.CSI
            elif b in _STRING_INTRODUCERS:
                self._state = _State.STRING
            elif b in _SS:
                self._state = _State.SS
            elif 0x20 <= b <= 0x2F:
                self._state = _State.ESC_INTERMEDIATE
            elif 0x30 <= b <= 0x7E:
                self._state = _State.NORMAL  # a complete two-byte sequence (e.g. ESC 7)
            else:
                self._abort_escape(b, events, echo)
        elif state is _State.ESC_INTERMEDIATE:
            if 0x20 <= b <= 0x2F:
                pass
            elif 0x30 <= b <= 0x7E:
                self._state = _State.NORMAL
            else:
                self._abort_escape(b, events, echo)
        elif state is _State.CSI:
            if 0x20 <= b <= 0x3F:
                pass
            elif 0x40 <= b <= 0x7E:
                self._state = _State.NORMAL
            else:
                self._abort_escape(b, events, echo)
        elif state is _State.SS:
            if 0x20 <= b <= 0x7E:
                self._state = _State.NORMAL
            else:
                self._abort_escape(b, events, echo)
        elif state is _State.STRING:
            if b == _BEL:
                self._state = _State.NORMAL
            elif b == _ESC:
                self._state = _State.STRING_ESC
            elif b < 0x20:
                self._taint_once(f"control byte 0x{b:02x} in a string sequence")
        else:  # STRING_ESC
            if b == ord("\\"):
                self._state = _State.NORMAL
            else:
                self._abort_escape(b, events, echo)

    def _abort_escape(self, b: int, events: list[Event], echo: bytearray) -> None:
        """A byte that cannot continue the sequence: taint, then treat it as fresh input."""
        self._taint_once("malformed escape sequence")
        self._state = _State.NORMAL
        self._normal_byte(b, events, echo)

    def _append(self, b: int, echo: bytearray) -> None:
        if len(self._buf) >= self.max_line:
            self._state = _State.DISCARD
            self._buf.clear()
            echo += b"\x07"
            return
        self._buf.append(b)
        if self._taint is None:
            echo.append(b)

    def _erase(self, echo: bytearray) -> None:
        if not self._buf:
            return
        # Drop UTF-8 continuation bytes, then the lead byte: one character.
        while self._buf and 0x80 <= self._buf[-1] <= 0xBF:
            self._buf.pop()
        if self._buf:
            self._buf.pop()
        echo += b"\b \b"

    def _taint_once(self, reason: str) -> None:
        if self._taint is None:
            self._taint = reason

    def _reset_line(self) -> None:
        self._buf.clear()
        self._state = _State.NORMAL
        self._taint = None
        self._seen = 0

    def _end_line(self, events: list[Event], echo: bytearray) -> None:
        echo += b"\r\n"
        if self._state is _State.DISCARD:
            events.append(
                Rejected(
                    f"line longer than {self.max_line} bytes ({self._seen} bytes); not executed"
                )
            )
        elif self._taint is not None:
            events.append(Rejected(f"line contained binary noise ({self._taint}); not executed"))
        else:
            try:
                text = self._buf.decode("utf-8")
            except UnicodeDecodeError:
                events.append(Rejected("line is not valid UTF-8; not executed"))
            else:
                if any(0x80 <= ord(c) <= 0x9F for c in text):
                    events.append(Rejected("line contained C1 control characters; not executed"))
                else:
                    events.append(Line(text))
        self._reset_line()

"""The agent's persisted state under the state folder (ADR 0007).

What it does:

- ``STATE/agent.lock``: an exclusive ``flock`` held for the agent's lifetime, so a second agent
  on the same state folder refuses to start (`StateLock`).
- ``STATE/state.json``: per workload the current, previous and candidate versions (full run
  specs, so the device can run them with the registry down), the bad versions, the OTA phase,
  the last error, and the pids of running guests (with their start times, so that guests
  orphaned by a SIGKILLed agent are found and stopped before anything else starts). Written
  atomically: temporary file in the same folder, fsync, rename, fsync the folder (`StateFile`).
- ``STATE/volumes/<workload>/<device>.img``: block device files. They belong to the workload,
  not to a version, so they follow it across updates (`volume_path`).
- ``STATE/console/<workload>.log``: the console ring buffer, appended and rotated to
  ``.log.1`` at ``CONSOLE_LOG_BYTES`` (`ConsoleLog`), so the tail survives agent restarts.

What it does not do: no decisions (`ota`, `policy`, `desired` make them) and no trio; the
writes are small and synchronous (a few KiB, on the agent's own disk).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from edgeagent.agent import ota
from edgeagent.agent.desired import VersionKey, Workload, workload_from_json
from edgeagent.errors import ConfigError, EdgeAgentError, StoreError
from edgeagent.verify.clock import write_atomic

log = logging.getLogger(__name__)

STATE_SCHEMA = 1
STATE_FILE = "state.json"
LOCK_FILE = "agent.lock"
VOLUMES_DIR = "volumes"
CONSOLE_DIR = "console"
#: Size of a new block device file (sparse).
VOLUME_BYTES = 4 * 1024 * 1024
#: Console log file size before rotation (one rotated file is kept).
CONSOLE_LOG_BYTES = 64 * 1024
#: Console lines kept in memory per workload.
CONSOLE_LINES = 500
#: Longest console line kept; longer lines are cut (a flooding guest).
CONSOLE_LINE_MAX = 1024

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")


class AgentBusyError(EdgeAgentError):
    """Another agent holds the state folder's lock."""


class StateLock:
    """The state folder's lock file (``flock`` on ``STATE/agent.lock``, close-on-exec)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            AgentBusyError: another agent holds it (the message names the folder and its pid).
            StoreError: the folder cannot be created or the file opened.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the agent lock: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AgentBusyError(
                    f"{self.path.parent}: another edgeagent agent is running on this state "
                    f"folder{holder}; refusing to start"
                ) from exc
            raise StoreError(f"{self.path}: cannot lock: {exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True)
class WorkloadState:
    """What is persisted for one workload."""

    current: Workload | None = None
    previous: Workload | None = None
    candidate: Workload | None = None
    phase: ota.Phase = "idle"
    bad: list[VersionKey] = field(default_factory=list)
    last_error: str = ""
    pids: list[tuple[int, int]] = field(default_factory=list)  # (pid, start time in ticks)

    def to_json(self) -> dict[str, object]:
        return {
            "current": None if self.current is None else self.current.to_json(),
            "previous": None if self.previous is None else self.previous.to_json(),
            "candidate": None if self.candidate is None else self.candidate.to_json(),
            "phase": self.phase,
            "bad": [list(k) for k in self.bad],
            "last_error": self.last_error,
            "pids": [list(p) for p in self.pids],
        }


def _opt_workload(obj: object, source: str) -> Workload | None:
    return None if obj is None else workload_from_json(obj, source)


def parse_state(data: bytes, source: str) -> dict[str, WorkloadState]:
    """Parse ``state.json``.

    Raises:
        ConfigError: not the expected JSON (names the file and the field).
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
        raise ConfigError(f"{source}: field 'schema': expected {STATE_SCHEMA}")
    workloads = doc.get("workloads")
    if not isinstance(workloads, dict):
        raise ConfigError(f"{source}: field 'workloads': expected an object")
    out: dict[str, WorkloadState] = {}
    for name, rec in workloads.items():
        where = f"{source}: workloads.{name}"
        if not isinstance(rec, dict) or not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}: expected an object under a target name")
        phase_raw = rec.get("phase", "idle")
        phase = next((p for p in ota.PHASES if p == phase_raw), None)
        if phase is None:
            raise ConfigError(f"{where}.phase: expected one of {ota.PHASES}, got {phase_raw!r}")
        bad_raw = rec.get("bad", [])
        pids_raw = rec.get("pids", [])
        if not isinstance(bad_raw, list) or not isinstance(pids_raw, list):
            raise ConfigError(f"{where}: fields 'bad' and 'pids' must be lists")
        bad: list[VersionKey] = []
        for item in bad_raw:
            if not (isinstance(item, list) and len(item) == 3):
                raise ConfigError(f"{where}.bad: expected [name, version, sha256] items")
            bad.append((str(item[0]), str(item[1]), str(item[2])))
        pids: list[tuple[int, int]] = []
        for item in pids_raw:
            if not (
                isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)
            ):
                raise ConfigError(f"{where}.pids: expected [pid, start_ticks] items")
            pids.append((int(item[0]), int(item[1])))
        out[name] = WorkloadState(
            current=_opt_workload(rec.get("current"), f"{where}.current"),
            previous=_opt_workload(rec.get("previous"), f"{where}.previous"),
            candidate=_opt_workload(rec.get("candidate"), f"{where}.candidate"),
            phase=phase,
            bad=bad,
            last_error=str(rec.get("last_error", "")),
            pids=pids,
        )
    return out


def render_state(workloads: dict[str, WorkloadState]) -> bytes:
    """The bytes of ``state.json``."""
    doc = {
        "schema": STATE_SCHEMA,
        "workloads": {name: ws.to_json() for name, ws in sorted(workloads.items())},
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


class StateFile:
    """``STATE/state.json``: load once, save after every transition (atomic + fsync)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> dict[str, WorkloadState]:
        """Read the state (empty when there is none yet).

        Raises:
            ConfigError: the file is malformed.
            StoreError: it cannot be read.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read agent state: {exc}") from exc
        return parse_state(data, str(self.path))

    def save(self, workloads: dict[str, WorkloadState]) -> None:
        """Persist the state atomically.

        Raises:
            StoreError: it cannot be written.
        """
        try:
            write_atomic(self.path, render_state(workloads))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write agent state: {exc}") from exc


def volume_path(state_dir: Path, workload: str, device: str) -> Path:
    """The block device file of ``device`` for ``workload`` (shared by all its versions)."""
    return state_dir / VOLUMES_DIR / workload / f"{device}.img"


def ensure_volume(state_dir: Path, workload: str, device: str) -> Path:
    """Create the block device file (sparse, `VOLUME_BYTES`) if missing; return its path.

    Raises:
        StoreError: it cannot be created.
    """
    path = volume_path(state_dir, workload, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < VOLUME_BYTES:
                os.ftruncate(fd, VOLUME_BYTES)
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create block device file: {exc}") from exc
    return path


# Orphaned guests ------------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot, /proc/PID/stat field 22), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def kill_orphans(pids: list[tuple[int, int]]) -> list[int]:
    """SIGKILL recorded guests that are still alive (same pid and start time); return them.

    A guest left running by a SIGKILLed agent would otherwise keep writing its volume while the
    restarted agent boots another instance on it (the never-two-writers rule).
    """
    killed: list[int] = []
    for pid, ticks in pids:
        if process_start_ticks(pid) == ticks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
                killed.append(pid)
                log.warning("killed guest pid %d left running by a previous agent", pid)
    return killed


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no such process, or a zombie waiting for its parent)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] == b"Z"


# Console ring buffer --------------------------------------------------------------------------


class LineFramer:
    """Cuts console bytes into lines: decoded, control characters replaced, overlong lines cut.

    One framer per running instance, so two instances of one workload (an OTA overlap) never mix
    their partial lines.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self._cutting = False

    def feed(self, chunk: bytes) -> list[str]:
        """Add console bytes; return the lines completed by them."""
        self._partial += chunk
        out: list[str] = []
        while True:
            nl = self._partial.find(b"\n")
            if nl < 0:
                if len(self._partial) > CONSOLE_LINE_MAX:
                    # An overlong line: keep its start, drop the rest until the newline.
                    if not self._cutting:
                        out.append(_clean(bytes(self._partial[:CONSOLE_LINE_MAX])) + " [cut]")
                    self._cutting = True
                    self._partial.clear()
                break
            raw = bytes(self._partial[:nl])
            del self._partial[: nl + 1]
            if self._cutting:
                self._cutting = False
                continue
            out.append(_clean(raw[:CONSOLE_LINE_MAX]))
        return out


def _clean(raw: bytes) -> str:
    text = raw.rstrip(b"\r").decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c == "\t" else "?" for c in text)


class ConsoleLog:
    """A workload's console: the last `CONSOLE_LINES` lines in memory, the tail on disk.

    Lines (from a `LineFramer`) are appended to ``STATE/console/<name>.log``, which is rotated
    to ``.log.1`` at `CONSOLE_LOG_BYTES`; both files are read back at start.
    """

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = state_dir / CONSOLE_DIR / f"{name}.log"
        self.lines: deque[str] = deque(maxlen=CONSOLE_LINES)
        self._size = 0
        self._fd = -1
        self._load()

    def _load(self) -> None:
        for path in (self.path.with_suffix(".log.1"), self.path):
            with contextlib.suppress(OSError):
                self.lines.extend(path.read_text(errors="replace").splitlines())
        with contextlib.suppress(OSError):
            self._size = self.path.stat().st_size

    def add(self, lines: list[str]) -> None:
        """Append guest console lines."""
        if lines:
            self.lines.extend(lines)
            self._append(lines)

    def mark(self, text: str) -> None:
        """Add an agent line (``[agent] ...``) to the log, e.g. "starting ticker v2"."""
        line = f"[agent] {text}"
        self.lines.append(line)
        self._append([line])

    def _append(self, lines: list[str]) -> None:
        data = "".join(f"{line}\n" for line in lines).encode()[-CONSOLE_LOG_BYTES:]
        try:
            if self._size + len(data) > CONSOLE_LOG_BYTES:
                self.close()
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path, self.path.with_suffix(".log.1"))
                self._size = 0
            if self._fd < 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o600)
            os.write(self._fd, data)
            self._size += len(data)
        except OSError as exc:
            log.warning("%s: cannot append console log: %s", self.path, exc)

    def close(self) -> None:
        """Close the log file (it is reopened on the next line)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines, oldest first."""
        if n <= 0:
            return []
        return list(self.lines)[-n:]

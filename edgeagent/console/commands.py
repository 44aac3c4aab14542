"""The diagnostics console's commands: parse, dispatch, confirm, render [pure].

What it does: a `Session` turns line-editor events into replies. Read-only commands
(``help``, ``status``, ``vms``, ``logs``, ``trust``, ``net``, ``version``, ``json``) are
answered at once from `AgentControl.snapshot` / ``console_tail``. State-changing commands
(``restart``, ``update``, ``rollback``) are checked against the `ConsolePolicy` and, when
allowed (or confirmed), returned as a `RunAction` that the trio shell awaits; the shell then
calls `Session.finish_action` to get the reply. Every reply is a JSON object
(``{"ok":true,"cmd":"status","data":{...}}`` or ``{"ok":false,"cmd":...,"error":"..."}``),
written as one JSON line in json mode or rendered for people by `render_text` in text mode.
`render_text` works on the JSON object alone, so the operator's client renders replies the
same way the agent does.

What it does not do: no I/O, no clock (``now`` is passed in), no trio. It does not perform the
actions; the agent does, behind `AgentControl`.

Rules / theory of operation (confirmation):

- ``disabled``: the command is refused with an error naming the config key.
- ``confirm``: the command is answered with ``ok:false``, ``"confirm":"yes TARGET"``; the
  *next* line of the same session must be exactly ``yes TARGET`` (or ``confirm TARGET``)
  within ``confirm_window_s`` seconds. TARGET is the workload name, or ``update``. Any other
  line, Ctrl-C or a rejected line drops the pending action (a confirmation is one-shot).
- ``allowed``: the command runs at once.
- Text sent to a terminal is sanitised: control characters in names, reasons and guest
  console lines are shown as ``\\xNN`` escapes, so a guest cannot drive the operator's
  terminal through ``logs``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from edgeagent.console.lineedit import Cancelled, Event, Line, Rejected
from edgeagent.control import (
    AgentControl,
    AgentSnapshot,
    ConsolePolicy,
    JsonObject,
    JsonValue,
    health_reasons,
    iso_time,
    net_json,
    snapshot_json,
    trust_json,
    workloads_json,
)
from edgeagent.errors import ControlError, EdgeAgentError

PROTOCOL_VERSION = 1
DEFAULT_LOG_LINES = 20
MAX_LOG_LINES = 500
DEFAULT_CONFIRM_WINDOW_S = 60.0
PROMPT = b"edgeagent> "
MAX_STATUS_REASONS = 10

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One console command: how to call it and what it does."""

    name: str
    usage: str
    summary: str
    action: str | None = None  # the ConsolePolicy key, for state-changing commands


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("help", "help", "list the commands"),
        CommandSpec("status", "status", "agent, trust and workload summary"),
        CommandSpec("vms", "vms", "every workload: version, state, restarts, heartbeat"),
        CommandSpec(
            "logs",
            "logs NAME [-n N]",
            f"last N console lines of NAME (default {DEFAULT_LOG_LINES})",
        ),
        CommandSpec("restart", "restart NAME", "restart workload NAME", action="restart"),
        CommandSpec("update", "update", "poll the registry now", action="update"),
        CommandSpec(
            "rollback", "rollback NAME", "roll NAME back to its previous version", action="rollback"
        ),
        CommandSpec("trust", "trust", "root version, key ids and expiry of each role"),
        CommandSpec("net", "net", "registry, HTTP listen address and interfaces"),
        CommandSpec("version", "version", "agent version and device id"),
        CommandSpec("json", "json on|off", "machine mode: one JSON object per reply line"),
        CommandSpec("yes", "yes TARGET", "confirm the pending restart/update/rollback"),
    )
}
_ALIASES = {"confirm": "yes", "?": "help"}


class UsageError(ControlError):
    """A console line that is not a valid command (the message says what was expected)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed console command."""

    name: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to send: the JSON object (rendered as JSON or text by the session mode)."""

    obj: JsonObject


@dataclass(frozen=True, slots=True)
class RunAction:
    """A state-changing action the shell must perform through `AgentControl`."""

    action: str  # "restart", "update" or "rollback"
    target: str | None  # the workload name; None for update


Outcome = Reply | RunAction


@dataclass(frozen=True, slots=True)
class _Pending:
    action: RunAction
    token: str  # what the operator must type, e.g. "yes ticker"
    deadline: float


def _check_name(cmd: str, unverified: str) -> str:
    if not _NAME_RE.fullmatch(unverified):
        raise UsageError(
            f"{cmd}: {sanitize(unverified)!r} is not a workload name "
            "(letters, digits, '.', '_', '+', '-'; at most 128)"
        )
    return unverified


def parse_command(line: str) -> Command | None:
    """Parse one console line; return None for a blank line.

    Raises:
        UsageError: unknown command or wrong arguments (the message gives the usage).
    """
    words = line.split()
    if not words:
        return None
    name = _ALIASES.get(words[0].lower(), words[0].lower())
    args = tuple(words[1:])
    spec = COMMANDS.get(name)
    if spec is None:
        raise UsageError(f"unknown command {sanitize(words[0][:32])!r}; type 'help' for the list")
    usage = f"usage: {spec.usage}"
    if name in ("restart", "rollback"):
        if len(args) != 1:
            raise UsageError(usage)
        return Command(name, (_check_name(name, args[0]),))
    if name == "logs":
        return Command(name, _parse_logs_args(args, usage))
    if name == "json":
        if len(args) != 1 or args[0].lower() not in ("on", "off"):
            raise UsageError(usage)
        return Command(name, (args[0].lower(),))
    if name == "yes":
        if len(args) != 1:
            raise UsageError(usage)
        return Command(name, (args[0],))
    if args:
        raise UsageError(f"{name} takes no arguments; {usage}")
    return Command(name)


def _parse_logs_args(args: tuple[str, ...], usage: str) -> tuple[str, ...]:
    name: str | None = None
    count = DEFAULT_LOG_LINES
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if word in ("-n", "--lines"):
            if not rest:
                raise UsageError(f"logs: -n needs a number; {usage}")
            value = rest.pop(0)
            if not value.isdigit() or not 1 <= int(value) <= MAX_LOG_LINES:
                raise UsageError(f"logs: -n must be a number from 1 to {MAX_LOG_LINES}")
            count = int(value)
        elif name is None and not word.startswith("-"):
            name = _check_name("logs", word)
        else:
            raise UsageError(usage)
    if name is None:
        raise UsageError(usage)
    return (name, str(count))


def ok(cmd: str, data: JsonValue) -> Reply:
    """Return a success reply."""
    return Reply({"ok": True, "cmd": cmd, "data": data})


def error(cmd: str | None, message: str, **extra: JsonValue) -> Reply:
    """Return an error reply (``cmd`` None when the line was not a command)."""
    obj: JsonObject = {"ok": False}
    if cmd is not None:
        obj["cmd"] = cmd
    obj["error"] = message
    obj.update(extra)
    return Reply(obj)


class Session:
    """One console session (a serial line while it stays open, or one TCP connection).

    Args:
        policy: the mode of each state-changing command.
        json_mode: start in json mode.
        echo: the session echoes typed bytes (only in text mode).
        confirm_window_s: how long a confirmation stays valid.
    """

    def __init__(
        self,
        policy: ConsolePolicy,
        *,
        json_mode: bool = False,
        echo: bool = False,
        confirm_window_s: float = DEFAULT_CONFIRM_WINDOW_S,
    ) -> None:
        """Start a session with nothing pending."""
        self.policy = policy
        self.json_mode = json_mode
        self._echo = echo
        self.confirm_window_s = confirm_window_s
        self._pending: _Pending | None = None

    @property
    def echo(self) -> bool:
        """Whether typed bytes should be echoed now (interactive text mode only)."""
        return self._echo and not self.json_mode

    def prompt(self) -> bytes:
        """Return the prompt to show after a reply (none in json mode or without echo)."""
        return PROMPT if self.echo else b""

    def handle_event(self, event: Event, control: AgentControl, now: float) -> Outcome | None:
        """Interpret one line-editor event; None means "nothing to send"."""
        if isinstance(event, Cancelled):
            pending, self._pending = self._pending, None
            if pending is not None:
                return error(pending.action.action, "cancelled")
            return None
        if isinstance(event, Rejected):
            self._pending = None
            return error(None, event.reason)
        assert isinstance(event, Line)
        return self.handle_line(event.text, control, now)

    def handle_line(self, line: str, control: AgentControl, now: float) -> Outcome | None:
        """Interpret one complete line (see the module rules)."""
        pending, self._pending = self._pending, None
        try:
            cmd = parse_command(line)
        except UsageError as exc:
            return error(None, str(exc))
        if cmd is None:
            return None
        try:
            if cmd.name == "yes":
                return self._confirm(cmd.args[0], pending, now)
            spec = COMMANDS[cmd.name]
            if spec.action is not None:
                return self._request(spec.action, cmd, control, now)
            return self._answer(cmd, control)
        except EdgeAgentError as exc:
            return error(cmd.name, str(exc))

    def finish_action(
        self, action: RunAction, *, message: str | None = None, failure: str | None = None
    ) -> Reply:
        """Return the reply for an action the shell performed (``failure`` when refused)."""
        if failure is not None:
            return error(action.action, failure)
        return ok(action.action, {"target": action.target, "message": message or "done"})

    def render(self, reply: Reply) -> bytes:
        """Return the bytes for ``reply`` in the session's mode, ending with CRLF."""
        if self.json_mode:
            return json_line(reply.obj)
        text = render_text(reply.obj)
        return text.replace("\n", "\r\n").encode("utf-8") + b"\r\n"

    # ---- internals --------------------------------------------------------------------

    def _request(
        self, action: str, cmd: Command, control: AgentControl, now: float
    ) -> Reply | RunAction:
        mode = self.policy.mode(action)
        if mode == "disabled":
            return error(
                action,
                f"{action} is disabled on this device (agent config serial.commands.{action})",
            )
        target = cmd.args[0] if cmd.args else None
        if target is not None:
            _known_workload(control.snapshot(), target)
        run = RunAction(action, target)
        if mode == "allowed":
            return run
        token = f"yes {target if target is not None else 'update'}"
        self._pending = _Pending(run, token, now + self.confirm_window_s)
        what = f"{action} {target}" if target is not None else action
        return error(
            action,
            f"{what} needs confirmation: type '{token}' within "
            f"{self.confirm_window_s:g} s (anything else cancels)",
            confirm=token,
        )

    def _confirm(self, target: str, pending: _Pending | None, now: float) -> Reply | RunAction:
        if pending is None:
            return error("yes", "nothing to confirm")
        if now > pending.deadline:
            return error(
                pending.action.action,
                f"confirmation expired after {self.confirm_window_s:g} s; send the command again",
            )
        if f"yes {target}" != pending.token:
            return error(
                pending.action.action,
                f"'yes {sanitize(target)}' does not match the pending '{pending.token}'; cancelled",
            )
        return pending.action

    def _answer(self, cmd: Command, control: AgentControl) -> Reply:
        name = cmd.name
        if name == "help":
            return ok(name, self._help())
        if name == "json":
            self.json_mode = cmd.args[0] == "on"
            return ok(name, {"json": self.json_mode, "protocol": PROTOCOL_VERSION})
        if name == "logs":
            wname, count = cmd.args[0], int(cmd.args[1])
            _known_workload(control.snapshot(), wname)
            lines: list[JsonValue] = list(control.console_tail(wname, count)[-count:])
            return ok(name, {"name": wname, "lines": lines})
        snap = control.snapshot()
        if name == "status":
            return ok(name, snapshot_json(snap))
        if name == "vms":
            return ok(name, {"time_ts": snap.taken_at, "workloads": workloads_json(snap)})
        if name == "trust":
            data = trust_json(snap.trust)
            data["time_ts"] = snap.taken_at
            return ok(name, data)
        if name == "net":
            return ok(name, net_json(snap.net))
        if name == "version":
            return ok(
                name,
                {
                    "edgeagent": snap.agent.version,
                    "device_id": snap.agent.device_id,
                    "protocol": PROTOCOL_VERSION,
                },
            )
        raise AssertionError(f"command {name!r} has no handler")

    def _help(self) -> JsonObject:
        commands: list[JsonValue] = []
        for spec in COMMANDS.values():
            entry: JsonObject = {"usage": spec.usage, "summary": spec.summary}
            if spec.action is not None:
                entry["mode"] = self.policy.mode(spec.action)
            commands.append(entry)
        return {"commands": commands}


def _known_workload(snap: AgentSnapshot, name: str) -> None:
    if snap.workload(name) is None:
        known = ", ".join(w.name for w in snap.workloads) or "none"
        raise ControlError(f"no workload called {name!r} (known: {known})")


# ---- rendering ------------------------------------------------------------------------


def json_line(obj: JsonObject) -> bytes:
    """Return ``obj`` as one compact ASCII JSON line ending with CRLF."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\r\n"


def status_line(snap: AgentSnapshot) -> bytes:
    """Return the periodic status line: ``{"edgeagent":"status",...}`` + CRLF."""
    reasons = health_reasons(snap)
    obj: JsonObject = {
        "edgeagent": "status",
        "time": iso_time(snap.taken_at),
        "device": snap.agent.device_id,
        "state": snap.agent.state,
        "uptime_s": round(max(0.0, snap.taken_at - snap.agent.started_at), 1),
        "healthy": not reasons,
        "reasons": list(reasons[:MAX_STATUS_REASONS]),
        "root_version": snap.trust.root_version,
        "workloads": [
            {
                "name": w.name,
                "version": w.version,
                "state": w.state,
                "restarts": w.restarts,
                "healthy": not w.health_reasons,
            }
            for w in snap.workloads
        ],
    }
    if snap.host is not None:
        obj["host"] = {
            "slot": snap.host.slot,
            "version": snap.host.version,
            "phase": snap.host.phase,
            "blessed": snap.host.blessed,
        }
    return json_line(obj)


def sanitize(text: str) -> str:
    """Return ``text`` with control characters shown as ``\\xNN`` (safe for a terminal)."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _get(obj: JsonValue, key: str) -> JsonValue:
    return obj.get(key) if isinstance(obj, dict) else None


def _str(value: JsonValue, default: str = "-") -> str:
    if value is None:
        return default
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return sanitize(value)
    if isinstance(value, list):
        return ", ".join(_str(v) for v in value) or default
    return sanitize(json.dumps(value))


def _num(value: JsonValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _items(value: JsonValue) -> list[JsonValue]:
    return value if isinstance(value, list) else []


def format_duration(seconds: float) -> str:
    """Return a short human duration: ``42s``, ``5m``, ``3h``, ``12d``."""
    s = abs(seconds)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def _age(now: JsonValue, ts: JsonValue) -> str:
    n, t = _num(now), _num(ts)
    if n is None or t is None:
        return "never"
    return f"{format_duration(n - t)} ago"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _render_workloads(data: JsonValue) -> list[str]:
    now = _get(data, "time_ts")
    rows = [["NAME", "VERSION", "KIND", "STATE", "RESTARTS", "HEARTBEAT", "EXIT", "HEALTH"]]
    for w in _items(_get(data, "workloads")):
        reasons = _items(_get(w, "health_reasons"))
        rows.append(
            [
                _str(_get(w, "name")),
                _str(_get(w, "version")),
                _str(_get(w, "kind")),
                _str(_get(w, "state")),
                _str(_get(w, "restarts"), "0"),
                _age(now, _get(w, "last_heartbeat_ts")),
                _str(_get(w, "last_exit_status")),
                "ok" if not reasons else _str(reasons),
            ]
        )
    if len(rows) == 1:
        return ["no workloads"]
    return _table(rows)


def _render_status(data: JsonValue) -> list[str]:
    agent = _get(data, "agent")
    trust = _get(data, "trust")
    uptime = _num(_get(agent, "uptime_s"))
    healthy = _get(data, "healthy") is True
    lines = [
        f"device {_str(_get(agent, 'device_id'))}  edgeagent {_str(_get(agent, 'version'))}  "
        f"state {_str(_get(agent, 'state'))}  "
        f"up {format_duration(uptime) if uptime is not None else '-'}",
        f"health: {'ok' if healthy else 'UNHEALTHY'}",
    ]
    lines += [f"  - {_str(r)}" for r in _items(_get(data, "reasons"))]
    lines.append(
        f"trust: root v{_str(_get(trust, 'root_version'))}, "
        f"last refresh {_str(_get(trust, 'last_refresh'), 'never')}"
    )
    lines.append("")
    lines += _render_workloads(data)
    return lines


def _render_trust(data: JsonValue) -> list[str]:
    now = _get(data, "time_ts")
    lines = [f"root version {_str(_get(data, 'root_version'))}"]
    roles = _get(data, "roles")
    rows = [["ROLE", "VERSION", "THRESHOLD", "EXPIRES", "KEYIDS"]]
    if isinstance(roles, dict):
        for role, info in roles.items():
            n, exp = _num(now), _num(_get(info, "expires_ts"))
            left = "-"
            if n is not None and exp is not None:
                left = f"in {format_duration(exp - n)}" if exp > n else "EXPIRED"
            keyids = ", ".join(_str(k)[:16] for k in _items(_get(info, "keyids"))) or "-"
            rows.append(
                [
                    sanitize(role),
                    _str(_get(info, "version")),
                    _str(_get(info, "threshold")),
                    f"{_str(_get(info, 'expires'))} ({left})",
                    keyids,
                ]
            )
    if len(rows) > 1:
        lines += _table(rows)
    lines.append(f"last refresh {_str(_get(data, 'last_refresh'), 'never')}")
    if _get(data, "last_error") is not None:
        lines.append(f"last error: {_str(_get(data, 'last_error'))}")
    return lines


def _render_net(data: JsonValue) -> list[str]:
    poll_ok = _get(data, "last_poll_ok")
    outcome = "ok" if poll_ok is True else "failed" if poll_ok is False else "-"
    lines = [
        f"registry {_str(_get(data, 'registry_url'))}  last poll "
        f"{_str(_get(data, 'last_poll'), 'never')} ({outcome})",
        f"http {_str(_get(data, 'http_listen'), 'off')}",
    ]
    for i in _items(_get(data, "interfaces")):
        state = "up" if _get(i, "up") is True else "down"
        lines.append(f"  {_str(_get(i, 'name'))} {state} {_str(_get(i, 'addresses'), '')}".rstrip())
    return lines


def _render_help(data: JsonValue) -> list[str]:
    rows = []
    for c in _items(_get(data, "commands")):
        mode = _get(c, "mode")
        suffix = f" [{_str(mode)}]" if mode is not None else ""
        rows.append([_str(_get(c, "usage")), _str(_get(c, "summary")) + suffix])
    return [*_table(rows), "Ctrl-U kills the line, Ctrl-C cancels it."]


_RENDERERS: dict[str, Callable[[JsonValue], list[str]]] = {
    "status": _render_status,
    "vms": _render_workloads,
    "trust": _render_trust,
    "net": _render_net,
    "help": _render_help,
}


def render_text(obj: JsonObject) -> str:
    """Render a reply object for people (lines joined by LF, control characters escaped)."""
    cmd = obj.get("cmd")
    if obj.get("ok") is not True:
        return f"error: {_str(obj.get('error'), 'unknown error')}"
    data = obj.get("data")
    if not isinstance(cmd, str):
        return _str(data)
    renderer = _RENDERERS.get(cmd)
    if renderer is not None:
        return "\n".join(renderer(data))
    if cmd == "logs":
        lines = [_str(v, "") for v in _items(_get(data, "lines"))]
        return "\n".join(lines) if lines else f"(no console output from {_str(_get(data, 'name'))})"
    if cmd == "version":
        return (
            f"edgeagent {_str(_get(data, 'edgeagent'))} on device {_str(_get(data, 'device_id'))} "
            f"(console protocol {_str(_get(data, 'protocol'))})"
        )
    if cmd == "json":
        return f"json mode {'on' if _get(data, 'json') is True else 'off'}"
    if cmd in ("restart", "update", "rollback"):
        return _str(_get(data, "message"), "done")
    return _str(data)

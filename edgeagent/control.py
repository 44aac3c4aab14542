"""The seam between the agent core and its operator interfaces [pure].

What it does: defines `AgentControl`, the `typing.Protocol` the agent implements and the
diagnostics services consume (the serial console in `edgeagent.console`, the HTTP health
endpoints in `edgeagent.health`); the frozen value types of an `AgentSnapshot`; the settings
those services take (`ConsolePolicy`, `SerialConsoleSettings`); and pure helpers shared by
every renderer: the JSON form of a snapshot, ISO 8601 times, and the health verdict
(`health_reasons`).

What it does not do: no I/O, no clock, no trio. A snapshot is a copy taken by the agent
(``taken_at`` is the agent's wall clock at that moment); renderers compute ages from it and
never read the clock themselves.

Contract for implementers (the agent):

- ``snapshot()`` is cheap and synchronous (it copies in-memory state; the console calls it
  for every ``status`` and for each periodic status line, HTTP for each request).
- ``console_tail(name, n)`` returns at most ``n`` most recent console lines of a workload,
  oldest first, without line terminators; raises `UnknownWorkloadError` for an unknown name.
- ``restart``, ``update_now`` and ``rollback`` are awaited by the console (with a deadline
  set by the caller); they return a one-line human message describing what was done or
  scheduled, and raise `ControlError` (or `UnknownWorkloadError`) with a clear message when
  the action is refused. Any other exception is a bug and propagates.
- Times are Unix seconds (float, wall clock); ``None`` means "never" or "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, TypeAlias

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"

# Agent states, in lifecycle order. "degraded" means running with at least one health reason.
AGENT_STATES: tuple[str, ...] = ("starting", "running", "degraded", "stopping")

# Workload states the agent reports. The console and HTTP only display them; the one rule that
# depends on them is health: a workload is healthy when its ``health_reasons`` is empty.
WORKLOAD_STATES: tuple[str, ...] = (
    "pending",  # desired but not yet pulled/verified
    "starting",  # booted, waiting for its first heartbeat
    "running",  # heartbeats arriving
    "backoff",  # exited, waiting to be restarted
    "crashloop",  # gave up restarting (crash-loop detected)
    "trial",  # new version in its OTA health window
    "stopping",
    "stopped",
    "failed",  # could not be pulled, verified or booted
)

ActionMode = Literal["disabled", "confirm", "allowed"]
ACTION_MODES: tuple[str, ...] = ("disabled", "confirm", "allowed")
# The state-changing console commands a policy governs.
ACTIONS: tuple[str, ...] = ("restart", "update", "rollback")


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """The agent process itself."""

    device_id: str
    version: str  # edgeagent package version
    started_at: float  # Unix time the agent started
    state: str  # one of AGENT_STATES
    groups: tuple[str, ...] = ()
    # Agent-level health reasons (e.g. "registry unreachable since ...", "store full").
    health_reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostInfo:
    """The host OS's A/B state when host OTA runs (ADR 0010)."""

    slot: str  # the booted slot, "a" or "b"
    version: str  # the good host version
    phase: str  # the host OTA phase (idle, downloading, ..., trial, committed, rolled-back)
    # True once this boot is blessed (its boot entry carries no counter and is the default).
    blessed: bool
    candidate: str | None = None  # the version being written, staged or tried
    last: str | None = None  # the last outcome ("committed 2", "rolled back 3: ...")
    error: str | None = None  # the last error, cleared by the next success


@dataclass(frozen=True, slots=True)
class RoleTrust:
    """One top-level TUF role as the device currently trusts it."""

    role: str  # "root", "targets", "snapshot", "timestamp" (or a delegated role name)
    version: int
    threshold: int
    keyids: tuple[str, ...]
    expires: float  # Unix time


@dataclass(frozen=True, slots=True)
class TrustInfo:
    """The device's trusted metadata: root version, key ids and expiry per role."""

    root_version: int
    roles: tuple[RoleTrust, ...] = ()
    last_refresh: float | None = None  # last successful metadata refresh
    last_error: str | None = None  # last refresh error message, if the last refresh failed


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """One supervised guest (a signed target the device runs)."""

    name: str
    version: str
    kind: str  # "hvt" (edge-tender) or "qemu"
    state: str  # one of WORKLOAD_STATES
    restarts: int = 0
    last_heartbeat: float | None = None
    last_exit_status: int | None = None
    # Why this workload is unhealthy; empty means healthy.
    health_reasons: tuple[str, ...] = ()
    started_at: float | None = None
    previous_version: str | None = None  # the version an OTA rollback would return to
    bad_versions: tuple[str, ...] = ()  # versions marked bad after a rollback


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """One host network interface."""

    name: str
    up: bool
    addresses: tuple[str, ...] = ()  # "10.0.0.1/24", "fe80::1/64"


@dataclass(frozen=True, slots=True)
class NetInfo:
    """Network view of the agent: where it listens, what it polls, its interfaces."""

    registry_url: str
    http_listen: str | None = None  # "HOST:PORT" or None when HTTP health is off
    last_poll: float | None = None  # last registry poll attempt
    last_poll_ok: bool | None = None
    interfaces: tuple[InterfaceInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """Everything the diagnostics interfaces show, copied at ``taken_at``."""

    taken_at: float
    agent: AgentInfo
    trust: TrustInfo
    net: NetInfo
    workloads: tuple[WorkloadInfo, ...] = ()
    host: HostInfo | None = None  # None unless host OTA runs

    def workload(self, name: str) -> WorkloadInfo | None:
        """Return the workload called ``name``, or None."""
        for w in self.workloads:
            if w.name == name:
                return w
        return None


class AgentControl(Protocol):
    """What the agent offers its diagnostics interfaces (see the module docstring)."""

    def snapshot(self) -> AgentSnapshot:
        """Return a consistent copy of the agent's state now."""
        ...

    def console_tail(self, name: str, n: int) -> list[str]:
        """Return the last ``n`` console lines of workload ``name``, oldest first.

        Raises:
            UnknownWorkloadError: no workload called ``name``.
        """
        ...

    async def restart(self, name: str) -> str:
        """Restart workload ``name`` now (stop, then start the same version).

        Raises:
            UnknownWorkloadError: no workload called ``name``.
            ControlError: the restart was refused (e.g. an update of it is in progress).
        """
        ...

    async def update_now(self) -> str:
        """Poll the registry now instead of waiting for the next interval.

        Raises:
            ControlError: an update is already running or the agent is stopping.
        """
        ...

    async def rollback(self, name: str) -> str:
        """Roll workload ``name`` back to its previous version and mark the current one bad.

        Raises:
            UnknownWorkloadError: no workload called ``name``.
            ControlError: there is no previous version to roll back to.
        """
        ...


@dataclass(frozen=True, slots=True)
class ConsolePolicy:
    """Per-action mode for the console's state-changing commands (from the agent config).

    ``disabled``: refused; ``confirm``: the operator must answer ``yes NAME`` (or ``yes``
    for ``update``) on the next line of the same session; ``allowed``: runs at once.
    """

    # The defaults match the agent config's ([serial.commands] in edgeagent.config).
    restart: ActionMode = "allowed"
    update: ActionMode = "allowed"
    rollback: ActionMode = "confirm"

    def mode(self, action: str) -> ActionMode:
        """Return the mode for ``action`` (one of ACTIONS)."""
        if action == "restart":
            return self.restart
        if action == "update":
            return self.update
        if action == "rollback":
            return self.rollback
        raise ValueError(f"unknown console action {action!r}; expected one of {ACTIONS}")

    @classmethod
    def from_mapping(cls, unverified: Mapping[str, object], *, where: str) -> ConsolePolicy:
        """Build a policy from a config table such as ``{"restart": "confirm"}``.

        Args:
            unverified: the table as parsed from TOML.
            where: the config location for error messages, e.g. ``agent.toml [serial.commands]``.

        Raises:
            ValueError: an unknown action or a mode not in ACTION_MODES (the message names the
                key; the config loader wraps it in `ConfigError`).
        """
        modes: dict[str, ActionMode] = {}
        for key, value in unverified.items():
            if key not in ACTIONS:
                raise ValueError(f"{where}: unknown action {key!r}; expected one of {ACTIONS}")
            if value == "disabled" or value == "confirm" or value == "allowed":
                modes[key] = value
            else:
                raise ValueError(f"{where}: {key} = {value!r}; expected one of {ACTION_MODES}")
        return cls(**modes)


@dataclass(frozen=True, slots=True)
class SerialConsoleSettings:
    """Settings of one serial diagnostics console (one per configured port).

    ``path`` is a tty or pty path (``/dev/ttyS0``, ``/dev/ttyUSB0``, ``/dev/pts/3``).
    ``status_interval_s`` <= 0 turns the periodic JSON status line off. ``echo`` echoes typed
    bytes back (for people on a terminal; scripts leave it off). ``reopen_*`` bound the back-off
    used when the port vanishes (USB adapter unplugged). The same settings serve the TCP console
    (``path`` is then unused). ``serve_serial_console`` takes the path (or fd) to open as its
    first argument; ``path`` records what the config named.
    """

    path: str
    baud: int = 115200
    status_interval_s: float = 10.0
    echo: bool = False
    max_line: int = 256
    policy: ConsolePolicy = field(default_factory=ConsolePolicy)
    action_deadline_s: float = 30.0
    write_deadline_s: float = 2.0  # output that cannot be written in time is dropped
    reopen_initial_s: float = 0.5
    reopen_max_s: float = 10.0


# ---- pure helpers shared by the renderers -------------------------------------------------


def iso_time(ts: float | None) -> str | None:
    """Return ``ts`` (Unix seconds) as ISO 8601 UTC with a ``Z``, or None for None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def health_reasons(snap: AgentSnapshot) -> list[str]:
    """Return why the device is unhealthy (empty list = healthy).

    The verdict: the agent's own reasons, an agent that is not running, each workload's
    reasons (prefixed with its name), and any trusted role whose metadata has expired at
    ``taken_at`` (the device could no longer accept updates).
    """
    reasons = list(snap.agent.health_reasons)
    if snap.agent.state not in ("running", "degraded"):
        reasons.append(f"agent is {snap.agent.state}")
    for w in snap.workloads:
        reasons.extend(f"{w.name}: {r}" for r in w.health_reasons)
    reasons.extend(
        f"trust: {role.role} metadata expired at {iso_time(role.expires)}"
        for role in snap.trust.roles
        if role.expires <= snap.taken_at
    )
    return reasons


def _workload_json(w: WorkloadInfo) -> JsonObject:
    return {
        "name": w.name,
        "version": w.version,
        "kind": w.kind,
        "state": w.state,
        "healthy": not w.health_reasons,
        "health_reasons": list(w.health_reasons),
        "restarts": w.restarts,
        "last_heartbeat": iso_time(w.last_heartbeat),
        "last_heartbeat_ts": w.last_heartbeat,
        "last_exit_status": w.last_exit_status,
        "started_at": iso_time(w.started_at),
        "previous_version": w.previous_version,
        "bad_versions": list(w.bad_versions),
    }


def trust_json(t: TrustInfo) -> JsonObject:
    """Return the JSON form of the trust section."""
    return {
        "root_version": t.root_version,
        "roles": {
            r.role: {
                "version": r.version,
                "threshold": r.threshold,
                "keyids": list(r.keyids),
                "expires": iso_time(r.expires),
                "expires_ts": r.expires,
            }
            for r in t.roles
        },
        "last_refresh": iso_time(t.last_refresh),
        "last_error": t.last_error,
    }


def net_json(n: NetInfo) -> JsonObject:
    """Return the JSON form of the network section."""
    return {
        "registry_url": n.registry_url,
        "http_listen": n.http_listen,
        "last_poll": iso_time(n.last_poll),
        "last_poll_ok": n.last_poll_ok,
        "interfaces": [
            {"name": i.name, "up": i.up, "addresses": list(i.addresses)} for i in n.interfaces
        ],
    }


def agent_json(snap: AgentSnapshot) -> JsonObject:
    """Return the JSON form of the agent section (uptime computed at ``taken_at``)."""
    a = snap.agent
    return {
        "device_id": a.device_id,
        "version": a.version,
        "state": a.state,
        "groups": list(a.groups),
        "started_at": iso_time(a.started_at),
        "uptime_s": round(max(0.0, snap.taken_at - a.started_at), 3),
        "health_reasons": list(a.health_reasons),
    }


def workloads_json(snap: AgentSnapshot) -> list[JsonValue]:
    """Return the JSON form of every workload, in snapshot order."""
    return [_workload_json(w) for w in snap.workloads]


def snapshot_json(snap: AgentSnapshot) -> JsonObject:
    """Return the whole snapshot as a JSON object (the ``/status`` body and console ``status``)."""
    reasons = health_reasons(snap)
    return {
        "time": iso_time(snap.taken_at),
        "time_ts": snap.taken_at,
        "healthy": not reasons,
        "reasons": list(reasons),
        "agent": agent_json(snap),
        "trust": trust_json(snap.trust),
        "workloads": workloads_json(snap),
        "net": net_json(snap.net),
        "host": None if snap.host is None else host_json(snap.host),
    }


def host_json(host: HostInfo) -> JsonObject:
    """Return the JSON form of the host OS's A/B state."""
    return {
        "slot": host.slot,
        "version": host.version,
        "phase": host.phase,
        "blessed": host.blessed,
        "candidate": host.candidate,
        "last": host.last,
        "error": host.error,
    }

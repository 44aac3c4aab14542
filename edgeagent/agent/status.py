"""Status of the agent for the diagnostics interfaces: workloads, trust, network.

What it does: builds the `edgeagent.control` value types (`WorkloadInfo`, `TrustInfo`,
`InterfaceInfo`) from the agent's in-memory state, the TUF trusted set and /sys/class/net, for
`Agent.snapshot`.

What it does not do: no decisions and no changes; it only reads.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.agent.state import WorkloadState
from edgeagent.client.updater import Updater
from edgeagent.control import InterfaceInfo, RoleTrust, TrustInfo, WorkloadInfo

if TYPE_CHECKING:
    from edgeagent.agent.core import Agent

_POLICY_STATE = {
    "idle": "pending",
    "starting": "starting",
    "running": "running",
    "backoff": "backoff",
    "crashloop": "crashloop",
    "stopped": "stopped",
}


def workload_info(agent: Agent, name: str) -> WorkloadInfo:
    """One workload's status as the diagnostics interfaces show it."""
    ws = agent.ws.get(name, WorkloadState())
    sup = agent.sups.get(name)
    trial = agent.trials.get(name)
    reasons: list[str] = []
    failed = agent.failed.get(name)
    if failed is not None:
        reasons.append(failed[1])
    if name in agent.skipped:
        reasons.append(agent.skipped[name])
    w = ws.current or ws.candidate
    state = "pending"
    restarts = 0
    last_hb: float | None = None
    exit_status: int | None = None
    started: float | None = None
    if sup is not None:
        p = sup.policy
        state = _POLICY_STATE[p.state]
        restarts = p.restarts
        last_hb = sup.last_heartbeat_wall
        exit_status = sup.last_exit_status
        started = sup.started_wall
        # Waiting for the first heartbeat ("starting") is not unhealthy yet.
        if not p.healthy and p.state != "idle" and p.reason:
            reasons.append(p.reason)
    elif ws.current is None and (failed is not None or name in agent.skipped):
        state = "failed"
    elif ws.current is not None and name not in agent.updating:
        state = "stopped"
        if ws.last_error:
            reasons.append(ws.last_error)
    if trial is not None:
        state = "trial"
        w = ws.candidate or w
        last_hb = trial.last_heartbeat_wall
        started = trial.started_wall
    if w is None:
        published = agent.published.get(name)
        version = "" if published is None else published.version
        kind = "hvt" if published is None else published.kind
    else:
        version, kind = w.version, w.kind
    return WorkloadInfo(
        name=name,
        version=version,
        kind=kind,
        state=state,
        restarts=restarts,
        last_heartbeat=last_hb,
        last_exit_status=exit_status,
        health_reasons=tuple(reasons),
        started_at=started,
        previous_version=None if ws.previous is None else ws.previous.version,
        bad_versions=tuple(v for (_n, v, _s) in ws.bad),
    )


def trust_info(
    updater: Updater | None, last_refresh: float | None, poll_error: str | None
) -> TrustInfo:
    """The trusted metadata's versions, key ids and expiry per top-level role."""
    if updater is None:
        return TrustInfo(root_version=0)
    ts = updater.trusted
    root = ts.root
    roles: list[RoleTrust] = []
    for role_name, signed in (
        ("root", root),
        ("targets", ts.targets),
        ("snapshot", ts.snapshot),
        ("timestamp", ts.timestamp),
    ):
        if signed is None:
            continue
        role = root.roles.get(role_name)
        roles.append(
            RoleTrust(
                role=role_name,
                version=signed.version,
                threshold=0 if role is None else role.threshold,
                keyids=() if role is None else tuple(role.keyids),
                expires=signed.expires.timestamp(),
            )
        )
    return TrustInfo(
        root_version=root.version,
        roles=tuple(roles),
        last_refresh=last_refresh,
        last_error=poll_error,
    )


def interfaces() -> tuple[InterfaceInfo, ...]:
    """The host's network interfaces and whether each is up (from /sys/class/net)."""
    out: list[InterfaceInfo] = []
    for _index, name in socket.if_nameindex():
        try:
            state = Path(f"/sys/class/net/{name}/operstate").read_text().strip()
        except OSError:
            state = "unknown"
        out.append(InterfaceInfo(name=name, up=state in ("up", "unknown")))
    return tuple(out)

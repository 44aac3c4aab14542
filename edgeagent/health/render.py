"""The HTTP health endpoints' decisions and bodies [pure].

What it does: maps a parsed request to a `Response` for ``/healthz`` (``200 ok`` or ``503``
with a JSON body of reasons), ``/status`` (the snapshot as JSON) and ``/metrics`` (Prometheus
text exposition format 0.0.4); 404 for any other path, 405 for methods other than GET and HEAD;
renders the response head. The Prometheus renderer escapes label values (backslash, double
quote, newline) and writes HELP and TYPE lines for every family.

What it does not do: no sockets, no clock. The request head is parsed by the registry's pure
parser (`edgeagent.registry.server_core.parse_head`), and the trio shell (`health.http`) does
the I/O and passes the snapshot and ``now`` in.

Metric families (the names are a stable interface for dashboards and alerts):

=============================================  =======  =========================================
name                                           type     value
=============================================  =======  =========================================
edgeagent_up{device_id,version}                gauge    1 while the agent runs (running/degraded)
edgeagent_healthy                              gauge    1 when /healthz answers 200
edgeagent_uptime_seconds                       gauge    seconds since the agent started
edgeagent_workload_state{name,version,state}   gauge    1 for the current state, 0 for the others
edgeagent_workload_healthy{name}               gauge    1 when the workload has no health reasons
edgeagent_workload_restarts_total{name}        counter  restarts since the agent started
edgeagent_workload_last_heartbeat_seconds      gauge    Unix time of the last heartbeat (absent:
  {name}                                                never)
edgeagent_workload_last_exit_status{name}      gauge    last exit status (absent: never exited)
edgeagent_trust_root_version                   gauge    trusted root metadata version
edgeagent_metadata_version{role}               gauge    trusted version of each top-level role
edgeagent_metadata_expires_seconds{role}       gauge    Unix time each role's metadata expires
edgeagent_registry_last_poll_seconds           gauge    Unix time of the last registry poll
edgeagent_registry_last_poll_ok                gauge    1 when the last poll succeeded
=============================================  =======  =========================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate

from edgeagent.control import WORKLOAD_STATES, AgentSnapshot, health_reasons, snapshot_json
from edgeagent.registry.server_core import REASONS, Request

SERVER_NAME = "edgeagent-health"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
PATHS: tuple[str, ...] = ("/healthz", "/status", "/metrics")
_REASONS = {**REASONS, 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: status, content type, body (HEAD sends the head only)."""

    status: int
    content_type: str
    body: bytes
    allow: str | None = None  # the Allow header of a 405


def _json(obj: object) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=False).encode() + b"\n"


def healthz(snap: AgentSnapshot) -> Response:
    """Return ``200 ok`` when healthy, else ``503`` with ``{"healthy":false,"reasons":[...]}``."""
    reasons = health_reasons(snap)
    if not reasons:
        return Response(200, TEXT_CONTENT_TYPE, b"ok\n")
    return Response(503, JSON_CONTENT_TYPE, _json({"healthy": False, "reasons": reasons}))


def status(snap: AgentSnapshot) -> Response:
    """Return the whole snapshot as JSON."""
    return Response(200, JSON_CONTENT_TYPE, _json(snapshot_json(snap)))


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format (``\\`` ``"`` and newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if labels:
        inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {_value(value)}"
    return f"{name} {_value(value)}"


def _family(
    out: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[dict[str, str], float]],
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    out.extend(_sample(name, labels, value) for labels, value in samples)


def metrics_text(snap: AgentSnapshot) -> str:
    """Return the Prometheus text exposition (format 0.0.4) for ``snap``."""
    a, t, n, ws = snap.agent, snap.trust, snap.net, snap.workloads
    out: list[str] = []
    up = 1.0 if a.state in ("running", "degraded") else 0.0
    _family(
        out,
        "edgeagent_up",
        "gauge",
        "1 while the agent is running (running or degraded), 0 while starting or stopping.",
        [({"device_id": a.device_id, "version": a.version}, up)],
    )
    _family(
        out,
        "edgeagent_healthy",
        "gauge",
        "1 when /healthz answers 200.",
        [({}, 0.0 if health_reasons(snap) else 1.0)],
    )
    _family(
        out,
        "edgeagent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        [({}, max(0.0, snap.taken_at - a.started_at))],
    )
    states = list(WORKLOAD_STATES)
    _family(
        out,
        "edgeagent_workload_state",
        "gauge",
        "1 for the workload's current state, 0 for the other states.",
        [
            ({"name": w.name, "version": w.version, "state": s}, 1.0 if s == w.state else 0.0)
            for w in ws
            for s in (states if w.state in states else [*states, w.state])
        ],
    )
    _family(
        out,
        "edgeagent_workload_healthy",
        "gauge",
        "1 when the workload has no health reasons.",
        [({"name": w.name}, 0.0 if w.health_reasons else 1.0) for w in ws],
    )
    _family(
        out,
        "edgeagent_workload_restarts_total",
        "counter",
        "Restarts of the workload since the agent started.",
        [({"name": w.name}, float(w.restarts)) for w in ws],
    )
    _family(
        out,
        "edgeagent_workload_last_heartbeat_seconds",
        "gauge",
        "Unix time of the workload's last heartbeat (absent: none yet).",
        [({"name": w.name}, w.last_heartbeat) for w in ws if w.last_heartbeat is not None],
    )
    _family(
        out,
        "edgeagent_workload_last_exit_status",
        "gauge",
        "Exit status of the workload's last run (absent: it has not exited).",
        [
            ({"name": w.name}, float(w.last_exit_status))
            for w in ws
            if w.last_exit_status is not None
        ],
    )
    _family(
        out,
        "edgeagent_trust_root_version",
        "gauge",
        "Version of the trusted TUF root metadata.",
        [({}, float(t.root_version))],
    )
    _family(
        out,
        "edgeagent_metadata_version",
        "gauge",
        "Trusted version of each TUF role's metadata.",
        [({"role": r.role}, float(r.version)) for r in t.roles],
    )
    _family(
        out,
        "edgeagent_metadata_expires_seconds",
        "gauge",
        "Unix time at which each trusted TUF role's metadata expires.",
        [({"role": r.role}, r.expires) for r in t.roles],
    )
    _family(
        out,
        "edgeagent_registry_last_poll_seconds",
        "gauge",
        "Unix time of the last registry poll (absent: none yet).",
        [({}, n.last_poll)] if n.last_poll is not None else [],
    )
    _family(
        out,
        "edgeagent_registry_last_poll_ok",
        "gauge",
        "1 when the last registry poll succeeded.",
        [({}, 1.0 if n.last_poll_ok else 0.0)] if n.last_poll_ok is not None else [],
    )
    return "\n".join(out) + "\n"


def metrics(snap: AgentSnapshot) -> Response:
    """Return the ``/metrics`` response."""
    return Response(200, METRICS_CONTENT_TYPE, metrics_text(snap).encode("utf-8"))


def respond(req: Request, snap: AgentSnapshot) -> Response:
    """Route ``req`` (GET/HEAD only; the query string is ignored)."""
    if req.method not in ("GET", "HEAD"):
        return Response(
            405, TEXT_CONTENT_TYPE, b"405 Method Not Allowed: GET or HEAD\n", allow="GET, HEAD"
        )
    path = req.target.split("?", 1)[0]
    if path == "/healthz":
        return healthz(snap)
    if path == "/status":
        return status(snap)
    if path == "/metrics":
        return metrics(snap)
    return Response(404, TEXT_CONTENT_TYPE, f"404 Not Found: try {', '.join(PATHS)}\n".encode())


def error_response(status_code: int, detail: str) -> Response:
    """Return a small text error (for a request head that could not be parsed)."""
    reason = _REASONS.get(status_code, "Error")
    return Response(status_code, TEXT_CONTENT_TYPE, f"{status_code} {reason}: {detail}\n".encode())


def render_head(resp: Response, *, keep_alive: bool, now: float) -> bytes:
    """Render the status line and headers (no caching: health is always current)."""
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        f"Date: {formatdate(now, usegmt=True)}",
        f"Server: {SERVER_NAME}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if resp.allow is not None:
        lines.append(f"Allow: {resp.allow}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

"""HTTP health endpoints on a real socket (127.0.0.1, port 0) and the fleet heartbeat.

The agent is `FakeControl`, an honest in-memory test double. /metrics is checked with a strict
parser of the Prometheus text exposition format 0.0.4 written from the format's description.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import httpx
import pytest
import trio

from edgeagent.health.http import post_fleet_heartbeat, serve_health_http
from edgeagent.health.render import escape_label_value
from tests.fakes.fake_control import T0, FakeControl

DEADLINE_S = 10

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE_RE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? "
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))(?: -?\d+)?$"
)
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


@dataclass
class Family:
    help: str
    type: str | None = None
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def parse_prometheus(text: str) -> dict[str, Family]:
    """Parse exposition text strictly; every sample must follow its family's HELP and TYPE."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    current_name = ""
    for line in text.splitlines():
        assert line, "blank lines are not produced"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name)
            assert name not in families, f"family {name} appears twice"
            current = families[name] = Family(help_text)
            current_name = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None
            assert name == current_name, f"TYPE for {name} outside its family"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            assert current.type is None
            assert current.samples == [], "TYPE must come before the samples"
            current.type = kind
        else:
            m = _SAMPLE_RE.match(line)
            assert m, f"malformed sample line: {line!r}"
            assert current is not None
            assert m.group("name") == current_name, f"sample {line!r} outside its family"
            labels = {k: _unescape(v) for k, v in _LABEL_RE.findall(m.group("labels") or "")}
            current.samples.append((labels, float(m.group("value"))))
    return families


@pytest.fixture
async def fake() -> FakeControl:
    return FakeControl.with_demo_workloads()


@pytest.fixture
async def base_url(nursery: trio.Nursery, fake: FakeControl) -> str:
    host, port = await nursery.start(serve_health_http, "127.0.0.1", 0, fake)
    return f"http://{host}:{port}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_healthz_503_with_reasons_then_200(
    base_url: str, http: httpx.AsyncClient, fake: FakeControl
) -> None:
    with trio.fail_after(DEADLINE_S):
        resp = await http.get(f"{base_url}/healthz")
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {"healthy": False, "reasons": ["kvstore: no heartbeat within 10 s"]}
        fake.workloads.pop("kvstore")
        resp = await http.get(f"{base_url}/healthz")
    assert resp.status_code == 200
    assert resp.text == "ok\n"
    assert resp.headers["cache-control"] == "no-store"


async def test_healthz_503_when_agent_stopping_or_metadata_expired(
    base_url: str, http: httpx.AsyncClient, fake: FakeControl
) -> None:
    fake.workloads.pop("kvstore")
    fake.state = "stopping"
    fake.expires_in_s = -60
    with trio.fail_after(DEADLINE_S):
        resp = await http.get(f"{base_url}/healthz")
    assert resp.status_code == 503
    reasons = resp.json()["reasons"]
    assert "agent is stopping" in reasons
    assert any("timestamp metadata expired" in r for r in reasons)


async def test_status_json(base_url: str, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE_S):
        resp = await http.get(f"{base_url}/status")
    assert resp.status_code == 200
    body = resp.json()
    assert body["agent"]["device_id"] == "dev-0001"
    assert body["agent"]["uptime_s"] == 3600
    assert body["trust"]["root_version"] == 1
    ticker = body["workloads"][0]
    assert ticker["name"] == "ticker"
    assert ticker["version"] == "2"
    assert ticker["state"] == "running"
    assert ticker["restarts"] == 1
    assert ticker["last_heartbeat"] == "2027-01-15T07:59:57Z"


async def test_metrics_parse_as_prometheus_text(
    base_url: str, http: httpx.AsyncClient, fake: FakeControl
) -> None:
    with trio.fail_after(DEADLINE_S):
        resp = await http.get(f"{base_url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = parse_prometheus(resp.text)
    expected = {
        "edgeagent_up": "gauge",
        "edgeagent_workload_state": "gauge",
        "edgeagent_workload_restarts_total": "counter",
        "edgeagent_workload_last_heartbeat_seconds": "gauge",
        "edgeagent_trust_root_version": "gauge",
        "edgeagent_metadata_expires_seconds": "gauge",
    }
    for name, kind in expected.items():
        assert fams[name].type == kind, name
        assert fams[name].help, name
    assert fams["edgeagent_up"].samples == [({"device_id": "dev-0001", "version": "0.1.0"}, 1.0)]
    current = [labels for labels, value in fams["edgeagent_workload_state"].samples if value == 1]
    assert current == [
        {"name": "ticker", "version": "2", "state": "running"},
        {"name": "kvstore", "version": "1", "state": "starting"},
    ]
    assert fams["edgeagent_workload_restarts_total"].samples == [
        ({"name": "ticker"}, 1.0),
        ({"name": "kvstore"}, 0.0),
    ]
    assert fams["edgeagent_workload_last_heartbeat_seconds"].samples == [
        ({"name": "ticker"}, T0 - 3)
    ]
    samples = fams["edgeagent_metadata_expires_seconds"].samples
    expires = {labels["role"]: v for labels, v in samples}
    assert expires["timestamp"] == fake.now + fake.expires_in_s


async def test_metrics_escape_hostile_label_values(
    base_url: str, http: httpx.AsyncClient, fake: FakeControl
) -> None:
    from dataclasses import replace

    evil = 'x"} 1\nedgeagent_up 0\n\\'
    fake.workloads["ticker"] = replace(fake.workloads["ticker"], version=evil)
    with trio.fail_after(DEADLINE_S):
        resp = await http.get(f"{base_url}/metrics")
    fams = parse_prometheus(resp.text)
    assert len(fams["edgeagent_up"].samples) == 1
    versions = {labels["version"] for labels, _ in fams["edgeagent_workload_state"].samples}
    assert evil in versions
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


async def test_unknown_path_404_and_post_405(base_url: str, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE_S):
        assert (await http.get(f"{base_url}/")).status_code == 404
        assert (await http.get(f"{base_url}/metrics/extra")).status_code == 404
        resp = await http.post(f"{base_url}/healthz")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, HEAD"


async def test_head_has_no_body_and_keep_alive_serves_several(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with trio.fail_after(DEADLINE_S):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: " in first
    assert rest.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert b"Connection: close" in rest


async def test_malformed_request_gets_400_and_close(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with trio.fail_after(DEADLINE_S):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"\x00\xff garbage\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request")


async def test_request_with_a_body_is_refused(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with trio.fail_after(DEADLINE_S):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /status HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400") or data.startswith(b"HTTP/1.1 413")


# ---- fleet heartbeat ------------------------------------------------------------------------


class FleetServer:
    """A tiny real HTTP heartbeat receiver: 500, 500, drops a connection, then 204s."""

    def __init__(self) -> None:
        self.calls = 0
        self.received: list[dict[str, object]] = []
        self.got_two = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += await stream.receive_some(65536)
            self.calls += 1
            if self.calls == 3:
                return  # the fleet server crashed mid-request: no response at all
            status = b"500 Internal Server Error" if self.calls <= 2 else b"204 No Content"
            if self.calls > 3:
                self.received.append(json.loads(body))
                if len(self.received) == 2:
                    self.got_two.set()
            await stream.send_all(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )


async def test_fleet_heartbeat_posts_snapshot_and_survives_failures(
    nursery: trio.Nursery, fake: FakeControl
) -> None:
    fleet = FleetServer()
    listeners = await nursery.start(partial(trio.serve_tcp, fleet.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient() as client:
        nursery.start_soon(
            partial(post_fleet_heartbeat, client=client),
            f"http://127.0.0.1:{port}/heartbeat",
            0.001,
            fake,
        )
        with trio.fail_after(DEADLINE_S):
            await fleet.got_two.wait()
        nursery.cancel_scope.cancel()
    assert fleet.received[0]["agent"]["device_id"] == "dev-0001"  # type: ignore[index]
    assert fleet.calls >= 5

"""The fleet heartbeat wired into the agent: ``[fleet] url`` -> POSTs of the status JSON.

A real agent (its registry is unreachable, which the heartbeat reports) and a real HTTP
server on 127.0.0.1 that records what it receives.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import trio

from edgeagent.agent.core import Agent
from edgeagent.commands.agent import services
from edgeagent.config import parse_config
from edgeagent.publisher.repo import Repository


class FleetServer:
    """A minimal HTTP/1.1 server that answers 204 to each POST and keeps the bodies."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, object]]] = []
        self.changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {
                    k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
                }
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += await stream.receive_some(65536)
                body, buf = buf[:length], buf[length:]
                self.posts.append((lines[0], json.loads(body)))
                self.changed.set()
                self.changed = trio.Event()
                await stream.send_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


async def test_agent_posts_heartbeats_to_the_fleet_url(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    server = FleetServer()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    repo = Repository.init(tmp_path / "repo")
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[device]
id = "fleet-dev-7"
[registry]
url = "http://127.0.0.1:9/"
trust_root = "{repo.root_path}"
poll_interval_s = 0.2
poll_jitter_s = 0
[registry.fetch]
retries = 0
[paths]
store = "{tmp_path / "store"}"
state = "{tmp_path / "state"}"
[http]
listen = ""
[fleet]
url = "http://127.0.0.1:{port}/fleet/heartbeat"
interval_s = 0.2
"""
    )
    cfg = parse_config(config.read_bytes(), str(config), str(tmp_path))
    agent = Agent(cfg, services=services(cfg))
    agent.prepare()
    try:
        await nursery.start(agent.run)
        with trio.fail_after(20):
            while len(server.posts) < 3:
                await server.changed.wait()
        request_line, body = server.posts[-1]
        assert request_line == "POST /fleet/heartbeat HTTP/1.1"
        agent_info = body["agent"]
        assert isinstance(agent_info, dict)
        assert agent_info["device_id"] == "fleet-dev-7"
        # The heartbeat carries the agent's own verdict: the registry is unreachable here.
        assert body["healthy"] is False
        assert any("registry" in str(r) for r in body["reasons"])  # type: ignore[attr-defined]
    finally:
        agent.request_stop()
        with trio.fail_after(15):
            await agent.wait_stopped()
        agent.close()

"""``edgeagent agent --config agent.toml [--once]``: the device agent, the one service on a device.

What it does: reads and validates the config (exit 2 naming the key when it is malformed),
prepares the agent (state lock: a second agent on the same state folder exits 1 with a clear
message; store; trust root), then runs it under ``trio.run`` with the diagnostics services the
config asks for (serial consoles, the console socket, HTTP health) until SIGTERM or SIGINT,
which stop every guest cleanly (SIGTERM, grace, SIGKILL) and exit 0. With ``--once`` it polls
once, lets every update settle (commit or roll back), stops the guests and exits: 0 when the
poll succeeded, 1 when the registry could not be reached or verified.

Ready lines on stdout (scripts and tests wait for them), one each, flushed:
``agent: console socket on HOST:PORT``, ``agent: http on HOST:PORT``, ``agent: fleet heartbeat
to URL every N s``, ``agent: hotplug: watching kernel|udev device events``, then
``agent: running (device ID, state DIR)``, and ``agent: stopped`` at the end.

What it does not do: any agent logic (`edgeagent.agent.core`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial
from pathlib import Path

import trio

from edgeagent.agent.core import Agent, ServiceStarter
from edgeagent.config import AgentConfig, parse_config
from edgeagent.console.service import serve_console_socket, serve_serial_console
from edgeagent.control import ConsolePolicy, SerialConsoleSettings
from edgeagent.errors import ConfigError
from edgeagent.health.http import post_fleet_heartbeat, serve_health_http

log = logging.getLogger(__name__)


def _say(line: str) -> None:
    print(f"agent: {line}", flush=True)


def console_settings(cfg: AgentConfig, path: str) -> SerialConsoleSettings:
    """The console service settings for one port (or the socket) from the config."""
    s = cfg.serial
    return SerialConsoleSettings(
        path=path,
        baud=s.baudrate,
        status_interval_s=s.status_interval_s,
        policy=ConsolePolicy(
            restart=s.command_mode("restart"),
            update=s.command_mode("update"),
            rollback=s.command_mode("rollback"),
        ),
    )


def services(cfg: AgentConfig) -> tuple[ServiceStarter, ...]:
    """Starters for the diagnostics services the config enables."""
    out: list[ServiceStarter] = []
    for port in cfg.serial.ports:

        async def start_serial(agent: Agent, nursery: trio.Nursery, port: str = port) -> None:
            await nursery.start(serve_serial_console, port, agent, console_settings(cfg, port))
            _say(f"serial console on {port}")

        out.append(start_serial)
    sock = cfg.console_socket
    if sock is not None:

        async def start_socket(agent: Agent, nursery: trio.Nursery) -> None:
            assert sock is not None
            settings = console_settings(cfg, f"socket://{sock.host}:{sock.port}")
            host, port = await nursery.start(
                serve_console_socket, sock.host, sock.port, agent, settings
            )
            _say(f"console socket on {host}:{port}")

        out.append(start_socket)
    http = cfg.http
    if http is not None:

        async def start_http(agent: Agent, nursery: trio.Nursery) -> None:
            assert http is not None
            host, port = await nursery.start(serve_health_http, http.host, http.port, agent)
            agent.http_address = f"{host}:{port}"
            _say(f"http on {host}:{port}")

        out.append(start_http)
    fleet = cfg.fleet
    if fleet is not None:

        async def start_fleet(agent: Agent, nursery: trio.Nursery) -> None:
            assert fleet is not None
            await nursery.start(post_fleet_heartbeat, fleet.url, fleet.interval_s, agent)
            _say(f"fleet heartbeat to {fleet.url} every {fleet.interval_s:g} s")

        out.append(start_fleet)
    if cfg.hotplug.enabled:

        async def start_hotplug(agent: Agent, nursery: trio.Nursery) -> None:
            # Imported here: pyudev is only needed where hot-plug is enabled.
            from edgeagent.agent.hotplug import HotplugService

            service = HotplugService(agent, cfg, partial(console_settings, cfg))
            await nursery.start(service.run)
            _say(f"hotplug: watching {service.source} device events")

        out.append(start_hotplug)
    return tuple(out)


async def run_agent(agent: Agent) -> None:
    """Run a prepared agent until SIGTERM/SIGINT (or ``--once`` completion)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def watch_signals() -> None:
            async for signum in signals:
                log.info("received %s: stopping all guests", signal.Signals(signum).name)
                agent.request_stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            await nursery.start(agent.run)
            _say(f"running (device {agent.cfg.device.id}, state {agent.cfg.paths.state})")
            await agent.wait_stopped()
            nursery.cancel_scope.cancel(reason="agent stopped")


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``.

    Raises:
        ConfigError: unreadable or malformed (names the file and the key).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent config: {exc}") from exc
    return parse_config(data, str(path), str(path.resolve().parent))


def _handle(args: argparse.Namespace) -> int:
    cfg = load_config(Path(args.config))
    agent = Agent(cfg, once=args.once, services=services(cfg))
    agent.prepare()
    try:
        trio.run(run_agent, agent)
    finally:
        agent.close()
    _say("stopped")
    if args.once and not agent.last_poll_ok:
        print(f"edgeagent: error: poll failed: {agent.poll_error}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``edgeagent agent``."""
    p = sub.add_parser(
        "agent",
        help="run the device agent (pull, verify, boot, supervise, update over the air)",
        description=(
            "Run the device agent described by an agent.toml (docs/agent.example.toml): poll the "
            "signed registry, pull and verify the workloads meant for this device, boot them "
            "under edge-tender or QEMU, supervise them (heartbeats, restart back-off, crash "
            "loops) and update them over the air with automatic rollback. SIGTERM or SIGINT "
            "stops every guest cleanly and exits 0. Exit 2: malformed config (the message names "
            "the key); exit 1: another agent holds the state folder, or another failure."
        ),
    )
    p.add_argument("--config", required=True, metavar="AGENT.toml", help="the agent config file")
    p.add_argument(
        "--once",
        action="store_true",
        help="poll once, let updates settle (commit or roll back), stop the guests and exit",
    )
    p.set_defaults(func=_handle)

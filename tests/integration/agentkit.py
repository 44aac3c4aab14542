"""Helpers for the agent tests: built images, a publisher repository, an agent config.

Not a conftest: only the agent tests pay for building images. Everything lives in tmp dirs;
repository keys are generated per test run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeagent.agent.core import Agent
from edgeagent.build import build_image
from edgeagent.config import parse_config
from edgeagent.control import AgentSnapshot, WorkloadInfo
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "image-recipes"
TICK_MS = 100

_images: dict[str, Path] = {}


def image(name: str, tmp_root: Path) -> Path:
    """Build ``image-recipes/<name>`` for hvt once per session."""
    if name not in _images:
        out = tmp_root / f"{name}.hvt"
        build_image(RECIPES / name, "hvt", out)
        _images[name] = out
    return _images[name]


def variant(src: Path, dst: Path, tag: bytes) -> Path:
    """A copy of ``src`` with trailing bytes: same guest, different sha256."""
    dst.write_bytes(src.read_bytes() + b"\0" * 8 + tag)
    return dst


@dataclass
class Lab:
    """A repository, its served URL, and folders for one agent."""

    tmp: Path
    repo: Repository
    url: str
    images: Path

    def publish(
        self,
        name: str,
        file: Path,
        version: str,
        args: list[str],
        block: list[str] | None = None,
        *,
        kind: str = "hvt",
        mem_mb: int = 4,
    ) -> None:
        custom = target_custom(version=version, kind=kind, mem_mb=mem_mb, args=args, block=block)
        self.repo.add_target(file, name, custom)

    def ticker(self, version: str, *extra: str, name: str = "ticker") -> None:
        args = [f"interval_ms={TICK_MS}", *extra]
        self.publish(name, image("ticker", self.images), version, args)

    def config_text(self, **health: float) -> str:
        h = {
            "heartbeat_deadline_s": 2.0,
            "health_window_s": 0.6,
            "restart_backoff_initial_s": 0.2,
            "restart_backoff_max_s": 1.0,
            "crash_loop_restarts": 4,
            "crash_loop_window_s": 30.0,
        }
        h.update(health)
        lines = "\n".join(f"{k} = {v}" for k, v in h.items())
        return f"""
[device]
id = "dev-1"
groups = ["lab"]
[registry]
url = "{self.url}"
trust_root = "{self.repo.root_path}"
poll_interval_s = 0.2
poll_jitter_s = 0
poll_backoff_max_s = 0.5
[registry.fetch]
retries = 0
connect_timeout_s = 2
[paths]
store = "{self.tmp / "store"}"
state = "{self.tmp / "state"}"
[runner]
tender = "{REPO_ROOT / "host-os" / "tender" / "edge-tender"}"
stop_grace_s = 1
[health]
{lines}
[http]
listen = ""
"""

    def write_config(self, **health: float) -> Path:
        path = self.tmp / "agent.toml"
        path.write_text(self.config_text(**health))
        return path

    def agent(self, **health: float) -> Agent:
        path = self.write_config(**health)
        return Agent(parse_config(path.read_bytes(), str(path), str(path.parent)))


def new_repo(tmp: Path) -> Repository:
    return Repository.init(tmp / "repo")


async def wait_for(
    agent: Agent, cond: Callable[[AgentSnapshot], bool], what: str, limit: float = 20.0
) -> AgentSnapshot:
    """Poll the agent's snapshot until ``cond`` holds (fails with the snapshot and consoles)."""
    snap = agent.snapshot()
    with trio.move_on_after(limit):
        while not cond(snap):
            await trio.sleep(0.05)
            snap = agent.snapshot()
        return snap
    tails = {n: agent.console_tail(n, 15) for n in agent.consoles}
    raise AssertionError(f"timed out waiting for {what}: {snap.workloads!r}\nconsoles: {tails}")


def workload(snap: AgentSnapshot, name: str) -> WorkloadInfo:
    w = snap.workload(name)
    assert w is not None, f"no workload {name} in {snap.workloads}"
    return w


def is_state(name: str, version: str, state: str) -> Callable[[AgentSnapshot], bool]:
    def cond(snap: AgentSnapshot) -> bool:
        w = snap.workload(name)
        return w is not None and w.version == version and w.state == state

    return cond


def agent_cmd(config: Path, *extra: str) -> list[str]:
    """argv running ``edgeagent agent`` with this interpreter."""
    return [sys.executable, "-m", "edgeagent", "-v", "agent", "--config", str(config), *extra]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}

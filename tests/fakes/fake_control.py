"""An honest in-memory test double for the agent behind `edgeagent.control.AgentControl`.

It keeps a small mutable picture of an agent (workloads, trust, net) and turns it into real
`AgentSnapshot` values, records every action it is asked to perform, and follows the
protocol's contract: unknown names raise `UnknownWorkloadError`, a rollback without a previous
version raises `ControlError`. It does not supervise anything; tests drive its state directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import trio

from edgeagent.control import (
    AgentInfo,
    AgentSnapshot,
    InterfaceInfo,
    NetInfo,
    RoleTrust,
    TrustInfo,
    WorkloadInfo,
)
from edgeagent.errors import ControlError, UnknownWorkloadError

T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15) so renderings are deterministic


@dataclass
class FakeControl:
    """A fake agent: tests edit ``workloads``/``agent_reasons``/``now`` and read ``actions``."""

    now: float = T0
    device_id: str = "dev-0001"
    state: str = "running"
    agent_reasons: list[str] = field(default_factory=list)
    workloads: dict[str, WorkloadInfo] = field(default_factory=dict)
    consoles: dict[str, list[str]] = field(default_factory=dict)
    actions: list[tuple[str, str | None]] = field(default_factory=list)
    refuse_update: bool = False
    action_delay_s: float = 0.0
    expires_in_s: float = 30 * 86400.0

    @classmethod
    def with_demo_workloads(cls) -> FakeControl:
        """Return a fake with ``ticker`` (v2, healthy) and ``kvstore`` (v1, unhealthy)."""
        fake = cls()
        fake.workloads["ticker"] = WorkloadInfo(
            name="ticker",
            version="2",
            kind="hvt",
            state="running",
            restarts=1,
            last_heartbeat=T0 - 3,
            last_exit_status=None,
            started_at=T0 - 600,
            previous_version="1",
        )
        fake.workloads["kvstore"] = WorkloadInfo(
            name="kvstore",
            version="1",
            kind="hvt",
            state="starting",
            restarts=0,
            last_heartbeat=None,
            started_at=T0 - 20,
            health_reasons=("no heartbeat within 10 s",),
        )
        fake.consoles["ticker"] = [f"tick {i}" for i in range(50)]
        fake.consoles["kvstore"] = ["kvstore: listening", "evil \x1b]0;pwned\x07 title\x1b[2J"]
        return fake

    def snapshot(self) -> AgentSnapshot:
        roles = tuple(
            RoleTrust(
                role=r,
                version=v,
                threshold=1,
                keyids=(f"{r[:2]}" + "ab" * 31,),
                expires=self.now + self.expires_in_s,
            )
            for r, v in (("root", 1), ("targets", 4), ("snapshot", 7), ("timestamp", 9))
        )
        return AgentSnapshot(
            taken_at=self.now,
            agent=AgentInfo(
                device_id=self.device_id,
                version="0.1.0",
                started_at=T0 - 3600,
                state=self.state,
                groups=("lab",),
                health_reasons=tuple(self.agent_reasons),
            ),
            trust=TrustInfo(root_version=1, roles=roles, last_refresh=self.now - 5),
            net=NetInfo(
                registry_url="http://127.0.0.1:8080/",
                http_listen="127.0.0.1:9100",
                last_poll=self.now - 1,
                last_poll_ok=True,
                interfaces=(InterfaceInfo("lo", True, ("127.0.0.1/8",)),),
            ),
            workloads=tuple(self.workloads.values()),
        )

    def _get(self, name: str) -> WorkloadInfo:
        try:
            return self.workloads[name]
        except KeyError:
            raise UnknownWorkloadError(f"no workload called {name!r}") from None

    def console_tail(self, name: str, n: int) -> list[str]:
        self._get(name)
        return self.consoles.get(name, [])[-n:]

    async def restart(self, name: str) -> str:
        w = self._get(name)
        await trio.sleep(self.action_delay_s)
        self.workloads[name] = replace(w, restarts=w.restarts + 1)
        self.actions.append(("restart", name))
        return f"restarted {name} v{w.version}"

    async def update_now(self) -> str:
        if self.refuse_update:
            raise ControlError("an update is already running")
        self.actions.append(("update", None))
        return "registry poll scheduled"

    async def rollback(self, name: str) -> str:
        w = self._get(name)
        if w.previous_version is None:
            raise ControlError(f"{name} has no previous version to roll back to")
        self.workloads[name] = replace(
            w,
            version=w.previous_version,
            previous_version=None,
            bad_versions=(*w.bad_versions, w.version),
        )
        self.actions.append(("rollback", name))
        return f"rolled {name} back from v{w.version} to v{w.previous_version}"

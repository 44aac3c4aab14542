"""The xen runner without Xen: xl missing or failing for real, and the agent keeps running.

No fake xl: "missing" is an empty PATH, and "failing" is Debian's real xl 4.17 unpacked by the
Xen test bed build (host-os/xen-testbed/out/bin/xl), which on a machine without Xen fails with
"cannot init xl context". The happy path (create, heartbeats, stop, OTA, rollback) runs on real
Xen in tests/integration/test_xen_testbed.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from edgeagent.agent.core import Agent
from edgeagent.config import parse_config
from edgeagent.errors import VmError
from edgeagent.publisher.policy import target_custom
from edgeagent.registry.server import serve_registry
from edgeagent.vmm.xen import MAX_CONSOLE_BACKLOG, XenSpec
from edgeagent.vmm.xen_runner import GuestLogTail, XenTools, cleanup_domains, run_domain
from tests.integration.agentkit import new_repo, wait_for
from tests.unit.test_vmm_imageformat import abi1, elf, pvh_note

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTBED_XL = REPO_ROOT / "host-os" / "xen-testbed" / "out" / "bin" / "xl"
KEY = ("ticker", "1", "ab" * 32)

needs_testbed_xl = pytest.mark.skipif(
    not TESTBED_XL.exists(),
    reason=f"{TESTBED_XL} is built by `make xen-testbed` (Debian's real xl, unpacked)",
)


@pytest.fixture
def pvh_image(tmp_path: Path) -> Path:
    path = tmp_path / "ticker.xen"
    path.write_bytes(elf(notes=[pvh_note()]))
    return path


def spec(image: Path) -> XenSpec:
    return XenSpec(name="edge-ticker-00000001", kernel=str(image), mem_mb=16)


async def test_xl_missing_is_a_clear_error_before_anything_runs(
    tmp_path: Path, pvh_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    tools = XenTools(state_dir=tmp_path / "xen")
    with trio.fail_after(10), pytest.raises(VmError, match=r"xl \('xl'\) not found on PATH"):
        await run_domain(spec(pvh_image), key=KEY, console_sink=lambda _b: None, tools=tools)
    assert not (tmp_path / "xen" / "edge-ticker-00000001.cfg").exists()


async def test_xl_path_that_is_not_executable_is_named(tmp_path: Path, pvh_image: Path) -> None:
    tools = XenTools(state_dir=tmp_path / "xen", xl=str(tmp_path / "no-such-xl"))
    with trio.fail_after(10), pytest.raises(VmError, match="no-such-xl: not an executable"):
        await run_domain(spec(pvh_image), key=KEY, console_sink=lambda _b: None, tools=tools)


async def test_missing_image_is_named(tmp_path: Path) -> None:
    tools = XenTools(state_dir=tmp_path / "xen")
    with trio.fail_after(10), pytest.raises(VmError, match="no such file"):
        await run_domain(
            spec(tmp_path / "gone.xen"), key=KEY, console_sink=lambda _b: None, tools=tools
        )


@needs_testbed_xl
async def test_failing_xl_error_names_command_status_and_stderr(
    tmp_path: Path, pvh_image: Path
) -> None:
    tools = XenTools(state_dir=tmp_path / "xen", xl=str(TESTBED_XL))
    with trio.fail_after(30), pytest.raises(VmError) as info:
        await run_domain(spec(pvh_image), key=KEY, console_sink=lambda _b: None, tools=tools)
    message = str(info.value)
    assert "`xl list -v` failed with exit status 1" in message
    assert "cannot init xl context" in message
    with trio.fail_after(30), pytest.raises(VmError, match="cannot init xl context"):
        await cleanup_domains(tools, keep=[KEY])


def agent_config(tmp: Path, url: str, root: Path, xl: str) -> bytes:
    return f"""
[device]
id = "dev-1"
[registry]
url = "{url}"
trust_root = "{root}"
poll_interval_s = 0.2
poll_jitter_s = 0
[registry.fetch]
retries = 0
connect_timeout_s = 2
[paths]
store = "{tmp / "store"}"
state = "{tmp / "state"}"
[runner]
hypervisor = "xen"
stop_grace_s = 1
[xen]
xl = "{xl}"
console_dir = "{tmp / "xenlogs"}"
[health]
heartbeat_deadline_s = 2.0
restart_backoff_initial_s = 0.2
restart_backoff_max_s = 0.5
[http]
listen = ""
""".encode()


async def run_agent_without_working_xl(
    tmp_path: Path, pvh_image: Path, nursery: trio.Nursery, xl: str, expect: str
) -> None:
    repo = new_repo(tmp_path)
    repo.add_target(
        pvh_image, "ticker", target_custom(version="1", kind="xen", mem_mb=16, args=["x=1"])
    )
    host, port = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
    cfg = parse_config(
        agent_config(tmp_path, f"http://{host}:{port}/", repo.root_path, xl), "agent.toml", "/"
    )
    agent = Agent(cfg)
    agent.prepare()
    try:
        await nursery.start(agent.run)

        def failed_start(snap: object) -> bool:
            w = agent.snapshot().workload("ticker")
            return w is not None and w.restarts >= 2 and any(expect in r for r in w.health_reasons)

        snap = await wait_for(agent, failed_start, "ticker failing to start", limit=30)
        w = snap.workload("ticker")
        assert w is not None
        assert w.kind == "xen"
        assert w.state in ("backoff", "crashloop", "failed", "starting")
        # The agent itself keeps running: it still polls the registry and reports.
        polls = agent.polls
        await wait_for(agent, lambda _s: agent.polls > polls + 1, "further polls", limit=10)
        assert agent.snapshot().agent.state in ("running", "degraded")
        assert any(expect in line for line in agent.console_tail("ticker", 50))
    finally:
        agent.request_stop()
        with trio.fail_after(20):
            await agent.wait_stopped()
        agent.close()


async def test_agent_keeps_running_when_xl_is_missing(
    tmp_path: Path, pvh_image: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    await run_agent_without_working_xl(tmp_path, pvh_image, nursery, "xl", "not found on PATH")


@needs_testbed_xl
async def test_agent_keeps_running_when_xl_fails(
    tmp_path: Path, pvh_image: Path, nursery: trio.Nursery
) -> None:
    await run_agent_without_working_xl(
        tmp_path, pvh_image, nursery, str(TESTBED_XL), "cannot init xl context"
    )


# The guest log tail (a real file, written the way xenconsoled appends to it) ------------------


async def test_console_tail_waits_for_a_late_log_then_follows_it(tmp_path: Path) -> None:
    log_path = tmp_path / "guest-edge-x.log"
    seen: list[bytes] = []
    tail = GuestLogTail(log_path, seen.append, trio.current_time())
    tail.start_at_end()  # No file yet: start at 0 once it appears.
    assert await tail.read_once() == 0
    log_path.write_bytes(b"READY\nHEARTBEAT seq=1 uptime_ms=5\n")
    assert await tail.read_once() > 0
    with log_path.open("ab") as f:
        f.write(b"HEARTBEAT seq=2 uptime_ms=10\n")
    await tail.read_once()
    assert b"".join(seen) == b"READY\nHEARTBEAT seq=1 uptime_ms=5\nHEARTBEAT seq=2 uptime_ms=10\n"
    assert tail.first_output_s is not None


async def test_console_tail_skips_what_an_earlier_domain_of_that_name_wrote(tmp_path: Path) -> None:
    log_path = tmp_path / "guest-edge-x.log"
    log_path.write_bytes(b"EXIT status=0 reason=poweroff\n")  # The previous run's end.
    seen: list[bytes] = []
    tail = GuestLogTail(log_path, seen.append, trio.current_time())
    tail.start_at_end()
    with log_path.open("ab") as f:
        f.write(b"READY\n")
    await tail.read_once()
    assert b"".join(seen) == b"READY\n"


async def test_console_tail_rereads_a_truncated_or_replaced_log(tmp_path: Path) -> None:
    log_path = tmp_path / "guest-edge-x.log"
    log_path.write_bytes(b"a" * 100 + b"\n")
    seen: list[bytes] = []
    tail = GuestLogTail(log_path, seen.append, trio.current_time())
    await tail.read_once()
    log_path.write_bytes(b"after truncate\n")  # Same inode, smaller.
    await tail.read_once()
    assert seen[-1] == b"after truncate\n"
    replacement = tmp_path / "new.log"
    replacement.write_bytes(b"x" * 200 + b"\nrotated\n")
    replacement.replace(log_path)  # Another inode (logrotate).
    await tail.read_once()
    assert seen[-1].endswith(b"rotated\n")
    assert len(seen[-1]) == 209


async def test_flooding_guest_log_is_read_bounded(tmp_path: Path) -> None:
    log_path = tmp_path / "guest-edge-x.log"
    seen: list[bytes] = []
    tail = GuestLogTail(log_path, seen.append, trio.current_time())
    flood = b"y" * (4 * MAX_CONSOLE_BACKLOG) + b"\nHEARTBEAT seq=9 uptime_ms=90\n"
    log_path.write_bytes(flood)
    await tail.read_once()
    assert sum(map(len, seen)) == MAX_CONSOLE_BACKLOG
    assert tail.skipped == len(flood) - MAX_CONSOLE_BACKLOG
    assert b"".join(seen).endswith(b"HEARTBEAT seq=9 uptime_ms=90\n")


# `edgeagent boot --runner xen` ---------------------------------------------------------------


def boot(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", "boot", "--runner", "xen", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_boot_runner_xen_without_xl_exits_1_naming_xl(pvh_image: Path) -> None:
    out = boot(str(pvh_image), path="")
    assert out.returncode == 1, out.stderr
    assert "edgeagent: error: xl ('xl') not found on PATH" in out.stderr


def test_boot_runner_xen_refuses_an_hvt_image_before_xl(tmp_path: Path) -> None:
    image = tmp_path / "hello.hvt"
    image.write_bytes(elf(notes=[abi1()]))
    out = boot(str(image), path="")
    assert out.returncode == 1, out.stderr
    assert "--runner xen boots PVH kernels" in out.stderr
    assert "xl" not in out.stderr.replace("--runner xen", "")


@needs_testbed_xl
def test_boot_runner_xen_with_failing_xl_exits_1_with_its_stderr(pvh_image: Path) -> None:
    out = boot("--xl", str(TESTBED_XL), str(pvh_image))
    assert out.returncode == 1, out.stderr
    assert "`xl list -v` failed with exit status 1" in out.stderr
    assert "cannot init xl context" in out.stderr

"""The device agent end to end: a real registry on 127.0.0.1, real edge-tender guests under KVM.

Guests are tiny (ticker at 100 ms, kvstore one-shots, 4 MiB); health windows and deadlines are
short, so the whole file runs in well under a minute. Each test asserts on the agent's
`AgentControl.snapshot()` (what the serial console and HTTP show) and on files it persists.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from edgeagent.agent.core import Agent
from edgeagent.errors import EdgeAgentError
from edgeagent.registry.server import serve_registry
from tests.integration.agentkit import (
    Lab,
    agent_cmd,
    alive,
    env,
    image,
    is_state,
    new_repo,
    variant,
    wait_for,
    workload,
)

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent-images")


@pytest.fixture
async def lab(tmp_path: Path, images_dir: Path, nursery: trio.Nursery) -> Lab:
    repo = new_repo(tmp_path)
    host, port = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
    return Lab(tmp=tmp_path, repo=repo, url=f"http://{host}:{port}/", images=images_dir)


async def start(lab: Lab, nursery: trio.Nursery, **health: float) -> Agent:
    agent = lab.agent(**health)
    agent.prepare()
    await nursery.start(agent.run)
    return agent


async def stop(agent: Agent) -> None:
    agent.request_stop()
    with trio.fail_after(15):
        await agent.wait_stopped()
    agent.close()


def console_count(agent: Agent, name: str, text: str) -> int:
    return sum(text in line for line in agent.console_tail(name, 500))


async def test_pulls_boots_updates_commits_and_rolls_back_a_crashing_version(
    lab: Lab, nursery: trio.Nursery
) -> None:
    kv = image("kvstore", lab.images)
    lab.ticker("1")
    lab.publish("kvstore", kv, "1", ["put", "colour", "blue"], block=["storage"])
    agent = await start(lab, nursery)
    try:
        await wait_for(agent, is_state("ticker", "1", "running"), "ticker v1 running")
        snap = await wait_for(agent, is_state("kvstore", "1", "stopped"), "kvstore v1 done")
        kvs = workload(snap, "kvstore")
        assert kvs.last_exit_status == 0
        assert not kvs.health_reasons
        assert any(line == "OK" for line in agent.console_tail("kvstore", 10))

        # v2: pulled, started next to v1 (no block devices), committed after the window.
        lab.ticker("2")
        snap = await wait_for(agent, is_state("ticker", "2", "running"), "ticker v2 committed")
        tw = workload(snap, "ticker")
        assert tw.previous_version == "1"
        assert not tw.health_reasons

        # kvstore v2 reads the volume that followed the workload across versions.
        lab.publish("kvstore", kv, "2", ["get", "colour"], block=["storage"])
        await wait_for(agent, is_state("kvstore", "2", "stopped"), "kvstore v2 done")
        assert "VALUE key=colour value=blue" in agent.console_tail("kvstore", 20)

        # v3 exits with status 2 at boot (unknown argument): rolled back, marked bad.
        lab.ticker("3", "bogus=1")
        snap = await wait_for(
            agent,
            lambda s: (
                "3" in workload(s, "ticker").bad_versions
                and workload(s, "ticker").state == "running"
            ),
            "ticker v3 rolled back",
        )
        tw = workload(snap, "ticker")
        assert tw.version == "2"
        assert tw.state == "running"
        assert "rolled back" in " ".join(agent.console_tail("ticker", 50))
        # Several more polls: v3 is never tried again while it is the published version.
        polls = agent.polls
        with trio.fail_after(10):
            while agent.polls < polls + 5:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert console_count(agent, "ticker", "starting ticker v3") == 1
        assert workload(agent.snapshot(), "ticker").version == "2"

        state = json.loads((lab.tmp / "state" / "state.json").read_text())
        assert state["workloads"]["ticker"]["phase"] == "rolled-back"
        assert state["workloads"]["ticker"]["current"]["version"] == "2"
    finally:
        await stop(agent)


async def test_registry_down_keeps_workloads_running(
    tmp_path: Path, images_dir: Path, nursery: trio.Nursery
) -> None:
    repo = new_repo(tmp_path)
    server_scope = trio.CancelScope()

    async def server(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        with server_scope:
            await serve_registry(repo.path, "127.0.0.1", 0, task_status=task_status)

    host, port = await nursery.start(server)
    lab = Lab(tmp=tmp_path, repo=repo, url=f"http://{host}:{port}/", images=images_dir)
    lab.ticker("1")
    agent = await start(lab, nursery)
    try:
        await wait_for(agent, is_state("ticker", "1", "running"), "ticker running")
        server_scope.cancel()
        snap = await wait_for(
            agent, lambda s: bool(s.agent.health_reasons), "registry failure reported"
        )
        assert "registry" in snap.agent.health_reasons[0]
        before = workload(snap, "ticker").last_heartbeat
        await trio.sleep(1.0)
        snap = agent.snapshot()
        tw = workload(snap, "ticker")
        assert tw.state == "running"
        assert tw.last_heartbeat is not None
        assert before is not None
        assert tw.last_heartbeat > before
        assert snap.net.last_poll_ok is False
    finally:
        await stop(agent)


async def test_tampered_target_is_not_booted_and_is_reported(
    lab: Lab, nursery: trio.Nursery
) -> None:
    lab.ticker("1")
    agent = await start(lab, nursery)
    try:
        await wait_for(agent, is_state("ticker", "1", "running"), "ticker v1 running")
        v2 = variant(image("ticker", lab.images), lab.tmp / "ticker-v2.hvt", b"v2")
        info = lab.repo.add_target(v2, "ticker", _ticker_custom("2"))
        sha = info.hashes["sha256"]
        served = lab.repo.targets_dir / f"{sha}.ticker"
        data = bytearray(served.read_bytes())
        data[200] ^= 0xFF  # The attacker flips a byte of the served image.
        served.write_bytes(bytes(data))
        snap = await wait_for(
            agent,
            lambda s: any("verification" in r for r in workload(s, "ticker").health_reasons),
            "verification failure reported",
        )
        tw = workload(snap, "ticker")
        assert tw.version == "1"
        assert tw.state == "running"
        assert console_count(agent, "ticker", "starting ticker v2") == 0
    finally:
        await stop(agent)


def _ticker_custom(version: str) -> dict[str, object]:
    from edgeagent.publisher.policy import target_custom

    return target_custom(version=version, mem_mb=4, args=["interval_ms=100"])


async def test_guest_that_never_heartbeats_is_restarted_with_backoff(
    lab: Lab, nursery: trio.Nursery
) -> None:
    # READY, then the first heartbeat would come after a day.
    lab.repo.add_target(
        image("ticker", lab.images),
        "silent",
        {
            "edgeagent": {
                "version": "1",
                "kind": "hvt",
                "mem_mb": 4,
                "args": ["interval_ms=86400000"],
                "devices": {"block": [], "net": []},
                "groups": [],
                "device_ids": [],
            }
        },
    )
    agent = await start(lab, nursery, heartbeat_deadline_s=0.5)
    try:
        snap = await wait_for(
            agent,
            lambda s: s.workload("silent") is not None and workload(s, "silent").restarts >= 2,
            "two restarts",
        )
        sw = workload(snap, "silent")
        assert sw.health_reasons
        assert any("heartbeat" in r for r in sw.health_reasons)
        assert snap.agent.state == "degraded"
        assert console_count(agent, "silent", "unhealthy: no first heartbeat") >= 2
    finally:
        await stop(agent)


async def test_second_agent_on_the_same_state_folder_refuses(
    lab: Lab, nursery: trio.Nursery
) -> None:
    agent = await start(lab, nursery)
    try:
        config = lab.tmp / "agent.toml"
        # In-process: the lock is per open file, so a second Agent object refuses too.
        with pytest.raises(EdgeAgentError, match="another edgeagent agent is running"):
            lab.agent().prepare()
        result = await trio.run_process(
            agent_cmd(config), capture_stdout=True, capture_stderr=True, check=False, env=env()
        )
        assert result.returncode == 1
        assert b"another edgeagent agent is running on this state folder" in result.stderr
    finally:
        await stop(agent)


async def test_malformed_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[registry]\nurl = "http://127.0.0.1:1/"\ntrust_root = "r.json"\npoll_interval_s = "x"\n'
    )
    result = await trio.run_process(
        agent_cmd(config), capture_stdout=True, capture_stderr=True, check=False, env=env()
    )
    assert result.returncode == 2
    assert b"key 'registry.poll_interval_s': expected a positive number, got 'x'" in result.stderr


async def test_sigkill_mid_update_converges_and_keeps_volume_data(
    lab: Lab, nursery: trio.Nursery
) -> None:
    kv = image("kvstore", lab.images)
    lab.ticker("1")
    lab.publish("kvstore", kv, "1", ["put", "fruit", "fig"], block=["storage"])
    config = lab.write_config(health_window_s=60)
    state_file = lab.tmp / "state" / "state.json"

    proc = await trio.lowlevel.open_process(
        agent_cmd(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
    )
    try:
        with trio.fail_after(20):
            while True:
                await trio.sleep(0.05)
                if state_file.exists():
                    ws = json.loads(state_file.read_text())["workloads"]
                    t, k = ws.get("ticker", {}), ws.get("kvstore", {})
                    kv_log = lab.tmp / "state" / "console" / "kvstore.log"
                    kv_done = kv_log.exists() and "OK" in kv_log.read_text().splitlines()
                    if (
                        (t.get("current") or {}).get("version") == "1"
                        and t.get("pids")
                        and ((k.get("current") or {}).get("version") == "1" and kv_done)
                    ):
                        break
        # v2 enters its (long) health window; kill the agent there.
        lab.ticker("2")
        with trio.fail_after(20):
            while True:
                await trio.sleep(0.05)
                ws = json.loads(state_file.read_text())["workloads"]["ticker"]
                if ws["phase"] == "health-window" and len(ws["pids"]) == 2:
                    break
        orphans = [pid for pid, _ in ws["pids"]]
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # A new agent (short window this time) replays the phase: converges on v2.
    lab.write_config()
    agent = lab.agent()
    agent.prepare()
    await nursery.start(agent.run)
    try:
        for pid in orphans:
            assert not alive(pid), f"guest {pid} of the killed agent still runs"
        await wait_for(agent, is_state("ticker", "2", "running"), "ticker v2 after restart")
        assert workload(agent.snapshot(), "ticker").previous_version == "1"
        lab.publish("kvstore", kv, "2", ["get", "fruit"], block=["storage"])
        await wait_for(agent, is_state("kvstore", "2", "stopped"), "kvstore v2 done")
        assert "VALUE key=fruit value=fig" in agent.console_tail("kvstore", 20)
    finally:
        await stop(agent)


async def _read_until(stream: trio.abc.ReceiveStream, buf: bytearray, needle: bytes) -> bytes:
    """Read ``stream`` into ``buf`` until a line containing ``needle``; return that line."""
    while True:
        for line in bytes(buf).split(b"\n")[:-1]:
            if needle in line:
                return line
        chunk = await stream.receive_some(4096)
        assert chunk, f"EOF before {needle!r}; got {bytes(buf)!r}"
        buf += chunk


async def test_sigterm_stops_every_guest_and_exits_0_console_socket_serves_status(
    lab: Lab,
) -> None:
    lab.ticker("1")
    config = lab.write_config()
    text = config.read_text().replace('[http]\nlisten = ""', '[http]\nlisten = "127.0.0.1:0"')
    config.write_text(text + '[console_socket]\nlisten = "127.0.0.1:0"\n')
    proc = await trio.lowlevel.open_process(
        agent_cmd(config), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env()
    )
    assert proc.stdout is not None
    try:
        out = bytearray()
        with trio.fail_after(20):
            line = await _read_until(proc.stdout, out, b"agent: console socket on ")
            host, _, port = line.decode().rsplit(" ", 1)[1].rpartition(":")
            line = await _read_until(proc.stdout, out, b"agent: http on ")
            http_addr = line.decode().rsplit(" ", 1)[1]
            await _read_until(proc.stdout, out, b"agent: running")
            state_file = lab.tmp / "state" / "state.json"
            while True:
                await trio.sleep(0.05)
                ws = json.loads(state_file.read_text())["workloads"].get("ticker", {})
                if ws.get("pids"):
                    break
            guest = ws["pids"][0][0]
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"json on\nstatus\n")
                reply = bytearray()
                status_line = await _read_until(stream, reply, b'"cmd":"status"')
            status = json.loads(status_line[status_line.index(b"{") :])
            assert status["ok"] is True
            names = [w["name"] for w in status["data"]["workloads"]]
            assert names == ["ticker"]
            async with httpx.AsyncClient() as client:
                resp = await client.get(f"http://{http_addr}/status")
            assert resp.status_code == 200
            assert resp.json()["workloads"][0]["name"] == "ticker"
            assert resp.json()["net"]["http_listen"] == http_addr
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
        assert proc.returncode == 0
        assert not alive(guest)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_once_polls_settles_and_exits(lab: Lab) -> None:
    lab.ticker("1")
    config = lab.write_config()
    result = await trio.run_process(
        agent_cmd(config, "--once"),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env(),
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"agent: stopped" in result.stdout
    state = json.loads((lab.tmp / "state" / "state.json").read_text())
    assert state["workloads"]["ticker"]["current"]["version"] == "1"
    assert state["workloads"]["ticker"]["pids"] == []


async def test_console_flood_is_bounded_and_shared_blobs_pull_once(
    lab: Lab, nursery: trio.Nursery
) -> None:
    # Two workloads with the same bytes (one blob in the store, pulled concurrently) and a
    # guest that writes 1 MiB to its console.
    twins = ["ticker", "ticker-b", "ticker-c", "ticker-d"]
    for name in twins:
        lab.ticker("1", name=name)
    lab.publish("flood", image("hostile-flood", lab.images), "1", [])
    agent = await start(lab, nursery)
    try:
        for name in twins:
            await wait_for(agent, is_state(name, "1", "running"), f"{name} running")
        snap = await wait_for(agent, is_state("flood", "1", "stopped"), "flood done")
        assert workload(snap, "flood").last_exit_status == 0
        tail = agent.console_tail("flood", 500)
        assert len(tail) <= 500
        assert any("FLOOD DONE" in line for line in tail)
        for f in (lab.tmp / "state" / "console").glob("flood.log*"):
            assert f.stat().st_size <= 64 * 1024
        assert workload(agent.snapshot(), "ticker").state == "running"
    finally:
        await stop(agent)


async def test_serial_console_on_a_pty_answers_status(lab: Lab, nursery: trio.Nursery) -> None:
    import os

    from edgeagent.commands.agent import services
    from edgeagent.config import parse_config

    lab.ticker("1")
    master, slave = os.openpty()
    try:
        config = lab.write_config()
        config.write_text(
            config.read_text()
            + f'[serial]\nports = ["{os.ttyname(slave)}"]\nstatus_interval_s = 60\n'
        )
        cfg = parse_config(config.read_bytes(), str(config), str(config.parent))
        agent = Agent(cfg, services=services(cfg))
        agent.prepare()
        await nursery.start(agent.run)
        try:
            await wait_for(agent, is_state("ticker", "1", "running"), "ticker running")
            os.write(master, b"json on\r\nstatus\r\n")
            out = bytearray()
            with trio.fail_after(10):
                while b'"cmd":"status"' not in out:
                    await trio.lowlevel.wait_readable(master)
                    out += os.read(master, 65536)
            line = next(x for x in bytes(out).splitlines() if b'"cmd":"status"' in x)
            status = json.loads(line[line.index(b"{") :])
            assert [w["name"] for w in status["data"]["workloads"]] == ["ticker"]
        finally:
            await stop(agent)
    finally:
        os.close(master)
        os.close(slave)


async def test_operator_restart_and_rollback_through_agent_control(
    lab: Lab, nursery: trio.Nursery
) -> None:
    from edgeagent.errors import ControlError, UnknownWorkloadError

    lab.ticker("1")
    agent = await start(lab, nursery)
    try:
        await wait_for(agent, is_state("ticker", "1", "running"), "ticker v1")
        with pytest.raises(ControlError, match="no previous version"):
            await agent.rollback("ticker")
        with pytest.raises(UnknownWorkloadError):
            await agent.restart("nope")
        with pytest.raises(UnknownWorkloadError):
            agent.console_tail("nope", 5)
        first = workload(agent.snapshot(), "ticker").started_at
        assert "restarting ticker" in await agent.restart("ticker")
        snap = await wait_for(
            agent,
            lambda s: (
                workload(s, "ticker").started_at != first
                and workload(s, "ticker").state == "running"
            ),
            "ticker restarted",
        )
        assert workload(snap, "ticker").restarts == 0  # An operator restart is not a failure.

        lab.ticker("2")
        await wait_for(agent, is_state("ticker", "2", "running"), "ticker v2")
        with trio.fail_after(10):
            await agent.wait_updates_settled()  # Else: "an update is in progress".
        message = await agent.rollback("ticker")
        assert "from v2 to v1" in message
        snap = await wait_for(agent, is_state("ticker", "1", "running"), "back on v1")
        assert "2" in workload(snap, "ticker").bad_versions
        # v2 is still the published version, but it is bad here: the device stays on v1.
        polls = agent.polls
        with trio.fail_after(10):
            while agent.polls < polls + 3:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert workload(agent.snapshot(), "ticker").version == "1"
        assert "polling" in await agent.update_now()
    finally:
        await stop(agent)


async def test_qemu_kind_workload_runs_under_qemu(lab: Lab, nursery: trio.Nursery) -> None:
    from edgeagent.build import build_image
    from tests.integration.agentkit import RECIPES

    kernel = lab.images / "ticker.qemu"
    if not kernel.exists():
        build_image(RECIPES / "ticker", "qemu", kernel)
    lab.publish("qticker", kernel, "1", ["interval_ms=200"], kind="qemu", mem_mb=32)
    agent = await start(lab, nursery, heartbeat_deadline_s=15)
    try:
        snap = await wait_for(agent, is_state("qticker", "1", "running"), "qemu ticker", limit=40)
        assert workload(snap, "qticker").kind == "qemu"
    finally:
        await stop(agent)


async def test_workload_from_a_delegated_role_runs(lab: Lab, nursery: trio.Nursery) -> None:
    from edgeagent.publisher.policy import target_custom

    lab.repo.add_delegation("fleet", ["fleet-*"], terminating=True)
    custom = target_custom(version="1", mem_mb=4, args=["interval_ms=100"], groups=["lab"])
    lab.repo.add_delegated_target("fleet", image("ticker", lab.images), "fleet-ticker", custom)
    # Meant for another group: not run here.
    other = target_custom(version="1", mem_mb=4, args=["interval_ms=100"], groups=["eu"])
    lab.repo.add_delegated_target("fleet", image("ticker", lab.images), "fleet-eu", other)
    agent = await start(lab, nursery)
    try:
        snap = await wait_for(agent, is_state("fleet-ticker", "1", "running"), "fleet-ticker")
        assert snap.workload("fleet-eu") is None
    finally:
        await stop(agent)


async def test_guest_crashing_at_boot_backs_off_into_a_reported_crash_loop(
    lab: Lab, nursery: trio.Nursery
) -> None:
    lab.publish("crasher", image("hostile-triplefault", lab.images), "1", [])
    lab.ticker("1")
    agent = await start(lab, nursery, restart_backoff_initial_s=0.1, restart_backoff_max_s=0.4)
    try:
        snap = await wait_for(
            agent,
            lambda s: (
                s.workload("crasher") is not None and workload(s, "crasher").state == "crashloop"
            ),
            "crash loop reported",
        )
        cw = workload(snap, "crasher")
        assert cw.restarts >= 4
        assert cw.last_exit_status == 243  # The tender's triple-fault status.
        assert any("crash loop" in r for r in cw.health_reasons)
        assert workload(snap, "ticker").state == "running"  # Others are unaffected.
        assert snap.agent.state == "degraded"
    finally:
        await stop(agent)

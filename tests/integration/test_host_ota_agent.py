"""The agent's host OTA hook end to end, without QEMU: a real agent polls a real registry on
127.0.0.1, finds a newer host-slot target, writes it into slot b (a file), stages it and asks
for a reboot; a second agent started "on slot b" (kernel command line edge.root=root-b) runs
the trial, finds itself healthy and commits. The boot loader's part is done by hand in between.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import trio

from edgeagent.agent.core import Agent
from edgeagent.config import parse_config
from edgeagent.ota import bootctl, slots
from edgeagent.ota.service import HostOta
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository
from edgeagent.registry.server import serve_registry

MIB = 1024 * 1024


def config(tmp: Path, url: str, repo: Repository) -> bytes:
    return f"""
[device]
id = "edgeos-0001"
[registry]
url = "{url}"
trust_root = "{repo.root_path}"
poll_interval_s = 0.2
poll_jitter_s = 0
[paths]
store = "{tmp / "store"}"
state = "{tmp / "state"}"
[http]
listen = ""
[host_ota]
enabled = true
health_window_s = 20
boot_prefix = "edgeos"
slot_a = "{tmp / "root-a.img"}"
slot_b = "{tmp / "root-b.img"}"
esp_dir = "{tmp / "esp"}"
checkpoint_mb = 1
""".encode()


def agent_on(tmp: Path, cfg: bytes, slot: str, reboots: list[str]) -> Agent:
    agent = Agent(parse_config(cfg, "agent.toml", str(tmp)))
    assert agent.host_ota is not None  # [host_ota] enabled = true.

    def reboot() -> None:
        reboots.append(slot)
        trio.from_thread.run_sync(agent.request_stop)

    agent.host_ota = HostOta(
        agent.cfg.host_ota,
        agent.state_dir,
        version="1.0",
        cmdline=f"quiet edge.root=root-{slot}",
        reboot=reboot,
    )
    return agent


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(30):
        while not cond():  # noqa: ASYNC110 - the condition is in files.
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_agent_updates_host_from_v1_to_v2(tmp_path: Path, nursery: trio.Nursery) -> None:
    repo = Repository.init(tmp_path / "repo")
    v2 = hashlib.sha256(b"v2").digest() * (3 * MIB // 32)
    (tmp_path / "slot-v2").write_bytes(v2)
    repo.add_target(
        tmp_path / "slot-v2", "host-slot", target_custom(version="2.0", kind="host-slot")
    )
    host, port = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
    for slot in ("a", "b"):
        (tmp_path / f"root-{slot}.img").write_bytes(b"\0" * 4 * MIB)
    linux = tmp_path / "esp" / "EFI" / "Linux"
    linux.mkdir(parents=True)
    (tmp_path / "esp" / "loader").mkdir()
    (tmp_path / "esp" / "loader" / "loader.conf").write_text("timeout 0\ndefault edgeos-a*\n")
    for name in ("edgeos-a+2-1.efi", "edgeos-b.efi"):  # A freshly flashed disk, first boot.
        (linux / name).write_bytes(b"MZ")
    cfg = config(tmp_path, f"http://{host}:{port}/", repo)
    state_file = tmp_path / "state" / "host-ota.json"
    reboots: list[str] = []

    agent = agent_on(tmp_path, cfg, "a", reboots)
    agent.prepare()
    try:
        with trio.fail_after(60):
            await agent.run()  # Returns when the staged reboot stops it.
    finally:
        agent.close()
    staged = slots.load_state(state_file.read_bytes())
    assert (staged.phase, staged.good, reboots) == ("staged", "a", ["a"])
    assert (tmp_path / "root-b.img").read_bytes()[: len(v2)] == v2
    assert sorted(p.name for p in linux.iterdir()) == ["edgeos-a.efi", "edgeos-b+1-0.efi"]

    # systemd-boot: the default names the try-once entry; it spends the try and boots b.
    (linux / "edgeos-b+1-0.efi").rename(linux / "edgeos-b+0-1.efi")
    trial = agent_on(tmp_path, cfg, "b", reboots)
    trial.prepare()
    try:
        async with trio.open_nursery() as n:
            await n.start(trial.run)
            await wait_until(
                lambda: slots.load_state(state_file.read_bytes()).phase == "committed", "commit"
            )
            snap = trial.host_ota.snapshot() if trial.host_ota else {}
            trial.request_stop()
    finally:
        trial.close()
    done = slots.load_state(state_file.read_bytes())
    assert (done.good, done.good_version, done.other_version) == ("b", "2.0", "1.0")
    assert sorted(p.name for p in linux.iterdir()) == ["edgeos-a.efi", "edgeos-b.efi"]
    conf = (tmp_path / "esp" / "loader" / "loader.conf").read_text()
    assert bootctl.current_default(conf) == "edgeos-b.efi"
    assert snap["booted"] == "b"
    assert reboots == ["a"]


async def test_first_boot_of_a_flashed_disk_is_blessed_by_the_agent_even_after_an_esp_error(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # A freshly flashed disk: systemd-boot counted slot A's first boot (+3-0 -> +2-1). The
    # agent blesses it once healthy. At first the ESP is unusable (two entries for slot a, as
    # after an interrupted rename by hand): the agent must keep trying, not give up.
    repo = Repository.init(tmp_path / "repo")
    host, port = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
    for slot in ("a", "b"):
        (tmp_path / f"root-{slot}.img").write_bytes(b"\0" * MIB)
    linux = tmp_path / "esp" / "EFI" / "Linux"
    linux.mkdir(parents=True)
    (tmp_path / "esp" / "loader").mkdir()
    conf = tmp_path / "esp" / "loader" / "loader.conf"
    conf.write_text("timeout 0\ndefault edgeos-a+3-0.efi\n")
    for name in ("edgeos-a+2-1.efi", "edgeos-a.efi.bak", "edgeos-a+0-3.efi", "edgeos-b.efi"):
        (linux / name).write_bytes(b"MZ")
    reboots: list[str] = []
    agent = agent_on(tmp_path, config(tmp_path, f"http://{host}:{port}/", repo), "a", reboots)
    agent.prepare()
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                inner.start_soon(agent.run)
                ota = agent.host_ota
                assert ota is not None
                await wait_until(lambda: ota.error is not None, "the ESP error to be reported")
                info = agent.snapshot().host
                assert info is not None
                assert (info.slot, info.blessed) == ("a", False)
                assert "two boot entries for slot a" in (info.error or "")
                (linux / "edgeos-a+0-3.efi").unlink()  # The operator cleans up the ESP.
                await wait_until(lambda: ota.blessed, "the boot to be blessed")
                agent.request_stop()
    finally:
        agent.close()
    assert sorted(p.name for p in linux.iterdir()) == [
        "edgeos-a.efi",
        "edgeos-a.efi.bak",
        "edgeos-b.efi",
    ]
    assert bootctl.current_default(conf.read_text()) == "edgeos-a.efi"
    info = agent.snapshot().host
    assert info is not None
    assert info.blessed
    assert info.error is None
    assert reboots == []

"""Hot-plug with real kernel events: loop devices carrying an offline registry, a pty console.

- The netlink monitor path is proven with a REAL kernel uevent: attaching a loop device
  (``losetup``) makes the kernel send ``change`` events for it.
- Offline media are real ext4 filesystems (``mkfs.ext4 -d`` from a copy of a repository's
  ``metadata/`` and ``targets/``) on loop devices; the agent mounts them read-only itself.
  Loop devices are not "removable" for the kernel, so each test lists its own loop device in
  ``hotplug.media_devices`` (a documented option for virtual machines and tests). Other
  programs may use loop devices at the same time, so a test never configures ``loop*``: it
  first attaches an EMPTY backing file (no medium), starts the agent with that one device
  name, then writes the filesystem into the backing file and tells the kernel the new size
  (``losetup -c``), which is the real "medium inserted" ``change`` event.
- A USB-serial adapter cannot be created here; its events are injected (with ``ID_BUS=usb``)
  and the console is served on a REAL pty standing in for ``/dev/ttyUSB0``.

Everything needs root (netlink kernel events, losetup, mount): skipped, with the reason, if not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import pyudev
import trio

from edgeagent.agent.core import Agent
from edgeagent.agent.hotplug import HotplugService, MediaResult, watch_devices
from edgeagent.agent.hotplug_rules import REGISTRY_DIR, DeviceEvent, HotplugRules, classify
from edgeagent.commands.agent import console_settings
from edgeagent.config import AgentConfig, parse_config
from edgeagent.publisher.policy import target_custom
from edgeagent.registry.server import serve_registry
from tests.fakes.fake_control import FakeControl
from tests.integration.agentkit import Lab, is_state, new_repo, wait_for

NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None,
    reason="hot-plug tests need root, losetup and mkfs.ext4 (netlink, loop devices, mount)",
)
pytestmark = NEEDS_ROOT


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hotplug-images")


def make_fs(img: Path, stage: Path) -> None:
    """Write an ext4 filesystem holding ``stage``'s files into ``img`` (16 MiB)."""
    with img.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(stage), str(img)], check=True)


def make_medium(img: Path, repo_dir: Path) -> None:
    """Write into ``img`` an ext4 filesystem holding ``edgeagent-registry/`` (no keys)."""
    stage = img.with_suffix(".stage")
    reg = stage / REGISTRY_DIR
    reg.mkdir(parents=True)
    shutil.copytree(repo_dir / "metadata", reg / "metadata")
    shutil.copytree(repo_dir / "targets", reg / "targets")
    make_fs(img, stage)


class LoopDevice:
    """``losetup`` attach/detach; detached at the end of the test whatever happens."""

    def __init__(self) -> None:
        self.devices: list[str] = []

    async def attach(self, img: Path) -> str:
        proc = await trio.run_process(
            ["losetup", "--find", "--show", str(img)], capture_stdout=True, capture_stderr=True
        )
        dev = proc.stdout.decode().strip()
        self.devices.append(dev)
        return dev

    async def reserve(self, img: Path) -> str:
        """Attach an empty backing file: a drive with no medium in it."""
        await trio.Path(img).write_bytes(b"")
        return await self.attach(img)

    async def insert(self, dev: str) -> None:
        """The backing file was filled: tell the kernel (a real ``change`` uevent)."""
        await trio.run_process(["losetup", "--set-capacity", dev])

    async def detach(self, dev: str) -> None:
        await trio.run_process(["losetup", "-d", dev], check=False)
        self.devices.remove(dev)


@pytest.fixture
async def loops() -> AsyncIterator[LoopDevice]:
    lo = LoopDevice()
    try:
        yield lo
    finally:
        with trio.CancelScope(shield=True):
            for dev in list(lo.devices):
                await trio.run_process(["umount", dev], check=False, capture_stderr=True)
                await lo.detach(dev)


def hotplug_config(lab: Lab, url: str, dev: str) -> AgentConfig:
    text = lab.config_text().replace(f'url = "{lab.url}"', f'url = "{url}"')
    name = Path(dev).name
    text += f'\n[hotplug]\nenabled = true\nserial = false\nmedia_devices = ["{name}"]\n'
    path = lab.tmp / "agent.toml"
    path.write_text(text)
    return parse_config(path.read_bytes(), str(path), str(path.parent))


async def start_agent(cfg: AgentConfig, nursery: trio.Nursery) -> tuple[Agent, HotplugService]:
    agent = Agent(cfg)
    agent.prepare()
    await nursery.start(agent.run)
    service = HotplugService(agent, cfg, partial(console_settings, cfg))
    await nursery.start(service.run)
    return agent, service


async def stop_agent(agent: Agent) -> None:
    agent.request_stop()
    with trio.fail_after(15):
        await agent.wait_stopped()
    agent.close()


async def result_for(service: HotplugService, dev: str) -> MediaResult:
    with trio.fail_after(30):
        while True:
            for r in service.results:
                if r.devname == dev:
                    return r
            await service.wait_results(len(service.results) + 1)


def mounted_below(root: Path) -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [m for m in mounts if str(root) in m]


def trusted_version(agent: Agent, role: str) -> int | None:
    return {r.role: r.version for r in agent.snapshot().trust.roles}.get(role)


def timestamp_version(repo_dir: Path) -> int:
    data = json.loads((repo_dir / "metadata" / "timestamp.json").read_text())
    return int(data["signed"]["version"])


async def test_kernel_uevent_of_an_attached_loop_device_reaches_the_monitor(
    tmp_path: Path, loops: LoopDevice
) -> None:
    img = tmp_path / "blank.img"
    with img.open("wb") as f:
        f.truncate(1024 * 1024)
    send, recv = trio.open_memory_channel[DeviceEvent](256)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(watch_devices, pyudev.Context(), "kernel", send, enumerate_existing=False)
        )
        dev = await loops.attach(img)
        seen: list[DeviceEvent] = []
        with trio.fail_after(10):
            async for ev in recv:
                seen.append(ev)
                if ev.devname == dev and ev.action == "change" and ev.size_sectors:
                    break
        nursery.cancel_scope.cancel()
    event = seen[-1]
    assert (event.subsystem, event.devtype) == ("block", "disk")
    assert event.size_sectors == 2048
    assert event.properties["ACTION"] == "change"
    # The same real event is an update medium only where loop devices are configured as media.
    assert classify(event, HotplugRules()).action == "ignore"
    assert classify(event, HotplugRules(media_devices=("loop*",))).action == "media-add"


@pytest.mark.kvm
async def test_air_gapped_device_updates_from_a_registry_on_inserted_media(
    tmp_path: Path, images_dir: Path, loops: LoopDevice, nursery: trio.Nursery
) -> None:
    repo = new_repo(tmp_path)
    lab = Lab(tmp=tmp_path, repo=repo, url="http://127.0.0.1:9/", images=images_dir)
    lab.ticker("1")
    medium = tmp_path / "usb.img"
    dev = await loops.reserve(medium)
    # The network registry is unreachable (port 9): only the medium can bring the update.
    cfg = hotplug_config(lab, "http://127.0.0.1:9/", dev)
    agent, service = await start_agent(cfg, nursery)
    try:
        make_medium(medium, repo.path)
        await loops.insert(dev)
        result = await result_for(service, dev)
        assert result.applied, result.message
        assert "ticker v1" in result.message
        await wait_for(agent, is_state("ticker", "1", "running"), "ticker v1 from the medium")
        # The medium was unmounted once its contents were verified and copied: it can go.
        assert mounted_below(service.mount_root) == []
        # The same trusted metadata now has the medium's versions (the same trust root).
        snap = agent.snapshot()
        roles = {r.role: r.version for r in snap.trust.roles}
        assert roles["timestamp"] == timestamp_version(repo.path)
    finally:
        await stop_agent(agent)


async def test_rejects_rollback_from_a_stale_usb_registry(
    tmp_path: Path, images_dir: Path, loops: LoopDevice, nursery: trio.Nursery
) -> None:
    # The workloads are for another device: nothing boots, only the metadata matters.
    repo = new_repo(tmp_path)
    blob = tmp_path / "app.bin"
    blob.write_bytes(b"app v1\n")
    repo.add_target(blob, "app", target_custom(version="1", device_ids=["other"]))
    stale = tmp_path / "stale-copy"
    shutil.copytree(repo.path / "metadata", stale / "metadata")
    shutil.copytree(repo.path / "targets", stale / "targets")
    blob.write_bytes(b"app v2\n")
    repo.add_target(blob, "app", target_custom(version="2", device_ids=["other"]))
    newest = timestamp_version(repo.path)
    assert timestamp_version(stale) < newest

    host, port = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
    lab = Lab(tmp=tmp_path, repo=repo, url=f"http://{host}:{port}/", images=images_dir)
    medium = tmp_path / "stale.img"
    dev = await loops.reserve(medium)
    cfg = hotplug_config(lab, lab.url, dev)
    agent, service = await start_agent(cfg, nursery)
    try:
        with trio.fail_after(20):
            while trusted_version(agent, "timestamp") != newest:  # noqa: ASYNC110
                await trio.sleep(0.05)
        trusted_ts = Path(cfg.paths.store) / "metadata" / "timestamp.json"
        before = trusted_ts.read_bytes()

        make_medium(medium, stale)
        await loops.insert(dev)
        result = await result_for(service, dev)
        assert not result.applied
        assert "refused" in result.message
        assert "version" in result.message.lower()
        # Nothing changed: the trusted metadata is the newer one, untouched.
        assert trusted_ts.read_bytes() == before
        assert mounted_below(service.mount_root) == []
    finally:
        await stop_agent(agent)


async def test_medium_without_a_registry_is_left_alone(
    tmp_path: Path, images_dir: Path, loops: LoopDevice, nursery: trio.Nursery
) -> None:
    repo = new_repo(tmp_path)
    lab = Lab(tmp=tmp_path, repo=repo, url="http://127.0.0.1:9/", images=images_dir)
    medium = tmp_path / "photos.img"
    dev = await loops.reserve(medium)
    cfg = hotplug_config(lab, lab.url, dev)
    stage = tmp_path / "holiday-photos"
    stage.mkdir()
    (stage / "photo.jpg").write_bytes(b"\xff\xd8 not a registry")
    agent, service = await start_agent(cfg, nursery)
    try:
        make_fs(medium, stage)
        await loops.insert(dev)
        result = await result_for(service, dev)
        assert not result.applied
        assert REGISTRY_DIR in result.message
        assert mounted_below(service.mount_root) == []
        assert agent.snapshot().workloads == ()
    finally:
        await stop_agent(agent)


async def test_usb_serial_adapter_gets_the_console_until_unplugged(tmp_path: Path) -> None:
    # A pty stands in for /dev/ttyUSB0; its add/remove events carry ID_BUS=usb as udev's do.
    master, slave = os.openpty()
    path = os.ttyname(slave)
    repo = new_repo(tmp_path)
    lab = Lab(tmp=tmp_path, repo=repo, url="http://127.0.0.1:9/", images=tmp_path)
    text = lab.config_text() + "\n[hotplug]\nenabled = true\nmedia = false\n"
    text = text.replace("[health]", "[serial]\nstatus_interval_s = 30\n[health]")
    cfg = parse_config(text.encode(), "agent.toml", str(tmp_path))
    control = FakeControl.with_demo_workloads()

    class Control(FakeControl):
        async def wait_running(self) -> None:
            return None

        async def apply_offline(self, fetcher: object, url: str) -> str:
            raise AssertionError("media are off")

    agent = Control(workloads=control.workloads, consoles=control.consoles)
    service = HotplugService(agent, cfg, partial(console_settings, cfg))
    add = DeviceEvent("add", "tty", "ttyUSB0", path, properties={"ID_BUS": "usb", "DEVNAME": path})
    stream = trio.lowlevel.FdStream(master)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.handle(add)
        assert path in service.consoles
        buf = b""
        with trio.fail_after(10):
            while b"ticker" not in buf:
                await stream.send_all(b"vms\r")
                with trio.move_on_after(0.5):
                    while b"ticker" not in buf:
                        buf += await stream.receive_some(4096)
        await service.handle(
            DeviceEvent("remove", "tty", "ttyUSB0", path, properties=add.properties)
        )
        assert path not in service.consoles
        # The console no longer answers on the unplugged adapter.
        await trio.sleep(0.2)
        with trio.move_on_after(0.1):
            while await stream.receive_some(4096):
                pass
        await stream.send_all(b"vms\r")
        late = b""
        with trio.move_on_after(1.0):
            late += await stream.receive_some(4096)
        assert b"ticker" not in late
        nursery.cancel_scope.cancel()
    await stream.aclose()
    os.close(slave)

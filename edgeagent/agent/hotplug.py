"""Hot-plug (trio shell): USB-serial consoles and offline update media (issue 4 §8).

What it does (docs/hotplug.md):

- Watches device events with pyudev: ``Monitor.from_netlink(ctx, source="udev")`` where udevd
  runs (``/run/udev/control`` exists; events carry udev's ``ID_*`` properties), else
  ``source="kernel"`` (raw kernel uevents; the facts udev would add are read from sysfs).
  The monitor is started first, then the devices already present are enumerated from sysfs as
  ``add`` events, so nothing plugged in during startup is missed.
- Turns each event into an `edgeagent.agent.hotplug_rules.DeviceEvent` and asks the pure
  `classify` what it means:
  - **serial-add**: serves the diagnostics console (`serve_serial_console`) on the new
    USB-serial adapter, with the ``[serial]`` settings; **serial-remove** cancels it.
  - **media-add**: mounts the medium read-only (``ro,nosuid,nodev,noexec``) under
    ``MOUNT_ROOT/<kernel name>`` (default ``STATE/media``); if it carries
    ``edgeagent-registry/metadata/timestamp.json``, hands ``edgeagent-registry/`` to
    `Agent.apply_offline` (same TUF client, trust root and rollback/expiry rules as the
    network; blobs copied into the store and verified), then unmounts it, whatever happened.
    A medium is applied once per insertion; **media-remove** forgets it.
- Keeps the last `MAX_RESULTS` media outcomes (`MediaResult`) for the log and for tests.

What it does not do: no decisions (`hotplug_rules`), no trust logic (`Agent.apply_offline`
and the updater), no writes to media, no automatic formatting. Mounting uses the ``mount`` and
``umount`` programs (util-linux; filesystem detection by libblkid) and needs root.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyudev
import trio

from edgeagent.agent.hotplug_rules import (
    MOUNT_OPTIONS,
    REGISTRY_DIR,
    REGISTRY_MARKER,
    DeviceEvent,
    HotplugRules,
    classify,
    mount_point,
    registry_url,
)
from edgeagent.agent.offline import LocalFetcher
from edgeagent.config import AgentConfig
from edgeagent.console.service import serve_serial_console
from edgeagent.control import AgentControl, SerialConsoleSettings
from edgeagent.errors import FetchError, StoreError, VerificationError
from edgeagent.flash.devices import monitor_source
from edgeagent.registry.fetch import Fetcher

log = logging.getLogger(__name__)

WATCHED_SUBSYSTEMS = ("tty", "block")
#: Media outcomes kept in memory.
MAX_RESULTS = 32
#: Bound on unmounting a medium (shielded clean-up).
UMOUNT_GRACE_S = 10.0


class HotplugAgent(AgentControl, Protocol):
    """What the hot-plug service needs from the agent (`edgeagent.agent.core.Agent`)."""

    async def wait_running(self) -> None:
        """Wait until the agent has recovered its state and runs."""
        ...

    async def apply_offline(self, fetcher: Fetcher, url: str) -> str:
        """Verify and apply an offline registry (see `Agent.apply_offline`)."""
        ...


def _attr(device: pyudev.Device, name: str) -> str | None:
    try:
        value = str(device.attributes.asstring(name))
    except (KeyError, OSError, UnicodeDecodeError):
        return None
    return value.strip()


def _is_file(path: Path) -> bool:
    return path.is_file()


def _remove_mount_point(mount: Path) -> None:
    with contextlib.suppress(OSError):
        mount.rmdir()


def device_event(device: pyudev.Device, action: str | None = None) -> DeviceEvent:
    """Build a `DeviceEvent` from a pyudev device (reads a few sysfs attributes).

    Args:
        device: from the monitor or an enumeration.
        action: overrides ``device.action`` (enumerated devices are ``add``).
    """
    props = {str(k): str(v) for k, v in device.properties.items()}
    devtype = device.device_type or ""
    disk = device
    if devtype == "partition":
        disk = device.find_parent("block", "disk") or device
    removable_raw = _attr(disk, "removable") if device.subsystem == "block" else None
    size_raw = _attr(device, "size") if device.subsystem == "block" else None
    try:
        usb = device.find_parent("usb") is not None
    except (OSError, pyudev.DeviceNotFoundError):
        usb = False
    return DeviceEvent(
        action=action or device.action or "add",
        subsystem=device.subsystem or "",
        sys_name=device.sys_name,
        devname=device.device_node or props.get("DEVNAME", ""),
        devtype=devtype,
        properties=props,
        removable=None if removable_raw is None else removable_raw == "1",
        usb=usb,
        size_sectors=int(size_raw) if size_raw and size_raw.isdigit() else None,
    )


def _read_event(device: pyudev.Device, action: str | None) -> DeviceEvent | None:
    try:
        return device_event(device, action)
    except (OSError, LookupError) as exc:
        log.info("hotplug: %s vanished while being read: %s", device.sys_name, exc)
        return None


async def watch_devices(
    context: pyudev.Context,
    source: str,
    send: trio.MemorySendChannel[DeviceEvent],
    *,
    enumerate_existing: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send every tty/block device event to ``send`` until cancelled.

    The netlink monitor is listening before ``task_status.started()``; the devices already
    present follow as ``add`` events (when ``enumerate_existing``), then live events.

    Raises:
        OSError: the netlink socket cannot be opened (no permission, no netlink).
    """
    monitor = pyudev.Monitor.from_netlink(context, source=source)
    if source == "udev":
        for subsystem in WATCHED_SUBSYSTEMS:
            monitor.filter_by(subsystem)
    monitor.start()
    fd = monitor.fileno()
    log.info("hotplug: watching %s device events (%s)", source, ", ".join(WATCHED_SUBSYSTEMS))
    async with send:
        task_status.started()
        if enumerate_existing:
            for subsystem in WATCHED_SUBSYSTEMS:
                for device in context.list_devices(subsystem=subsystem):
                    found = _read_event(device, "add")
                    if found is not None:
                        await send.send(found)
        while True:
            await trio.lowlevel.wait_readable(fd)
            while True:
                try:
                    device = monitor.poll(timeout=0)
                except OSError as exc:
                    # ENOBUFS after an event storm: some events were lost; keep watching.
                    log.warning("hotplug: reading device events failed (%s); continuing", exc)
                    break
                if device is None:
                    break
                if device.subsystem not in WATCHED_SUBSYSTEMS:
                    continue
                event = _read_event(device, None)
                if event is not None:
                    await send.send(event)


@dataclass(frozen=True, slots=True)
class MediaResult:
    """What happened to one inserted medium."""

    device: str  # kernel name
    devname: str
    applied: bool  # an offline registry was found and verified
    message: str


class HotplugService:
    """The hot-plug service of one agent (see the module docstring).

    Args:
        agent: the agent (offline updates, console control).
        cfg: the agent config (``[hotplug]`` and ``[serial]``).
        console_settings: console settings for a port path (the agent command's).
        context: a pyudev context (default: a new one).
        source: ``udev`` or ``kernel`` (default: `monitor_source`).
    """

    def __init__(
        self,
        agent: HotplugAgent,
        cfg: AgentConfig,
        console_settings: Callable[[str], SerialConsoleSettings],
        *,
        context: pyudev.Context | None = None,
        source: str | None = None,
    ) -> None:
        h = cfg.hotplug
        self.agent = agent
        self.console_settings = console_settings
        self.context = context or pyudev.Context()
        self.source = source or monitor_source()
        self.rules = HotplugRules(
            serial=h.serial,
            media=h.media,
            media_devices=h.media_devices,
            owned_ports=frozenset(cfg.serial.ports),
        )
        self.mount_root = Path(h.mount_root or Path(cfg.paths.state) / "media")
        self.consoles: dict[str, trio.CancelScope] = {}
        self.media: set[str] = set()
        self.results: list[MediaResult] = []
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch and handle device events until cancelled (started once the monitor listens)."""
        send, recv = trio.open_memory_channel[DeviceEvent](16)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await nursery.start(watch_devices, self.context, self.source, send)
            except OSError as exc:
                # The device works without hot-plug; say so loudly rather than stop the agent.
                log.error("hotplug disabled: cannot watch %s device events: %s", self.source, exc)
                task_status.started()
                return
            task_status.started()
            # Media are applied only once the agent has recovered its state and runs.
            await self.agent.wait_running()
            async with recv:
                async for event in recv:
                    await self.handle(event)

    async def handle(self, event: DeviceEvent) -> None:
        """Act on one device event (public for tests that inject events)."""
        decision = classify(event, self.rules)
        if decision.action == "ignore":
            log.debug("hotplug: %s %s ignored: %s", event.action, event.sys_name, decision.reason)
            return
        log.info("hotplug: %s", decision.reason)
        if decision.action == "serial-add":
            self._start_console(event.devname)
        elif decision.action == "serial-remove":
            self._stop_console(event.devname)
        elif decision.action == "media-add":
            if event.sys_name not in self.media:
                self.media.add(event.sys_name)
                await self._apply_media(event)
        else:
            self.media.discard(event.sys_name)

    # Serial consoles -------------------------------------------------------------------------

    def _start_console(self, devname: str) -> None:
        assert self._nursery is not None, "HotplugService.handle before run"
        if devname in self.consoles:
            return
        scope = trio.CancelScope()
        self.consoles[devname] = scope
        settings = self.console_settings(devname)

        async def serve() -> None:
            with scope:
                await serve_serial_console(devname, self.agent, settings)
            if self.consoles.get(devname) is scope:
                del self.consoles[devname]

        self._nursery.start_soon(serve)
        log.info("hotplug: diagnostics console on %s", devname)

    def _stop_console(self, devname: str) -> None:
        scope = self.consoles.pop(devname, None)
        if scope is not None:
            scope.cancel(reason=f"hotplug: {devname} removed")
            log.info("hotplug: diagnostics console on %s stopped", devname)

    # Media ---------------------------------------------------------------------------------

    def _record(self, result: MediaResult) -> None:
        self.results = [*self.results[-(MAX_RESULTS - 1) :], result]
        self._changed.set()
        self._changed = trio.Event()

    async def wait_results(self, count: int) -> list[MediaResult]:
        """Wait until at least ``count`` media outcomes were recorded; return them."""
        while len(self.results) < count:
            await self._changed.wait()
        return list(self.results)

    async def _apply_media(self, event: DeviceEvent) -> None:
        mount = Path(mount_point(str(self.mount_root), event.sys_name))
        await trio.to_thread.run_sync(lambda: mount.mkdir(parents=True, exist_ok=True))
        proc = await trio.run_process(
            ["mount", "-o", MOUNT_OPTIONS, event.devname, str(mount)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if proc.returncode != 0:
            _remove_mount_point(mount)
            why = proc.stderr.decode(errors="replace").strip() or f"status {proc.returncode}"
            log.info("hotplug: %s not mounted (no usable filesystem?): %s", event.devname, why)
            self._record(MediaResult(event.sys_name, event.devname, False, f"not mounted: {why}"))
            return
        try:
            applied, message = await self._apply_mounted(event, mount)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(UMOUNT_GRACE_S):
                done = await trio.run_process(
                    ["umount", str(mount)], capture_stderr=True, check=False
                )
                if done.returncode != 0:
                    log.warning(
                        "hotplug: cannot unmount %s: %s", mount, done.stderr.decode().strip()
                    )
                else:
                    _remove_mount_point(mount)
        # Recorded once the medium is unmounted: from then on it can be pulled out.
        self._record(MediaResult(event.sys_name, event.devname, applied, message))

    async def _apply_mounted(self, event: DeviceEvent, mount: Path) -> tuple[bool, str]:
        if not _is_file(mount / REGISTRY_MARKER):
            message = f"no {REGISTRY_DIR}/ on the medium; nothing to do"
            log.info("hotplug: %s: %s", event.devname, message)
            return False, message
        url = registry_url(str(mount))
        log.info("hotplug: %s carries an offline registry; verifying it", event.devname)
        try:
            message = await self.agent.apply_offline(LocalFetcher(mount / REGISTRY_DIR), url)
        except VerificationError as exc:
            message = f"offline registry refused (verification failed): {exc}"
            log.error("hotplug: %s: %s", event.devname, message)
            return False, message
        except (FetchError, StoreError) as exc:
            message = f"offline registry unusable: {exc}"
            log.warning("hotplug: %s: %s", event.devname, message)
            return False, message
        log.info("hotplug: %s: %s", event.devname, message)
        return True, message

"""Flash targets: facts about a device from sysfs and udev, candidate listing, hot-plug watch.

What it does:

- `target_facts`: builds `edgeagent.flash.plan.TargetFacts` for a path: block device facts from
  pyudev (sysfs attributes; udev properties such as ``ID_BUS``/``ID_SERIAL_SHORT`` when udevd
  runs, sysfs fallbacks when it does not), mounts and swaps of the disk, its partitions and its
  holders (``/proc/self/mountinfo``, ``/proc/swaps``); a regular (or absent) file is a file target.
- `list_candidates`: every whole disk that `plan.is_candidate` accepts (removable or USB, not
  mounted, not the system disk, non-zero size).
- `watch`: a pyudev netlink monitor (``source="kernel"``, which needs no udevd; ``"udev"`` when
  ``/run/udev/control`` exists) read through ``trio.lowlevel.wait_readable``; each uevent goes
  through `plan.WatchState`, and each newly inserted candidate is handed to a callback.

Loop devices are never candidates unless their backing file matches ``loop_backing`` (an fnmatch
glob): then they count as removable media (a station test without hardware, ADR-0009 §3).

What it does not do: decide (that is `edgeagent.flash.plan`) or write (`edgeagent.flash.writer`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pyudev
import trio

from edgeagent.errors import FlashError
from edgeagent.flash.plan import (
    TargetFacts,
    WatchState,
    is_candidate,
    parse_mountinfo,
    parse_swaps,
    usage_of,
)

log = logging.getLogger(__name__)

UDEV_CONTROL = Path("/run/udev/control")


def _attr(dev: pyudev.Device, name: str) -> str:
    try:
        value = dev.attributes.get(name)
    except (OSError, KeyError):
        return ""
    if value is None:
        return ""
    return bytes(value).decode("utf-8", "replace").strip()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _related(disk: pyudev.Device) -> tuple[set[str], set[str]]:
    """Device numbers and /dev paths of a disk, its partitions and (recursively) its holders."""
    nums: set[str] = set()
    paths: set[str] = set()
    todo = [Path(disk.sys_path)]
    seen: set[Path] = set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        dev = _read(str(node / "dev")).strip()
        if dev:
            nums.add(dev)
            paths.add(f"/dev/{node.name}")
        if node.is_dir():
            todo.extend(c for c in node.iterdir() if (c / "partition").exists())
        holders = node / "holders"
        if holders.is_dir():
            todo.extend(h.resolve() for h in holders.iterdir())
    return nums, paths


def _serial(dev: pyudev.Device) -> str:
    props = dev.properties
    for key in ("ID_SERIAL_SHORT", "ID_SERIAL"):
        if props.get(key):
            return str(props[key])
    # Without udevd: the USB device (or MMC/NVMe device) above the disk carries a serial.
    node: pyudev.Device | None = dev
    while node is not None:
        for name in ("serial", "device/serial"):
            value = _attr(node, name)
            if value:
                return value
        node = node.parent
    return ""


def _is_usb(dev: pyudev.Device) -> bool:
    if dev.properties.get("ID_BUS") == "usb":
        return True
    return "/usb" in dev.sys_path


def block_facts(dev: pyudev.Device, loop_backing: str | None = None) -> TargetFacts:
    """Facts about a block device (a disk or a partition) from pyudev and /proc."""
    is_partition = dev.device_type == "partition"
    disk = dev.find_parent("block", "disk") if is_partition else dev
    if disk is None:
        disk = dev
    size = int(_attr(dev, "size") or 0) * 512
    removable = _attr(disk, "removable") == "1"
    model = " ".join(x for x in (_attr(disk, "device/vendor"), _attr(disk, "device/model")) if x)
    serial = _serial(disk)
    backing = _attr(disk, "loop/backing_file")
    if backing:
        model = model or f"loop backed by {backing}"
        serial = serial or f"loop:{backing}"
        if loop_backing and fnmatch.fnmatchcase(backing, loop_backing):
            removable = True
    nums, paths = _related(dev)
    usage = usage_of(
        nums,
        paths,
        parse_mountinfo(_read("/proc/self/mountinfo")),
        parse_swaps(_read("/proc/swaps")),
    )
    return TargetFacts(
        path=dev.device_node or f"/dev/{dev.sys_name}",
        is_block=True,
        size=size,
        removable=removable,
        usb=_is_usb(disk),
        read_only=_attr(dev, "ro") == "1",
        is_partition=is_partition,
        usage=usage,
        model=model,
        serial=serial,
    )


def target_facts(path: str, loop_backing: str | None = None) -> TargetFacts:
    """Facts about the target at ``path`` (block device, regular file or a file to create).

    Raises:
        FlashError: ``path`` is neither a block device nor a regular file, or sysfs has no entry.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return TargetFacts(path=path, is_block=False, size=0)
    except OSError as exc:
        raise FlashError(f"{path}: cannot inspect target: {exc.strerror}") from exc
    if stat.S_ISREG(st.st_mode):
        return TargetFacts(path=path, is_block=False, size=st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise FlashError(f"{path}: not a block device or a regular file")
    try:
        dev = pyudev.Devices.from_device_file(pyudev.Context(), path)
    except (pyudev.DeviceNotFoundError, ValueError, OSError) as exc:
        raise FlashError(f"{path}: no sysfs entry for this block device: {exc}") from exc
    return replace(block_facts(dev, loop_backing), path=path)


def list_candidates(loop_backing: str | None = None) -> list[TargetFacts]:
    """Every whole disk that is a safe, unattended flash target right now."""
    ctx = pyudev.Context()
    found = []
    for dev in ctx.list_devices(subsystem="block", DEVTYPE="disk"):
        facts = block_facts(dev, loop_backing)
        if is_candidate(facts):
            found.append(facts)
    return sorted(found, key=lambda f: f.path)


def monitor_source() -> str:
    """``udev`` when udevd runs (its events carry ID_* properties), else ``kernel``."""
    return "udev" if UDEV_CONTROL.exists() else "kernel"


OnTarget = Callable[[TargetFacts], Awaitable[None]]


async def watch(
    on_target: OnTarget,
    *,
    loop_backing: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_target`` (in this task) for each newly inserted candidate disk, forever.

    Devices present at start are not flashed. ``task_status.started`` reports the monitor
    source once the netlink socket listens (so a caller can insert media safely after it).

    Raises:
        FlashError: the netlink monitor cannot be opened (needs root for ``kernel``).
    """
    ctx = pyudev.Context()
    source = monitor_source()
    try:
        monitor = pyudev.Monitor.from_netlink(ctx, source=source)
        monitor.filter_by("block")
        monitor.start()
    except (OSError, ValueError) as exc:
        raise FlashError(f"watch: cannot open the {source} uevent monitor: {exc}") from exc
    state = WatchState()
    state.seed(
        d.sys_name
        for d in ctx.list_devices(subsystem="block", DEVTYPE="disk")
        if int(_attr(d, "size") or 0) > 0
    )
    task_status.started(source)
    log.info("watching %s uevents for new block devices", source)
    while True:
        await trio.lowlevel.wait_readable(monitor.fileno())
        while (dev := monitor.poll(timeout=0)) is not None:
            if dev.subsystem != "block" or dev.device_type != "disk":
                continue
            action = dev.action or ""
            size = 0 if action == "remove" else int(_attr(dev, "size") or 0)
            facts = None if action == "remove" or size == 0 else block_facts(dev, loop_backing)
            candidate = facts is not None and is_candidate(facts)
            if state.on_event(action, dev.sys_name, size, candidate) and facts is not None:
                await on_target(facts)

"""Flash targets: facts about a device from sysfs and udev, candidate listing, hot-plug watch.

What it does:

- `target_facts`: builds `edgeagent.flash.plan.TargetFacts` for a path: block device facts from
  pyudev (sysfs attributes; udev properties such as ``ID_BUS``/``ID_SERIAL_SHORT`` when udevd
  runs, sysfs fallbacks when it does not), mounts and swaps of the disk, its partitions and its
  holders (``/proc/self/mountinfo``, ``/proc/swaps``); a regular (or absent) file is a file target.
- `list_candidates`: every whole disk that `plan.is_candidate` accepts (removable or USB, not
  mounted, not the system disk, non-zero size).
- `monitor_source`: which uevent source a monitor should use (the watch itself, which needs
  trio, is `edgeagent.flash.station`).

Loop devices are never candidates unless their backing file matches ``loop_backing`` (an fnmatch
glob): then they count as removable media (a station test without hardware, ADR-0009 §3).

What it does not do: decide (that is `edgeagent.flash.plan`) or write (`edgeagent.flash.writer`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.errors import FlashError
from edgeagent.flash.plan import (
    TargetFacts,
    is_candidate,
    parse_mountinfo,
    parse_swaps,
    usage_of,
)

if TYPE_CHECKING:
    import pyudev

# pyudev (libudev through ctypes) is imported by the functions that use it: a file target
# needs none of it.

log = logging.getLogger(__name__)

UDEV_CONTROL = Path("/run/udev/control")


def attr(dev: pyudev.Device, name: str) -> str:
    """A sysfs attribute of ``dev`` as stripped text ("" when absent or unreadable)."""
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
            value = attr(node, name)
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
    size = int(attr(dev, "size") or 0) * 512
    removable = attr(disk, "removable") == "1"
    model = " ".join(x for x in (attr(disk, "device/vendor"), attr(disk, "device/model")) if x)
    serial = _serial(disk)
    backing = attr(disk, "loop/backing_file")
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
        read_only=attr(dev, "ro") == "1",
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
    import pyudev

    try:
        dev = pyudev.Devices.from_device_file(pyudev.Context(), path)
    except (pyudev.DeviceNotFoundError, ValueError, OSError) as exc:
        raise FlashError(f"{path}: no sysfs entry for this block device: {exc}") from exc
    return replace(block_facts(dev, loop_backing), path=path)


def list_candidates(loop_backing: str | None = None) -> list[TargetFacts]:
    """Every whole disk that is a safe, unattended flash target right now."""
    import pyudev

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

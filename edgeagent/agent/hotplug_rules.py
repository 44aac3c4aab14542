"""Hot-plug decisions: a device event's properties -> what the agent does with it. [pure]

The shell (`edgeagent.agent.hotplug`) turns each kernel or udev event, and each device found
at startup, into a `DeviceEvent` (the uevent properties plus three facts it reads from sysfs:
the ``removable`` flag, whether a USB device is an ancestor, and the size), and asks
`classify` what it means (issue 4 §8, docs/hotplug.md):

Rules (first match wins):

1. Not a ``tty`` or ``block`` device, or no device node: **ignore**.
2. ``tty`` device that is a USB-serial adapter (``ID_BUS=usb`` from udev, or a USB ancestor in
   sysfs) and not already one of the configured serial ports:
   ``add`` -> **serial-add** (serve the diagnostics console on it), ``remove`` ->
   **serial-remove** (stop serving it); other actions: ignore. Virtual consoles, pty slaves
   and on-board UARTs are not USB and are ignored. ``serial = false`` ignores them all.
3. ``block`` device (``disk`` or ``partition``) that counts as removable media: the kernel's
   ``removable`` flag, a USB ancestor or ``ID_BUS=usb``, or a kernel name matching one of
   ``media_devices`` (fnmatch patterns, e.g. ``loop*`` for tests and virtual machines).
   ``add``/``change`` with a size > 0 -> **media-add** (mount read-only, look for an offline
   registry); ``remove``, or ``change`` to size 0 (media ejected, loop device detached) ->
   **media-remove**. ``media = false`` ignores them all. Optical drives (``sr*``) and RAM
   disks (``ram*``) are never media sources unless a pattern names them.
4. Anything else: **ignore**.

Also here: the offline registry convention (`REGISTRY_DIR` on the medium), the mount point of a
device under the mount root, and the mount options (read-only, no devices, no setuid, no exec).

What this module does not do: no sysfs reads, no mounting, no trust decisions (the offline
source is verified by the same TUF client and trust root as the network registry).
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: Folder on a medium that holds an offline registry: a copy of a repository's ``metadata/``
#: and ``targets/`` folders (never its ``keys/``).
REGISTRY_DIR = "edgeagent-registry"
#: The file whose presence marks a medium as carrying an offline registry.
REGISTRY_MARKER = f"{REGISTRY_DIR}/metadata/timestamp.json"
#: Media are mounted with these options: nothing on them can run or act as a device node.
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"

Action = Literal["serial-add", "serial-remove", "media-add", "media-remove", "ignore"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_NEVER_MEDIA = ("sr*", "ram*", "zram*", "md*", "dm-*")


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One device event (or a device found at startup, as ``add``).

    Attributes:
        action: the uevent action (``add``, ``remove``, ``change``, ``bind``, ...).
        subsystem: ``tty``, ``block``, ...
        sys_name: the kernel name (``ttyUSB0``, ``sdb1``, ``loop3``).
        devname: the device node (``/dev/ttyUSB0``), or "" when it has none.
        devtype: ``disk``, ``partition``, or "".
        properties: the uevent/udev properties (``ID_BUS``, ``DISK_MEDIA_CHANGE``, ...).
        removable: the sysfs ``removable`` flag of the disk (None: unknown / not a disk).
        usb: a USB device is an ancestor in sysfs.
        size_sectors: the sysfs ``size`` (512-byte sectors), None when unknown.
    """

    action: str
    subsystem: str
    sys_name: str
    devname: str = ""
    devtype: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)
    removable: bool | None = None
    usb: bool = False
    size_sectors: int | None = None


@dataclass(frozen=True, slots=True)
class HotplugRules:
    """What the config enables (``[hotplug]``) and what the agent already owns."""

    serial: bool = True
    media: bool = True
    media_devices: tuple[str, ...] = ()
    owned_ports: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one event, and why (logged by the shell)."""

    action: Action
    reason: str


def _is_usb(ev: DeviceEvent) -> bool:
    return ev.usb or ev.properties.get("ID_BUS") == "usb"


def _named(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def classify(ev: DeviceEvent, rules: HotplugRules) -> Decision:
    """Decide what one device event means for the agent (rules in the module docstring)."""
    if ev.subsystem not in ("tty", "block"):
        return Decision("ignore", f"subsystem {ev.subsystem!r} is not watched")
    if not ev.devname.startswith("/dev/") or not _NAME_RE.fullmatch(ev.sys_name):
        return Decision("ignore", f"{ev.sys_name!r}: no usable device node")
    if ev.subsystem == "tty":
        return _classify_tty(ev, rules)
    return _classify_block(ev, rules)


def _classify_tty(ev: DeviceEvent, rules: HotplugRules) -> Decision:
    if not rules.serial:
        return Decision("ignore", "hotplug.serial is off")
    if not _is_usb(ev):
        return Decision("ignore", f"{ev.devname}: not a USB-serial adapter")
    if ev.devname in rules.owned_ports:
        return Decision("ignore", f"{ev.devname}: already a configured serial port")
    if ev.action == "add":
        return Decision("serial-add", f"{ev.devname}: USB-serial adapter plugged in")
    if ev.action == "remove":
        return Decision("serial-remove", f"{ev.devname}: USB-serial adapter removed")
    return Decision("ignore", f"{ev.devname}: {ev.action!r} needs no action")


def _classify_block(ev: DeviceEvent, rules: HotplugRules) -> Decision:
    if not rules.media:
        return Decision("ignore", "hotplug.media is off")
    if ev.devtype not in ("disk", "partition"):
        return Decision("ignore", f"{ev.devname}: devtype {ev.devtype!r} is not a disk")
    named = _named(ev.sys_name, rules.media_devices)
    if not named and _named(ev.sys_name, _NEVER_MEDIA):
        return Decision("ignore", f"{ev.devname}: never an update medium")
    if not (named or ev.removable or _is_usb(ev)):
        return Decision("ignore", f"{ev.devname}: not removable media")
    if ev.action == "remove":
        return Decision("media-remove", f"{ev.devname}: removed")
    if ev.action not in ("add", "change"):
        return Decision("ignore", f"{ev.devname}: {ev.action!r} needs no action")
    if not ev.size_sectors:
        what = "no medium" if ev.action == "add" else "medium gone"
        return Decision("media-remove", f"{ev.devname}: {what} (size 0)")
    return Decision("media-add", f"{ev.devname}: medium present ({ev.size_sectors} sectors)")


def mount_point(mount_root: str, sys_name: str) -> str:
    """Where device ``sys_name`` is mounted: ``MOUNT_ROOT/<sys_name>`` (checked name).

    Raises:
        ValueError: ``sys_name`` is not a plain kernel device name.
    """
    if not _NAME_RE.fullmatch(sys_name):
        raise ValueError(f"not a kernel device name: {sys_name!r}")
    return posixpath.join(mount_root, sys_name)


def registry_url(mount: str) -> str:
    """The ``file://`` URL of the offline registry on a medium mounted at ``mount``."""
    return "file://" + posixpath.join(mount, REGISTRY_DIR) + "/"

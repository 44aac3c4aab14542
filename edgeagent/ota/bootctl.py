"""Host OTA boot entries: systemd-boot's boot counting on the ESP, as the host image names them.

The image build (``edgeagent.hostos.layout``) puts one unified kernel image per slot in
``EFI/Linux/``: ``<prefix>-a.efi`` / ``<prefix>-b.efi`` (plain name: good, never counted) or
``<prefix>-b+LEFT-DONE.efi`` (counted: systemd-boot renames it to ``+LEFT-1-DONE+1`` before it
boots it; ``LEFT`` 0 means bad, sorted last and never picked by default). ``loader/loader.conf``
has a ``default`` line naming the entry to boot (systemd-boot matches it against the lowercased
file names; when nothing matches it boots the first entry that still has tries, ADR 0010 §2).

Pure part (`plan`, `parse_entry`, `booted_slot`, `set_default`): turns an `EspAction` of
``edgeagent.ota.slots`` plus the listed file names into renames and a new loader.conf. Thin I/O
part: `EspDir` applies a plan to a mounted ESP (or a directory standing in for it in tests),
`mount_esp` mounts the ESP partition on the device (the no-mount rule is for the build only),
`find_partition` finds a partition by GPT name in sysfs, `reboot_now` restarts the machine.

What this module does not do: decide anything (slots does); touch EFI variables (the loader's
``LoaderEntryOneShot`` is not used, ADR 0010 §2); format or repair the ESP.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeagent.errors import OtaError
from edgeagent.ota.slots import SLOTS, EspAction
from edgeagent.verify.clock import fsync_dir, write_atomic

log = logging.getLogger(__name__)

LINUX_DIR = "EFI/Linux"
LOADER_CONF = "loader/loader.conf"

_ENTRY_RE = re.compile(r"(?P<base>.+)-(?P<slot>[ab])(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.efi")


@dataclass(frozen=True, slots=True)
class Entry:
    """One slot's UKI file name, parsed: ``left``/``done`` are None when not counted (good)."""

    name: str
    slot: str
    left: int | None
    done: int | None

    @property
    def good(self) -> bool:
        """Plain name: blessed, never counted."""
        return self.left is None

    @property
    def bad(self) -> bool:
        """No tries left: the loader never picks it by default."""
        return self.left == 0


@dataclass(frozen=True, slots=True)
class Plan:
    """File renames in ``EFI/Linux`` (in order), then the new loader.conf text (None: keep)."""

    renames: tuple[tuple[str, str], ...] = ()
    loader_conf: str | None = None


def parse_entry(name: str, prefix: str) -> Entry | None:
    """Parse a UKI file name of this image (``prefix``); None for anything else."""
    m = _ENTRY_RE.fullmatch(name.lower())
    if m is None or m["base"] != prefix.lower():
        return None
    left = None if m["left"] is None else int(m["left"])
    done = None if m["left"] is None else int(m["done"] or 0)
    return Entry(name, m["slot"], left, done)


def slot_entries(names: list[str], prefix: str, source: str) -> dict[str, Entry]:
    """Map each slot to its one UKI file.

    Raises:
        OtaError: two files for one slot (names both), or a slot without one.
    """
    found: dict[str, Entry] = {}
    for name in sorted(names):
        e = parse_entry(name, prefix)
        if e is None:
            continue
        if e.slot in found:
            raise OtaError(
                f"{source}: two boot entries for slot {e.slot}: {found[e.slot].name} and {name}"
            )
        found[e.slot] = e
    for slot in SLOTS:
        if slot not in found:
            raise OtaError(f"{source}: no boot entry {prefix}-{slot}[+N-M].efi for slot {slot}")
    return found


def set_default(conf: str, value: str) -> str:
    """Return loader.conf text with its ``default`` line set to ``value`` (added if missing)."""
    lines = conf.splitlines()
    out: list[str] = []
    done = False
    for line in lines:
        key = line.strip().split(None, 1)[0] if line.strip() else ""
        if key == "default":
            if not done:
                out.append(f"default {value}")
                done = True
            continue
        out.append(line)
    if not done:
        out.insert(0, f"default {value}")
    return "\n".join(out) + "\n"


def current_default(conf: str) -> str | None:
    """The value of loader.conf's ``default`` line, if any."""
    for line in conf.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0] == "default":
            return parts[1].strip()
    return None


def plan(action: EspAction, names: list[str], conf: str, prefix: str, source: str) -> Plan:
    """What to change on the ESP for ``action`` (empty when it is already so: idempotent).

    Raises:
        OtaError: the ESP does not hold exactly one entry per slot.
    """
    e = slot_entries(names, prefix, source)[action.slot]
    plain = f"{prefix}-{action.slot}.efi"
    trial = f"{prefix}-{action.slot}+1-0.efi"
    if action.kind == "bless":
        return Plan(renames=() if e.good else ((e.name, plain),))
    if action.kind == "mark-bad":
        if e.bad:
            return Plan()
        return Plan(renames=((e.name, f"{prefix}-{action.slot}+0-{e.done or 0}.efi"),))
    if action.kind == "mark-trial":
        return Plan(renames=() if e.name == trial else ((e.name, trial),))
    want = plain if action.kind == "default" else trial
    if current_default(conf) == want:
        return Plan()
    return Plan(loader_conf=set_default(conf, want))


def booted_slot(cmdline: str) -> str | None:
    """The slot named by ``edge.root=root-a|root-b`` on the kernel command line (layout.py)."""
    for arg in cmdline.split():
        if arg.startswith("edge.root=root-") and arg[len("edge.root=root-") :] in SLOTS:
            return arg[len("edge.root=root-") :]
    return None


# I/O ------------------------------------------------------------------------------------------


class EspDir:
    """A mounted ESP (or a directory laid out like one): lists, renames, rewrites loader.conf.

    Args:
        root: the ESP's mount point.
        prefix: the image name the UKIs start with (``[host_ota] boot_prefix``).
    """

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def names(self) -> list[str]:
        """File names in ``EFI/Linux``.

        Raises:
            OtaError: the folder cannot be listed.
        """
        try:
            return sorted(p.name for p in (self.root / LINUX_DIR).iterdir() if p.is_file())
        except OSError as exc:
            raise OtaError(f"{self.root / LINUX_DIR}: cannot list boot entries: {exc}") from exc

    def loader_conf(self) -> str:
        """The loader.conf text ("" when there is none)."""
        try:
            return (self.root / LOADER_CONF).read_text()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise OtaError(f"{self.root / LOADER_CONF}: cannot read: {exc}") from exc

    def entries(self) -> dict[str, Entry]:
        """Each slot's entry (see `slot_entries`)."""
        return slot_entries(self.names(), self.prefix, str(self.root / LINUX_DIR))

    def apply(self, action: EspAction) -> Plan:
        """Make ``action`` true on the ESP; each rename and the loader.conf swap is fsynced.

        Raises:
            OtaError: an entry is missing or duplicated, or a file operation failed.
        """
        p = plan(action, self.names(), self.loader_conf(), self.prefix, str(self.root))
        linux = self.root / LINUX_DIR
        try:
            for old, new in p.renames:
                os.rename(linux / old, linux / new)
                fsync_dir(linux)
                log.info("host-ota: ESP %s -> %s", old, new)
            if p.loader_conf is not None:
                conf = self.root / LOADER_CONF
                write_atomic(conf, p.loader_conf.encode())
                log.info("host-ota: ESP loader.conf %s", current_default(p.loader_conf))
        except OSError as exc:
            raise OtaError(f"{self.root}: cannot apply {action.kind} {action.slot}: {exc}") from exc
        return p


def find_partition(partname: str, sysfs: Path = Path("/sys/class/block")) -> Path | None:
    """The ``/dev`` node of the partition whose GPT name is ``partname`` (no udev needed)."""
    try:
        uevents = sorted(sysfs.glob("*/uevent"))
    except OSError:
        return None
    for uevent in uevents:
        try:
            fields = dict(
                line.split("=", 1) for line in uevent.read_text().splitlines() if "=" in line
            )
        except OSError:
            continue
        if fields.get("PARTNAME") == partname and "DEVNAME" in fields:
            return Path("/dev") / fields["DEVNAME"]
    return None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_NOATIME = 2, 4, 8, 1024


@contextlib.contextmanager
def mount_esp(device: Path, mountpoint: Path) -> Iterator[Path]:
    """Mount the vfat ESP ``device`` at ``mountpoint`` for the block; unmount after (flushes).

    Raises:
        OtaError: mount(2) failed (names the device and errno).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    libc = _libc()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_NOATIME
    if libc.mount(str(device).encode(), str(mountpoint).encode(), b"vfat", flags, None) != 0:
        err = ctypes.get_errno()
        raise OtaError(f"cannot mount ESP {device} at {mountpoint}: {os.strerror(err)}")
    try:
        yield mountpoint
    finally:
        if libc.umount2(str(mountpoint).encode(), 0) != 0:
            log.warning("host-ota: umount %s: %s", mountpoint, os.strerror(ctypes.get_errno()))


_LINUX_REBOOT_CMD_RESTART = 0x01234567


def reboot_now() -> None:
    """sync(2) then reboot(2): PID 1 is a shell (ADR 0008), nobody else would do it.

    Raises:
        OtaError: the kernel refused (not root).
    """
    os.sync()
    libc = _libc()
    # glibc's reboot() wrapper adds the magic numbers and takes only the command.
    if libc.reboot(_LINUX_REBOOT_CMD_RESTART) != 0:
        raise OtaError(f"reboot(2) failed: {os.strerror(ctypes.get_errno())}")

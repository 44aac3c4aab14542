"""Guests for the Xen test bed: xl domain configs and the dom0 script that runs them. [pure]

`Guest.xl_config` renders the xl config of one test guest (PVH ones get ``tsc_mode="native"``,
which QEMU TCG needs, ../shared/docs/xen-notes.md; every guest gets ``vcpus = 1``: without it
libxl 4.17 sizes the HAP pool for no vCPU and ``xl create`` fails with ENOMEM), refusing names
and values that could break out of the config. `guest_script` turns a list of guests into
the dom0 shell script that runs each with ``xtb-guest`` (host-os/xen-testbed/xtb-guest), and
`GUEST_RE` reads the line that script prints when a guest ends.

What it does not do: run anything, or check that the files named exist in dom0
(`edgeagent.hostos.xen_boot` packs them). The agent's own xl configs are
`edgeagent.vmm.xen.render_config`; these are only for the test bed's direct guests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

GUEST_RE = re.compile(r"XTB: guest (\S+) shutdown reason=(\S+) code=(\S+)")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")


def _quote(value: str) -> str:
    """An xl config string literal (double quotes; xl has no escapes for these characters)."""
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"xl config value {value!r}: quotes, backslashes and newlines refused")
    return f'"{value}"'


@dataclass(frozen=True, slots=True)
class Guest:
    """One guest for `guest_script`: paths are inside dom0 (under /testbed/)."""

    name: str
    kernel: str
    type: str = "pvh"
    ramdisk: str | None = None
    extra: str | None = None
    memory_mb: int = 32
    timeout_s: int = 120

    def xl_config(self) -> str:
        """The xl domain config text (PVH guests get ``tsc_mode="native"``, xen-notes.md)."""
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(f"guest name {self.name!r}: want [a-z0-9-], at most 31 characters")
        if self.type not in ("pv", "pvh"):
            raise ValueError(f"guest {self.name}: type {self.type!r}: want 'pv' or 'pvh'")
        lines = [
            f"name = {_quote(self.name)}",
            f"type = {_quote(self.type)}",
            f"kernel = {_quote(self.kernel)}",
            f"memory = {self.memory_mb}",
            "vcpus = 1",
            'on_poweroff = "destroy"',
            'on_reboot = "destroy"',
            'on_crash = "destroy"',
        ]
        if self.ramdisk is not None:
            lines.append(f"ramdisk = {_quote(self.ramdisk)}")
        if self.extra is not None:
            lines.append(f"extra = {_quote(self.extra)}")
        if self.type == "pvh":
            lines.append('tsc_mode = "native"')
        return "\n".join(lines) + "\n"


def guest_script(guests: Sequence[Guest]) -> str:
    """A dom0 run.sh that runs each guest in turn with ``xtb-guest`` (see the module doc)."""
    out = ["set -u"]
    for g in guests:
        cfg = f"/tmp/{g.name}.cfg"
        out.append(f"cat > {cfg} <<'XTB_EOF'\n{g.xl_config()}XTB_EOF")
        out.append(f"xtb-guest {cfg} {g.name} {g.timeout_s}")
    return "\n".join(out) + "\n"


def linux_guest(name: str = "linux-pv") -> Guest:
    """The Linux PV control guest: the test bed's kernel and its tiny busybox initrd."""
    return Guest(
        name=name,
        kernel="/testbed/vmlinuz",
        type="pv",
        ramdisk="/testbed/guest-initrd.cpio",
        extra="console=hvc0 quiet",
        memory_mb=128,
    )

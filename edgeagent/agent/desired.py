"""Desired state: verified targets metadata + who this device is -> the workloads it runs. [pure]

How workloads are published (ADR 0007 §1): **a target name is a workload name**. A new version
of a workload is published by re-adding the same target name with a new file and/or a new
``custom.edgeagent.version``; the signed targets metadata therefore names exactly one published
version per workload, and TUF's rollback protection on the targets role keeps an attacker from
replaying an older one. A version is identified by ``(name, version, sha256)`` (`VersionKey`):
republishing the same version string with different bytes is a different version.

Which version runs (`choose`): the published one, unless it is marked bad on this device (it
was rolled back); then the device keeps its current version until a different one is
published. "Newest" is the publisher's call: a publisher who re-publishes an older image has
decided to downgrade, and the device follows.

Selection (ADR 0003 §3): a target is for this device when both ``device_ids`` and ``groups``
are empty, or ``device_ids`` lists this device's id, or ``groups`` shares a group with it.

What this module does not do: no I/O, no trust checks (the metadata it is given has already
been verified by ``edgeagent.verify.trust``), no downloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from edgeagent.errors import ConfigError
from edgeagent.vmm.xen import WORKLOAD_NAME_RE

CUSTOM_KEY = "edgeagent"
RUNNABLE_KINDS = ("hvt", "qemu", "xen")
#: The kinds each hypervisor runs (``runner.hypervisor``): a Xen dom0 has no KVM, and a
#: KVM host has no xl (ADR 0012 §4).
KINDS_ON: dict[str, tuple[str, ...]] = {"kvm": ("hvt", "qemu"), "xen": ("xen", "qemu")}
#: Longest xen workload name (the domain name adds a prefix and 9 characters; Xen allows 63).
XEN_NAME_MAX = 40
_DEVICE_RE = re.compile(r"[A-Za-z0-9]{1,67}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")

VersionKey = tuple[str, str, str]  # (workload name, version, sha256)


@dataclass(frozen=True, slots=True)
class TargetEntry:
    """One verified target as the metadata lists it (the shell copies it out of TUF's types)."""

    name: str
    length: int
    sha256: str
    custom: object


@dataclass(frozen=True, slots=True)
class Workload:
    """One version of one workload: everything needed to run it.

    Attributes:
        name: the target (and workload) name.
        version: ``custom.edgeagent.version``.
        sha256, length: the signed blob.
        kind: "hvt" (edge-tender), "qemu" (multiboot/Linux/PVH kernels under QEMU) or "xen"
            (a PVH kernel as a Xen domain, under xl).
        mem_mb: guest memory.
        args: guest arguments.
        blocks: block device names; their files live in the agent's volumes folder.
        nets: net device names.
    """

    name: str
    version: str
    sha256: str
    length: int
    kind: Literal["hvt", "qemu", "xen"]
    mem_mb: int
    args: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    nets: tuple[str, ...] = ()

    @property
    def key(self) -> VersionKey:
        """This version's identity."""
        return (self.name, self.version, self.sha256)

    def to_json(self) -> dict[str, object]:
        """The JSON form persisted in the agent state."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "length": self.length,
            "kind": self.kind,
            "mem_mb": self.mem_mb,
            "args": list(self.args),
            "blocks": list(self.blocks),
            "nets": list(self.nets),
        }


@dataclass(frozen=True, slots=True)
class Desired:
    """What should run here.

    Attributes:
        workloads: by name, sorted.
        skipped: (name, reason) for targets meant for this device that cannot run here.
    """

    workloads: Mapping[str, Workload]
    skipped: tuple[tuple[str, str], ...] = ()


# Target kinds that carry host OS images (ADR 0003 §3, `repo add-host`), not guest workloads.
HOST_KINDS = frozenset({"host-slot", "host-disk"})


def _strings(obj: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: field '{key}': expected a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def parse_workload(entry: TargetEntry) -> Workload:
    """Read a target's ``custom.edgeagent`` (ADR 0003 §3) into a `Workload`.

    Unknown keys are ignored (forward compatibility, as ADR 0003 asks of clients).

    Raises:
        ConfigError: a missing or mistyped field, an unknown kind, a bad device name, or a
            target without a sha256 (names the target and the field).
    """
    where = f"target {entry.name}: custom.{CUSTOM_KEY}"
    if not _SHA_RE.fullmatch(entry.sha256):
        raise ConfigError(f"target {entry.name}: no sha256 hash in the signed metadata")
    custom = entry.custom
    section = custom.get(CUSTOM_KEY) if isinstance(custom, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: missing (not an edgeagent workload)")
    schema = section.get("schema", 1)
    if schema != 1:
        raise ConfigError(f"{where}: field 'schema': expected 1, got {schema!r}")
    version = section.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"{where}: field 'version': expected a non-empty string")
    kind = section.get("kind", "hvt")
    if kind not in ("hvt", "qemu", "xen"):
        raise ConfigError(f"{where}: field 'kind': expected hvt, qemu or xen, got {kind!r}")
    mem = section.get("mem_mb", 64)
    if not isinstance(mem, int) or isinstance(mem, bool) or not 1 <= mem <= 4096:
        raise ConfigError(f"{where}: field 'mem_mb': expected an integer 1..4096, got {mem!r}")
    devices = section.get("devices", {})
    if not isinstance(devices, dict):
        raise ConfigError(f"{where}: field 'devices': expected a table, got {devices!r}")
    blocks = _strings(devices, "block", f"{where}.devices")
    nets = _strings(devices, "net", f"{where}.devices")
    for dev in (*blocks, *nets):
        if not _DEVICE_RE.fullmatch(dev):
            raise ConfigError(f"{where}: device name {dev!r}: expected 1-67 letters or digits")
    if len(set(blocks + nets)) != len(blocks + nets):
        raise ConfigError(f"{where}: field 'devices': a device name is given twice")
    return Workload(
        name=entry.name,
        version=version,
        sha256=entry.sha256,
        length=entry.length,
        kind="hvt" if kind == "hvt" else "xen" if kind == "xen" else "qemu",
        mem_mb=mem,
        args=_strings(section, "args", where),
        blocks=blocks,
        nets=nets,
    )


def workload_from_json(obj: object, source: str) -> Workload:
    """Inverse of `Workload.to_json` (for the persisted agent state).

    Raises:
        ConfigError: the object is not a workload record (names ``source``).
    """
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: workload record: expected an object, got {obj!r}")
    custom = {
        CUSTOM_KEY: {
            "version": obj.get("version"),
            "kind": obj.get("kind"),
            "mem_mb": obj.get("mem_mb"),
            "args": obj.get("args"),
            "devices": {"block": obj.get("blocks"), "net": obj.get("nets")},
        }
    }
    name, sha, length = obj.get("name"), obj.get("sha256"), obj.get("length")
    if not isinstance(name, str) or not isinstance(sha, str) or not isinstance(length, int):
        raise ConfigError(f"{source}: workload record: name, sha256 or length missing")
    return parse_workload(TargetEntry(name, length, sha, custom))


def selects(custom: object, device_id: str, groups: Iterable[str]) -> bool:
    """Whether a target's selectors choose this device (ADR 0003 §3)."""
    section = custom.get(CUSTOM_KEY) if isinstance(custom, dict) else None
    if not isinstance(section, dict):
        return False
    ids = section.get("device_ids", [])
    want_groups = section.get("groups", [])
    ids = ids if isinstance(ids, list) else []
    want_groups = want_groups if isinstance(want_groups, list) else []
    if not ids and not want_groups:
        return True
    return device_id in ids or bool(set(want_groups) & set(groups))


def desired_state(
    entries: Iterable[TargetEntry],
    *,
    device_id: str,
    groups: Iterable[str],
    max_workloads: int,
    max_mem_mb: int,
    hypervisor: str = "kvm",
) -> Desired:
    """Decide which workloads this device should run.

    Targets without ``custom.edgeagent`` are not workloads and are ignored silently; targets
    selected for this device that are malformed, need net devices (not wired by the agent
    yet), are of a kind this device's hypervisor cannot run (`KINDS_ON`; ``hypervisor`` is
    ``runner.hypervisor``) or exceed the limits are listed in ``skipped`` with the reason.
    Limits are applied in name order, so the decision is stable across polls.
    """
    groups = tuple(groups)
    chosen: dict[str, Workload] = {}
    skipped: list[tuple[str, str]] = []
    mem_used = 0
    for entry in sorted(entries, key=lambda e: e.name):
        if not isinstance(entry.custom, dict) or CUSTOM_KEY not in entry.custom:
            continue
        if not selects(entry.custom, device_id, groups):
            continue
        section = entry.custom.get(CUSTOM_KEY)
        if isinstance(section, dict) and section.get("kind") in HOST_KINDS:
            continue  # Host OS images are for the host OTA (edgeagent.ota), not workloads.
        try:
            w = parse_workload(entry)
        except ConfigError as exc:
            skipped.append((entry.name, str(exc)))
            continue
        refused = runnable_here(w, hypervisor)
        if refused:
            skipped.append((w.name, refused))
        elif w.nets:
            skipped.append((w.name, "net devices are not supported by the agent yet"))
        elif len(chosen) >= max_workloads:
            skipped.append((w.name, f"over limits.max_workloads ({max_workloads})"))
        elif mem_used + w.mem_mb > max_mem_mb:
            skipped.append((w.name, f"over limits.max_mem_mb ({max_mem_mb} MiB in total)"))
        else:
            chosen[w.name] = w
            mem_used += w.mem_mb
    return Desired(workloads=chosen, skipped=tuple(skipped))


def runnable_here(w: Workload, hypervisor: str) -> str:
    """Why ``w`` cannot run on a device whose hypervisor is ``hypervisor`` ("" if it can)."""
    if w.kind not in KINDS_ON.get(hypervisor, ()):
        if w.kind == "xen":
            return (
                "kind xen: xen images cannot run on this device "
                f"(runner.hypervisor is {hypervisor}, not xen)"
            )
        return (
            f"kind {w.kind}: cannot run on this device (runner.hypervisor is {hypervisor}; "
            f"it runs {', '.join(KINDS_ON.get(hypervisor, ()))} targets)"
        )
    if w.kind == "xen":
        if w.blocks or w.nets:
            return "kind xen: block and net devices are not supported (no PV front-ends yet)"
        if not WORKLOAD_NAME_RE.fullmatch(w.name) or len(w.name) > XEN_NAME_MAX:
            return (
                f"kind xen: the target name becomes a Xen domain name; expected a-z, 0-9 and "
                f"'-' (at most {XEN_NAME_MAX} characters, not starting or ending with '-')"
            )
    return ""


Choice = Literal["keep", "install", "update", "held"]


def choose(published: Workload, current: Workload | None, bad: Iterable[VersionKey]) -> Choice:
    """Decide what to do with one desired workload.

    Returns:
        "keep": the published version is the current one;
        "install": nothing runs yet, install the published version;
        "update": a different published version replaces the current one (OTA);
        "held": the published version is marked bad here; keep the current one.
    """
    if current is not None and current.key == published.key:
        return "keep"
    if published.key in set(bad):
        return "held"
    return "install" if current is None else "update"

"""Host image layout decisions: GPT geometry, module load order, boot and config files. [pure]

Everything here turns a validated `HostRecipe` (plus facts the build shell read, such as the
kernel's ``modules.dep``) into bytes or numbers: the GPT partition table as an ``sfdisk``
script with fixed UUIDs, the order in which the initramfs loads kernel modules, the UKI's
command line per slot, systemd-boot's ``loader.conf`` and the boot-counting file names, the
baked-in agent config and the init's environment file.

It does not run tools, read files or look at the clock; the build shell
(`edgeagent.hostos.build`) does all of that and feeds the results in.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from edgeagent.errors import BuildError
from edgeagent.hostos.recipe import XEN_UARTS, HostRecipe

SECTOR = 512
MIB = 1024 * 1024
ALIGN_SECTORS = MIB // SECTOR  # Partitions start on 1 MiB boundaries.
GPT_TAIL_SECTORS = 2048  # Room for the backup GPT at the end of the disk (33 sectors needed).

# GPT partition type GUIDs (UEFI spec; Discoverable Partitions Specification).
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
TYPE_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

SLOTS = ("a", "b")
# The slot a freshly flashed disk boots first; the other holds the same image as a fallback.
FIRST_SLOT = "a"
BOOT_TRIES = 3

_NAMESPACE = uuid.UUID("6d1c3f0e-4d53-4b8e-9a3e-0c2a0f5e7a11")


@dataclass(frozen=True, slots=True)
class Partition:
    """One GPT partition: name (PARTLABEL), type GUID, stable UUID, start and size in sectors."""

    name: str
    type_guid: str
    uuid: str
    start: int
    sectors: int

    @property
    def offset(self) -> int:
        """Byte offset of the partition in the disk image."""
        return self.start * SECTOR

    @property
    def size(self) -> int:
        """Size of the partition in bytes."""
        return self.sectors * SECTOR


@dataclass(frozen=True, slots=True)
class DiskLayout:
    """The whole GPT disk: its size, GUID and partitions in order."""

    size: int
    disk_uuid: str
    partitions: tuple[Partition, ...]

    def partition(self, name: str) -> Partition:
        """Return the partition called ``name`` (RuntimeError if there is none)."""
        for p in self.partitions:
            if p.name == name:
                return p
        raise RuntimeError(f"no partition {name!r} in the layout")


def stable_uuid(recipe: HostRecipe, what: str) -> str:
    """A UUID derived from the image name and ``what``: the same on every build."""
    return str(uuid.uuid5(_NAMESPACE, f"{recipe.name}/{what}")).upper()


def disk_layout(recipe: HostRecipe) -> DiskLayout:
    """Compute the GPT layout esp | root-a | root-b | data from the recipe's sizes."""
    p = recipe.partitions
    wanted = [
        ("esp", TYPE_ESP, p.esp_mb),
        ("root-a", TYPE_ROOT_X86_64, p.root_mb),
        ("root-b", TYPE_ROOT_X86_64, p.root_mb),
        ("data", TYPE_LINUX_DATA, p.data_mb),
    ]
    start = ALIGN_SECTORS
    parts: list[Partition] = []
    for name, type_guid, mb in wanted:
        sectors = mb * MIB // SECTOR
        parts.append(Partition(name, type_guid, stable_uuid(recipe, name), start, sectors))
        start += sectors
    return DiskLayout(
        size=(start + GPT_TAIL_SECTORS) * SECTOR,
        disk_uuid=stable_uuid(recipe, "disk"),
        partitions=tuple(parts),
    )


def sfdisk_script(layout: DiskLayout) -> str:
    """The ``sfdisk`` input that writes ``layout``'s GPT (fixed GUIDs, so builds match)."""
    lines = [
        "label: gpt",
        f"label-id: {layout.disk_uuid}",
        "unit: sectors",
        f"first-lba: {ALIGN_SECTORS}",
        "",
    ]
    lines += [
        f'start={p.start}, size={p.sectors}, type={p.type_guid}, uuid={p.uuid}, name="{p.name}"'
        for p in layout.partitions
    ]
    return "\n".join(lines) + "\n"


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_load_order(
    modules_dep: str, builtin: str, wanted: tuple[str, ...], *, source: str
) -> list[str]:
    """Resolve ``wanted`` module names to ``modules.dep`` paths, dependencies first.

    Args:
        modules_dep: the text of the kernel's ``modules.dep``.
        builtin: the text of ``modules.builtin`` (modules compiled into the kernel are skipped).
        wanted: module names from the recipe (``-`` and ``_`` are equivalent).
        source: the file name used in errors.

    Returns:
        Relative module paths in a safe load order, each once.

    Raises:
        BuildError: a wanted module is neither a module nor built in.
    """
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[_module_name(path)] = (path.strip(), rest.split())
    builtins = {_module_name(line.strip()) for line in builtin.splitlines() if line.strip()}
    order: list[str] = []

    def visit(name: str) -> None:
        path, needs = deps[name]
        if path in order:
            return
        # modules.dep lists the full closure; load the deepest dependency first.
        for dep in reversed(needs):
            dep_name = _module_name(dep)
            if dep_name in deps:
                visit(dep_name)
        if path not in order:
            order.append(path)

    for raw in wanted:
        name = raw.replace("-", "_")
        if name in deps:
            visit(name)
        elif name not in builtins:
            raise BuildError(
                f"{source}: kernel module {raw!r} (recipe field 'kernel.modules') is neither a "
                "module nor built into this kernel"
            )
    return order


def host_console(recipe: HostRecipe) -> str:
    """The tty the host OS (and the agent's serial console) uses: the recipe's UART, or under
    Xen dom0's ``hvc0``, which Xen forwards to the UART it owns."""
    return "hvc0" if recipe.hypervisor == "xen" else recipe.console_device


def uki_cmdline(recipe: HostRecipe, slot: str) -> str:
    """The kernel command line of slot ``slot`` (the UKI's, or dom0's under Xen)."""
    if recipe.hypervisor == "xen":
        console = "console=hvc0"
    else:
        console = f"console={recipe.console_device},{recipe.console_baudrate}"
    return f"{console} edge.root=root-{slot} {recipe.kernel.cmdline}".strip()


def xen_config(recipe: HostRecipe, slot: str) -> str:
    """The ``.config`` section of slot ``slot``'s unified Xen EFI image (Xen's xen.cfg format).

    Xen's EFI loader reads its options and dom0's command line from here and takes the dom0
    kernel and initramfs from the image's ``.kernel`` and ``.ramdisk`` sections; the file names
    on the ``kernel=``/``ramdisk=`` lines are placeholders it does not open.
    """
    xen = recipe.xen
    if xen is None:
        raise BuildError("xen_config: the recipe has no [xen] table")
    uart = XEN_UARTS[recipe.console_device]
    options = f"console={uart} {uart}={recipe.console_baudrate},8n1 {xen.options}".strip()
    return (
        "[global]\n"
        f"default={recipe.name}-{slot}\n\n"
        f"[{recipe.name}-{slot}]\n"
        f"options={options}\n"
        f"kernel=vmlinuz {uki_cmdline(recipe, slot)}\n"
        "ramdisk=initrd.img\n"
    )


def root_packages(recipe: HostRecipe) -> tuple[str, ...]:
    """Debian packages of the root filesystem: the recipe's, plus the dom0 tools under Xen."""
    extra = recipe.xen.packages if recipe.hypervisor == "xen" and recipe.xen else ()
    return recipe.debian.packages + tuple(p for p in extra if p not in recipe.debian.packages)


def initramfs_modules(recipe: HostRecipe) -> tuple[str, ...]:
    """Modules the initramfs loads: the recipe's, plus dom0's Xen drivers under Xen."""
    extra = recipe.xen.modules if recipe.hypervisor == "xen" and recipe.xen else ()
    return recipe.kernel.modules + tuple(m for m in extra if m not in recipe.kernel.modules)


#: Xen's virtual addresses for the unified image's added sections start past its own image.
XEN_SECTION_ALIGN = 2 * MIB


def align_2m(value: int) -> int:
    """Round ``value`` up to the next 2 MiB boundary."""
    return (value + XEN_SECTION_ALIGN - 1) // XEN_SECTION_ALIGN * XEN_SECTION_ALIGN


def xen_sections_start(end_of_xen: int) -> int:
    """Where the first added section of a unified Xen image goes (2 MiB past Xen's end)."""
    return align_2m(end_of_xen) + XEN_SECTION_ALIGN


def pe_sections_end(objdump_h: str, *, source: str) -> int:
    """The end (VMA + size) of the highest section in ``objdump -h`` output of a PE image.

    Raises:
        BuildError: no section lines found.
    """
    end = 0
    for line in objdump_h.splitlines():
        parts = line.split()
        # "Idx Name Size VMA LMA File-off Algn": index, name, then hex size and VMA.
        if len(parts) >= 7 and parts[0].isdigit():
            try:
                size, vma = int(parts[2], 16), int(parts[3], 16)
            except ValueError:
                continue
            end = max(end, vma + size)
    if end == 0:
        raise BuildError(f"{source}: objdump -h shows no sections")
    return end


def uki_name(recipe: HostRecipe, slot: str, *, counting: bool) -> str:
    """The UKI file name in EFI/Linux/; ``counting`` adds systemd-boot's ``+TRIES-0`` suffix."""
    base = f"{recipe.name}-{slot}"
    return f"{base}+{BOOT_TRIES}-0.efi" if counting else f"{base}.efi"


def loader_conf(recipe: HostRecipe) -> str:
    """systemd-boot's loader.conf: no menu; the default is the exact fresh name of slot A.

    systemd-boot 252 matches ``default`` against the entry id *with* its counter and does not
    skip a matching entry that has no tries left, so a glob like ``edgeos-a*`` would boot a
    failed slot forever. The exact name stops matching once systemd-boot renames the file
    (``+3-0`` -> ``+2-1``); if that boot is never blessed, the next boot takes the first entry
    with tries left (slot B, uncounted). Blessing renames A and rewrites this line (ADR 0008 §2).
    """
    default = uki_name(recipe, FIRST_SLOT, counting=True)
    return f"timeout 0\ndefault {default}\neditor no\nconsole-mode keep\n"


def os_release(recipe: HostRecipe) -> str:
    """The os-release text for the UKI's .osrel section and /etc/os-release."""
    return (
        f'NAME="edgeagent host OS"\nID={recipe.name}\nVERSION_ID={recipe.version}\n'
        f'PRETTY_NAME="{recipe.name} {recipe.version}"\n'
    )


def _toml_str(value: str) -> str:
    return json.dumps(value)


def agent_config(recipe: HostRecipe) -> str:
    """The agent.toml baked into /etc/edgeagent/ (schema of docs/agent.example.toml)."""
    a = recipe.agent
    return "\n".join(
        [
            "# Baked into the host image by `make host-image` (host-os/recipe.toml).",
            "schema_version = 1",
            "",
            "[device]",
            f"id = {_toml_str(a.device_id)}",
            "groups = []",
            "",
            "[registry]",
            f"url = {_toml_str(a.registry_url)}",
            'trust_root = "root.json"',
            f"poll_interval_s = {a.poll_interval_s!r}",
            "poll_jitter_s = 0.5",
            "",
            "[paths]",
            'store = "/var/lib/edgeagent/store"',
            'state = "/var/lib/edgeagent/state"',
            "",
            "[runner]",
            'tender = "/usr/lib/edgeagent/edge-tender"',
            f"hypervisor = {_toml_str(recipe.hypervisor)}",
            "",
            "[serial]",
            f"ports = [{_toml_str('/dev/' + host_console(recipe))}]",
            f"baudrate = {recipe.console_baudrate}",
            f"status_interval_s = {recipe.agent.status_interval_s!r}",
            "",
            "[http]",
            'listen = "127.0.0.1:8480"',
            "",
            *(
                [
                    "[host_ota]",
                    "enabled = true",
                    'reboot_window = "always"',
                    "health_window_s = 60.0",
                    f"boot_prefix = {_toml_str(recipe.name)}",
                    "",
                ]
                if a.host_ota
                else []
            ),
        ]
    )


def host_env(recipe: HostRecipe) -> str:
    """The shell environment file /etc/edgeagent/host.env read by /sbin/edge-init."""
    return (
        f"EDGE_ADDRESS={recipe.network.address}\n"
        f"EDGE_GATEWAY={recipe.network.gateway}\n"
        f"EDGE_VERSION={recipe.version}\n"
        f"EDGE_HYPERVISOR={recipe.hypervisor}\n"
    )


def pe_set_timestamp(image: bytes, epoch: int) -> bytes:
    """Return a PE image with its COFF TimeDateStamp set to ``epoch`` and its checksum redone.

    ``objcopy`` stamps the build time into the UKI's PE header (and so into its checksum); this
    makes the UKI reproducible. Raises BuildError when ``image`` is not a PE file.
    """
    if len(image) < 0x40 or image[:2] != b"MZ":
        raise BuildError("UKI: not a PE image (no MZ header)")
    pe = int.from_bytes(image[0x3C:0x40], "little")
    if image[pe : pe + 4] != b"PE\0\0" or len(image) < pe + 24 + 68:
        raise BuildError("UKI: not a PE image (no PE signature)")
    out = bytearray(image)
    out[pe + 8 : pe + 12] = (epoch & 0xFFFFFFFF).to_bytes(4, "little")
    csum_at = pe + 24 + 64  # OptionalHeader.CheckSum, same offset in PE32 and PE32+.
    out[csum_at : csum_at + 4] = b"\0\0\0\0"
    padded = bytes(out) + (b"\0" if len(out) % 2 else b"")
    total = 0
    for (word,) in _words(padded):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    out[csum_at : csum_at + 4] = ((total + len(image)) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def _words(data: bytes) -> Iterator[tuple[int]]:
    return struct.iter_unpack("<H", data)

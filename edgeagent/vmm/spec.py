"""VM specs, runner command lines and exit-status decoding (pure).

A `VmSpec` says what to boot (image, kind, memory, devices, arguments, accelerator).
This module turns it into the argv of the program that boots it and decodes that
program's exit status back into the guest's status (ADR 0005):

- hvt images run under edge-tender with Solo5-style options
  (``--mem=MB --block:NAME=PATH --net:NAME=TAP --events-fd=N -- KERNEL ARGS``).
- multiboot, Linux and PVH kernels run under QEMU with ``-kernel``, the console on
  the first serial port (stdio), and ``isa-debug-exit`` at port 0xf4 so the guest's
  exit status comes back as QEMU's exit code ``(status << 1) | 1``.

Exit statuses of edge-tender (host-os/tender/README.md): 0-239 and 255 are the
guest's HALT status (255 = guest abort); 240-245 are the tender's own.

What this module does not do: it runs nothing, reads no files and does not probe
/dev/kvm (the shell passes ``kvm_usable`` in). It does not check that an image or a
block file exists; the runner reports that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgeagent.errors import ConfigError, KvmUnavailableError
from edgeagent.vmm.imageformat import RUNNER_FOR_KIND, ImageKind, RunnerKind

Accel = Literal["auto", "kvm", "tcg"]
ACCELS: tuple[Accel, ...] = ("auto", "kvm", "tcg")

#: QEMU's default RAM when a spec gives none (QEMU's own default is 128 MiB too).
QEMU_DEFAULT_MEM_MB = 128
#: edge-tender's largest guest (hvt-abi.md section 5: at most 4 GiB).
MAX_MEM_MB = 4096
#: isa-debug-exit as the QEMU platform of image-recipes uses it.
QEMU_DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=0x04"

# Tender exit statuses reserved by the contract in host-os/tender/README.md.
TENDER_BAD_IMAGE = 240
TENDER_SETUP = 241
TENDER_ABI = 242
TENDER_KVM_FAULT = 243
TENDER_SIGNAL = 244
TENDER_IO = 245
GUEST_ABORT = 255

ExitReason = Literal["halt", "abort", "usage", "setup", "abi", "kvm", "signal", "io", "shutdown"]

_TENDER_RESERVED: dict[int, tuple[ExitReason, str]] = {
    TENDER_BAD_IMAGE: ("usage", "edge-tender rejected the image or the options (240)"),
    TENDER_SETUP: ("setup", "edge-tender could not set up the host side (241)"),
    TENDER_ABI: ("abi", "the guest violated the hvt ABI and was stopped (242)"),
    TENDER_KVM_FAULT: ("kvm", "the guest faulted in KVM, e.g. a triple fault (243)"),
    TENDER_SIGNAL: ("signal", "edge-tender was stopped by a signal (244)"),
    TENDER_IO: ("io", "a host I/O error on a guest device stopped the VM (245)"),
}


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What to boot.

    Attributes:
        image: path of the image file.
        kind: its format, from `edgeagent.vmm.imageformat.recognise`.
        mem_mb: guest RAM in MiB; None lets the runner choose its default
            (edge-tender: 512, QEMU: `QEMU_DEFAULT_MEM_MB`).
        blocks: (device name, file path) pairs; for hvt the names come from the
            image's manifest.
        nets: (device name, TAP interface) pairs.
        args: the guest's command line arguments.
        accel: "kvm", "tcg" or "auto" (KVM when /dev/kvm is usable). hvt needs KVM.
    """

    image: str
    kind: ImageKind
    mem_mb: int | None = None
    blocks: tuple[tuple[str, str], ...] = ()
    nets: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = field(default=())
    accel: Accel = "auto"

    def __post_init__(self) -> None:
        if self.mem_mb is not None and not 1 <= self.mem_mb <= MAX_MEM_MB:
            raise ConfigError(
                f"VM spec for {self.image}: mem_mb={self.mem_mb}: expected 1..{MAX_MEM_MB} MiB"
            )
        if self.accel not in ACCELS:
            raise ConfigError(
                f"VM spec for {self.image}: accel={self.accel!r}: expected one of {ACCELS}"
            )
        seen: set[str] = set()
        for what, pairs in (("block", self.blocks), ("net", self.nets)):
            for name, target in pairs:
                _check_device_name(self.image, what, name)
                if name in seen:
                    raise ConfigError(
                        f"VM spec for {self.image}: device name {name!r} is given twice"
                    )
                seen.add(name)
                if not target:
                    raise ConfigError(
                        f"VM spec for {self.image}: {what} {name!r}: empty path or interface"
                    )

    @property
    def runner(self) -> RunnerKind:
        """The program that boots this spec's image."""
        return RUNNER_FOR_KIND[self.kind]


def _check_device_name(image: str, what: str, name: str) -> None:
    # Manifest names are at most 67 bytes (MFT_NAME_MAX); "=", ":" and "," would
    # break the runner's option syntax.
    if not name or len(name.encode()) > 67 or any(c in name for c in "=:, \t\n\0"):
        raise ConfigError(
            f"VM spec for {image}: {what} device name {name!r}: expected 1-67 characters "
            "without '=', ':', ',' or whitespace"
        )


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """A runner's exit status decoded.

    Attributes:
        guest_status: the guest's own exit status, or None when the guest did not
            report one (tender error, fault, signal).
        reason: one word: halt, abort, usage, setup, abi, kvm, signal, io, shutdown.
        message: a sentence for humans.
        exit_status: what `edgeagent boot` exits with: the guest status when there is
            one, else the tender's reserved status (QEMU failures map onto them too).
    """

    guest_status: int | None
    reason: ExitReason
    message: str
    exit_status: int


def resolve_accel(requested: Accel, *, kind: ImageKind, kvm_usable: bool) -> Literal["kvm", "tcg"]:
    """Choose the accelerator.

    Args:
        requested: "auto", "kvm" or "tcg".
        kind: the image kind; hvt images need KVM whatever is requested.
        kvm_usable: whether /dev/kvm is present and read-write (probed by the shell).

    Returns:
        "kvm" or "tcg".

    Raises:
        KvmUnavailableError: KVM is needed (hvt, or ``--accel kvm``) but not usable.
        ConfigError: TCG was requested for an hvt image.
    """
    if kind == "hvt":
        if requested == "tcg":
            raise ConfigError("--accel tcg: hvt images run only under edge-tender, which needs KVM")
        if not kvm_usable:
            raise KvmUnavailableError(
                "hvt images need KVM, but /dev/kvm is missing or not read-write"
            )
        return "kvm"
    if requested == "kvm" and not kvm_usable:
        raise KvmUnavailableError("--accel kvm: /dev/kvm is missing or not read-write")
    if requested == "auto":
        return "kvm" if kvm_usable else "tcg"
    return requested


def tender_argv(spec: VmSpec, *, tender: str, events_fd: int | None = None) -> list[str]:
    """Return the edge-tender command line for an hvt spec.

    Args:
        spec: an hvt spec.
        tender: path of the edge-tender binary.
        events_fd: the fd number (in the child) edge-tender writes its JSON-lines
            lifecycle events to, or None for no events.
    """
    if spec.kind != "hvt":
        raise ValueError(f"tender_argv: {spec.image} is {spec.kind}, not hvt")
    argv = [tender]
    if spec.mem_mb is not None:
        argv.append(f"--mem={spec.mem_mb}")
    argv += [f"--block:{name}={path}" for name, path in spec.blocks]
    argv += [f"--net:{name}={iface}" for name, iface in spec.nets]
    if events_fd is not None:
        argv.append(f"--events-fd={events_fd}")
    # "--" keeps an image path that starts with "-" from being read as an option.
    argv += ["--", spec.image, *spec.args]
    return argv


def qemu_argv(spec: VmSpec, *, qemu: str, accel: Literal["kvm", "tcg"]) -> list[str]:
    """Return the QEMU command line for a multiboot, Linux or PVH spec.

    Block devices become raw virtio drives and nets become virtio-net on a TAP
    interface (the guest must have virtio drivers to use them).

    Args:
        spec: a spec whose kind is not hvt.
        qemu: path of qemu-system-x86_64.
        accel: the resolved accelerator.
    """
    if spec.kind == "hvt":
        raise ValueError(f"qemu_argv: {spec.image} is an hvt image; it runs under edge-tender")
    if accel == "kvm":
        # QEMU 7.2 with plain -cpu host aborts on MSR 0x10a here (hvt-abi.md, machines).
        cpu = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    else:
        cpu = ["-accel", "tcg", "-cpu", "max"]
    argv = [
        qemu,
        *cpu,
        "-m",
        str(spec.mem_mb if spec.mem_mb is not None else QEMU_DEFAULT_MEM_MB),
        "-nographic",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-device",
        QEMU_DEBUG_EXIT_DEVICE,
    ]
    for name, path in spec.blocks:
        argv += ["-drive", f"id={name},file={_qemu_escape(path)},format=raw,if=virtio"]
    if not spec.nets:
        # No default NIC: saves loading its option ROM (iPXE) at every boot.
        argv += ["-nic", "none"]
    for name, iface in spec.nets:
        argv += [
            "-netdev",
            f"tap,id={name},ifname={_qemu_escape(iface)},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev={name}",
        ]
    argv += ["-kernel", spec.image]
    if spec.args:
        argv += ["-append", " ".join(spec.args)]
    return argv


def _qemu_escape(value: str) -> str:
    # QEMU option values double a literal comma.
    return value.replace(",", ",,")


def describe_exit(runner: RunnerKind, status: int, *, qemu_error: str = "") -> ExitInfo:
    """Decode a runner's exit status.

    Args:
        runner: "tender" or "qemu".
        status: the process exit status; negative -N when it was killed by signal N
            (as `subprocess` reports it).
        qemu_error: for QEMU, its first error line on stderr, if any. QEMU exits 1
            both when it cannot start and when the guest writes status 0 to
            isa-debug-exit; an error line tells the two apart.

    Returns:
        The decoded status (see `ExitInfo`).
    """
    if status < 0:
        return ExitInfo(
            None,
            "signal",
            f"{runner} was killed by signal {-status}",
            TENDER_SIGNAL,
        )
    if runner == "tender":
        return _describe_tender(status)
    return _describe_qemu(status, qemu_error)


def _describe_tender(status: int) -> ExitInfo:
    if status in _TENDER_RESERVED:
        reason, message = _TENDER_RESERVED[status]
        return ExitInfo(None, reason, message, status)
    if status == GUEST_ABORT:
        return ExitInfo(GUEST_ABORT, "abort", "the guest aborted (status 255)", GUEST_ABORT)
    if 0 <= status <= 239:
        return ExitInfo(status, "halt", f"the guest exited with status {status}", status)
    # 246-254 are not in the contract: report them as they are.
    return ExitInfo(None, "setup", f"edge-tender exited with unexpected status {status}", status)


def _describe_qemu(status: int, qemu_error: str) -> ExitInfo:
    if qemu_error and status == 1:
        return ExitInfo(None, "setup", f"QEMU failed: {qemu_error}", TENDER_SETUP)
    if status == 0:
        return ExitInfo(
            0,
            "shutdown",
            "QEMU exited normally: the guest shut down or reset without isa-debug-exit",
            0,
        )
    if status % 2 == 1:
        guest = status >> 1
        # An 8-bit exit code keeps only 7 bits of the guest's value. The QEMU
        # platform of image-recipes writes 127 for an abort (255) and for any
        # status above 126 (image-recipes/libos/qemu/platform.c), so 127 is
        # reported as an abort.
        if guest == 127:
            return ExitInfo(GUEST_ABORT, "abort", "the guest aborted (debug-exit 127)", GUEST_ABORT)
        return ExitInfo(guest, "halt", f"the guest exited with status {guest}", guest)
    return ExitInfo(
        None,
        "setup",
        f"QEMU exited with status {status}{': ' + qemu_error if qemu_error else ''}",
        TENDER_SETUP,
    )

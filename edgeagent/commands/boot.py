"""`edgeagent boot`: boot one image locally and exit with the guest's status.

The image format decides the runner (ADR 0005): hvt unikernels run under edge-tender,
multiboot, Linux (bzImage) and PVH kernels under QEMU with ``-kernel``. The guest
console is streamed to stdout and the runner's own messages to stderr.

Exit status: the guest's status (QEMU's isa-debug-exit codes mapped back). When the
guest did not report one, a line "edgeagent: error: ..." goes to stderr and the
status is the tender's reserved one (240 bad image or options, 241 host setup, 242
guest ABI violation, 243 KVM fault, 244 stopped by a signal, 245 device I/O error;
a QEMU that cannot start maps to 241). Errors found before booting (image missing,
unknown format, tender missing) exit 1, bad options 2, as everywhere in the CLI.

SIGTERM, SIGHUP or SIGINT (Ctrl+C) to `edgeagent boot`, or its stdout being closed,
stops the VM the same way the agent does: SIGTERM to the runner, then SIGKILL after a
grace period; the exit status is then 244.

``--runner xen`` (in a Xen dom0, ADR 0012) boots a PVH image as a Xen domain named
``edge-boot-<pid>`` with ``xl create`` instead, streams xenconsoled's guest log and exits
with the guest's status (poweroff 0; crash: the status it printed, else 255). Stopping is
``xl shutdown``, then ``xl destroy`` after the grace period (exit 244).

What this module does not do: supervise or restart (the agent does), or verify
where an image came from (``edgeagent pull`` does).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio

from edgeagent.errors import ConfigError, ImageFormatError, VmError
from edgeagent.vmm.events import VmResult
from edgeagent.vmm.imageformat import recognise
from edgeagent.vmm.runner import (
    DEFAULT_STOP_GRACE,
    QEMU_NAME,
    RunnerTools,
    RunningVm,
    check_runnable,
    run_vm,
)
from edgeagent.vmm.spec import ACCELS, Accel, VmSpec
from edgeagent.vmm.xen import DEFAULT_TSC_MODE, TSC_MODES, XenSpec
from edgeagent.vmm.xen_runner import (
    DEFAULT_CONSOLE_DIR,
    DEFAULT_XL,
    RunningDomain,
    XenTools,
    run_domain,
)
from edgeagent.vmm.xen_runner import check_runnable as check_domain_runnable

#: Images larger than this are refused before reading them whole.
MAX_IMAGE_BYTES = 512 * 1024 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``boot`` subcommand."""
    parser = sub.add_parser(
        "boot",
        help="boot one image locally (hvt under edge-tender, other kernels under QEMU)",
        description=(
            "Boot IMAGE and stream its console to stdout. hvt unikernels run under "
            "edge-tender (KVM); multiboot, Linux bzImage and PVH kernels run under QEMU "
            "with -kernel. Exits with the guest's exit status; if the guest did not "
            "report one, prints the reason on stderr and exits with the tender's "
            "reserved status (240 bad image/options, 241 host setup, 242 guest ABI "
            "violation, 243 KVM fault, 244 signal, 245 device I/O error)."
        ),
        epilog="Example: edgeagent boot image-recipes/out/hello.hvt -- greeting=hi",
    )
    parser.add_argument("image", metavar="IMAGE", help="the kernel image file")
    parser.add_argument(
        "--mem", type=int, metavar="MB", help="guest memory in MiB (tender 512, QEMU 128)"
    )
    parser.add_argument(
        "--block",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="attach file PATH as block device NAME (repeatable)",
    )
    parser.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="NAME=TAP",
        help="attach TAP interface TAP as network device NAME (repeatable)",
    )
    parser.add_argument(
        "--accel",
        choices=ACCELS,
        default="auto",
        help="QEMU accelerator: kvm, tcg, or auto = kvm when /dev/kvm is usable "
        "(hvt images always use KVM)",
    )
    parser.add_argument(
        "--tender",
        metavar="PATH",
        help="edge-tender binary (default: $EDGEAGENT_TENDER, the checkout's "
        "host-os/tender/edge-tender, then edge-tender on PATH)",
    )
    parser.add_argument(
        "--qemu", metavar="PATH", default=QEMU_NAME, help=f"QEMU binary (default {QEMU_NAME})"
    )
    parser.add_argument(
        "--runner",
        choices=("auto", "xen"),
        default="auto",
        help="auto: the image format decides (edge-tender or QEMU); xen: boot a PVH image as "
        "a Xen domain with xl (run this in dom0)",
    )
    parser.add_argument(
        "--xl", metavar="PATH", default=DEFAULT_XL, help=f"xl binary (default {DEFAULT_XL})"
    )
    parser.add_argument(
        "--xen-console-dir",
        metavar="DIR",
        default=DEFAULT_CONSOLE_DIR,
        help="xenconsoled's --log-dir, holding guest-NAME.log (default "
        f"{DEFAULT_CONSOLE_DIR}; xenconsoled must run with --log=guest)",
    )
    parser.add_argument(
        "--tsc-mode",
        choices=TSC_MODES,
        default=DEFAULT_TSC_MODE,
        help=f"xl tsc_mode of the domain (default {DEFAULT_TSC_MODE}, needed under QEMU TCG)",
    )
    parser.add_argument("guest_args", nargs="*", metavar="ARGS", help="guest arguments, after --")
    parser.set_defaults(func=handle)


def _pairs(option: str, values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise ConfigError(f"--{option} {value!r}: expected NAME=VALUE")
        out.append((name, target))
    return tuple(out)


def _read_image(path: str) -> bytes:
    image = Path(path)
    try:
        size = image.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageFormatError(
                f"{path}: {size} bytes is larger than the {MAX_IMAGE_BYTES} bytes accepted"
            )
        return image.read_bytes()
    except FileNotFoundError as exc:
        raise VmError(f"image {path}: no such file") from exc
    except IsADirectoryError as exc:
        raise VmError(f"image {path}: is a directory, expected a kernel image file") from exc
    except OSError as exc:
        raise VmError(f"image {path}: cannot read: {exc.strerror}") from exc


class _Stdout:
    """Console sink to our stdout; when the reader goes away (``| head``) it stops the VM.

    After a broken pipe, stdout is pointed at /dev/null so that later writes (and
    Python's flush at exit) do not fail again, and `closed` is set.
    """

    def __init__(self) -> None:
        self.closed = trio.Event()

    def __call__(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            self.closed.set()


def _write_stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


async def boot(spec: VmSpec, tools: RunnerTools) -> VmResult:
    """Run ``spec`` to the end.

    SIGTERM, SIGHUP or SIGINT to us, or our stdout being closed, stop the VM gracefully.
    """
    results: list[VmResult] = []
    stdout = _Stdout()

    async def run(*, task_status: trio.TaskStatus[RunningVm]) -> None:
        results.append(
            await run_vm(
                spec,
                console_sink=stdout,
                stderr_sink=_write_stderr,
                tools=tools,
                task_status=task_status,
            )
        )

    # SIGINT too: Ctrl+C stops the VM like SIGTERM instead of interrupting us mid-write.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:
                vm: RunningVm = await nursery.start(run)

                async def stop_on_signal() -> None:
                    async for _sig in signals:
                        vm.stop()

                async def stop_when_stdout_closes() -> None:
                    await stdout.closed.wait()
                    vm.stop()

                async with trio.open_nursery() as watchers:
                    watchers.start_soon(stop_on_signal)
                    watchers.start_soon(stop_when_stdout_closes)
                    await vm.process.wait()
                    watchers.cancel_scope.cancel(reason="vm exited")
        except* VmError as group:
            # Only a failure to spawn gets here: `check_runnable` ran before.
            raise VmError(str(group.exceptions[0])) from group
    return results[0]


async def boot_domain(spec: XenSpec, tools: XenTools) -> VmResult:
    """Run ``spec`` as a Xen domain to the end (signals and a closed stdout stop it)."""
    results: list[VmResult] = []
    stdout = _Stdout()
    key = ("boot", spec.name, spec.kernel)
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[RunningDomain]) -> None:
        try:
            results.append(
                await run_domain(
                    spec,
                    key=key,
                    console_sink=stdout,
                    tools=tools,
                    allow_adopt=False,
                    task_status=task_status,
                )
            )
        finally:
            done.set()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:
                dom: RunningDomain = await nursery.start(run)

                async def stop_on_signal() -> None:
                    async for _sig in signals:
                        dom.stop()

                async def stop_when_stdout_closes() -> None:
                    await stdout.closed.wait()
                    dom.stop()

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(stop_when_stdout_closes)
                await done.wait()
                nursery.cancel_scope.cancel(reason="domain ended")
        except* VmError as group:
            raise VmError(str(group.exceptions[0])) from group
    return results[0]


def _handle_xen(args: argparse.Namespace, data: bytes) -> int:
    info = recognise(args.image, data)
    if info.kind != "pvh":
        raise ImageFormatError(
            f"{args.image}: --runner xen boots PVH kernels, but this is {info.detail}"
        )
    if args.block or args.net:
        raise ConfigError("--runner xen: --block and --net are not supported (no PV front-ends)")
    with tempfile.TemporaryDirectory(prefix="edgeagent-boot-xen-") as tmp:
        spec = XenSpec(
            name=f"edge-boot-{os.getpid()}",
            kernel=str(Path(args.image).resolve()),
            mem_mb=args.mem or 64,
            args=tuple(args.guest_args),
            tsc_mode=args.tsc_mode,
        )
        tools = XenTools(
            state_dir=Path(tmp),
            xl=args.xl,
            console_dir=args.xen_console_dir,
            stop_grace=DEFAULT_STOP_GRACE,
        )
        check_domain_runnable(spec, tools)
        result = trio.run(partial(boot_domain, spec, tools))
    if result.guest_status is None or result.reason == "abort":
        print(f"edgeagent: error: {args.image}: {result.message}", file=sys.stderr)
    return result.exit_status


def handle(args: argparse.Namespace) -> int:
    """Boot the image; return the guest's exit status (see the module docstring)."""
    if args.runner == "xen":
        return _handle_xen(args, _read_image(args.image))
    info = recognise(args.image, _read_image(args.image))
    accel: Accel = args.accel
    spec = VmSpec(
        image=args.image,
        kind=info.kind,
        mem_mb=args.mem,
        blocks=_pairs("block", args.block),
        nets=_pairs("net", args.net),
        args=tuple(args.guest_args),
        accel=accel,
    )
    tools = RunnerTools(tender=args.tender, qemu=args.qemu)
    check_runnable(spec, tools)
    result = trio.run(partial(boot, spec, tools))
    if result.guest_status is None or result.reason == "abort":
        print(f"edgeagent: error: {args.image}: {result.message}", file=sys.stderr)
    return result.exit_status

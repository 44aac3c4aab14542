"""Boot the Xen test bed under QEMU TCG and run a script in dom0 (tests, bench, by hand).

What it does: packs a small per-boot cpio archive (the checkout's current ``edgeagent/``
package, byte-compiled, as /usr/lib/edgeagent/site/edgeagent; the caller's shell script as
/testbed/run.sh; any extra files under /testbed/), appends it to the base dom0 initramfs from
`edgeagent.hostos.xen_testbed`, and starts::

    qemu-system-x86_64 -accel tcg -cpu max,-smap -smp 2 -m 2048 -kernel xen.bin
        -initrd "vmlinuz <dom0 cmdline>,<initrd>" -serial tcp:127.0.0.1:PORT,server=on,wait=on

(``-cpu max,-smap`` per ../shared/docs/xen-notes.md). `XenVm` reads the serial console with
pyserial, logs every line to ``console.log`` in the run's folder and yields the lines with the
time since QEMU started. dom0's /init runs /testbed/run.sh once Xen's daemons are up, then
powers off, which ends QEMU. Lines from our scripts start with ``XTB: ``; `xtb-guest` (in the
base root) runs one guest with ``xl create -F`` and prints its console as
``XTB-GUEST NAME: LINE`` and its end as ``XTB: guest NAME shutdown reason=...``.

What it does not do: judge results (callers look for the lines they expect), build the base
artefacts (``make xen-testbed``), or touch the network: QEMU has no NIC, and servers the
script starts live on dom0's own loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import serial

from edgeagent.errors import EdgeAgentError, VmError
from edgeagent.hostos.xen_guest import GUEST_RE, Guest, guest_script, linux_guest
from edgeagent.hostos.xen_testbed import CHECKOUT, OUT, compile_python, cpio_archive, ensure_built

XEN_CMDLINE = (
    "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 "
    "loglvl=all guest_loglvl=all noreboot"
)
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen rdinit=/init quiet"
QEMU_MARKER = "xen-testbed"


def linux_guest_files() -> dict[str, Path]:
    """The files `linux_guest` needs under /testbed/."""
    return {"vmlinuz": OUT / "vmlinuz", "guest-initrd.cpio": OUT / "guest-initrd.cpio"}


def overlay(workdir: Path, script: str, files: Mapping[str, Path], *, agent: Path) -> Path:
    """Pack the per-boot archive: the agent from ``agent``, run.sh and ``files`` (dest -> src)."""
    root = workdir / "overlay"
    shutil.rmtree(root, ignore_errors=True)
    site = root / "usr/lib/edgeagent/site"
    shutil.copytree(
        agent, site / "edgeagent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    compile_python([site / "edgeagent"])
    tb = root / "testbed"
    tb.mkdir(parents=True)
    (tb / "run.sh").write_text(script)
    for dest, src in files.items():
        target = (tb / dest).resolve()
        if not target.is_relative_to(tb.resolve()):
            raise VmError(f"overlay file {dest!r}: must stay under /testbed/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            shutil.copy2(src, target)
    out = workdir / "overlay.cpio"
    cpio_archive(root, out, epoch=0)
    shutil.rmtree(root)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class XenVm:
    """One QEMU TCG boot of Xen + dom0 with ``initrd``; a context manager that kills QEMU."""

    def __init__(self, workdir: Path, initrd: Path, *, base: Path = OUT) -> None:
        self.workdir = workdir
        self.initrd = initrd
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: serial.Serial | None = None
        self.started = 0.0
        self.log: list[str] = []
        self.log_path = workdir / "console.log"
        self.tcp_port = 0

    def argv(self) -> list[str]:
        """The QEMU command line (``-name`` carries a marker naming this process)."""
        for p in (self.initrd, self.base / "vmlinuz", self.base / "xen.bin"):
            if "," in str(p) or " " in str(p):
                raise VmError(f"{p}: QEMU's multiboot module list cannot hold ',' or ' '")
        return [
            "qemu-system-x86_64",
            "-name",
            f"{QEMU_MARKER}-{os.getpid()}",
            "-accel",
            "tcg",
            "-cpu",
            "max,-smap",
            "-smp",
            "2",
            "-m",
            "2048",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
            str(self.base / "xen.bin"),
            "-append",
            XEN_CMDLINE,
            "-initrd",
            f"{self.base / 'vmlinuz'} {DOM0_CMDLINE},{self.initrd}",
            "-serial",
            f"tcp:127.0.0.1:{self.tcp_port},server=on,wait=on",
            "-monitor",
            "none",
        ]

    def __enter__(self) -> XenVm:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tcp_port = _free_port()
        self.started = time.monotonic()
        with (self.workdir / "qemu.log").open("wb") as qlog:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=qlog,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"socket://127.0.0.1:{self.tcp_port}"
        for _ in range(100):
            try:
                self.port = serial.serial_for_url(url, timeout=0.05)
                break
            except serial.SerialException:
                if self.proc.poll() is not None:
                    log = (self.workdir / "qemu.log").read_text(errors="replace")
                    raise VmError(f"qemu exited ({self.proc.returncode}): {log[-800:]}") from None
                time.sleep(0.1)  # noqa: TID251 (synchronous on purpose, like qemuboot)
        else:
            self.close()
            raise VmError(f"cannot connect to QEMU's serial port {url}")
        return self

    def lines(self, deadline_s: float) -> Iterator[tuple[float, str]]:
        """Yield (seconds since QEMU started, console line) until QEMU exits or the deadline.

        Raises:
            VmError: the deadline passed; the message carries the last console lines.
        """
        assert self.port is not None
        buf = b""
        with self.log_path.open("a", encoding="utf-8") as logf:
            while time.monotonic() - self.started < deadline_s:
                try:
                    chunk = self.port.read(4096)
                except serial.SerialException:
                    chunk = b""
                    if self.proc is not None and self.proc.poll() is None:
                        self.proc.wait(5)
                    if buf:
                        chunk, buf = buf + b"\n", b""
                    else:
                        return
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    self.log.append(line)
                    logf.write(line + "\n")
                    logf.flush()
                    yield time.monotonic() - self.started, line
                if not chunk and self.proc is not None and self.proc.poll() is not None:
                    return
        raise VmError(f"deadline of {deadline_s:.0f} s passed; last lines:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        """The last ``n`` console lines, for failure messages."""
        return "\n".join(self.log[-n:])

    def close(self) -> None:
        """Close the serial connection and end QEMU (SIGTERM, then SIGKILL)."""
        if self.port is not None:
            self.port.close()
            self.port = None
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def prepare(
    workdir: Path, script: str, files: Mapping[str, Path], *, agent: Path | None = None
) -> Path:
    """Build the test bed if needed and write ``workdir/initrd.cpio`` (base + this boot's files)."""
    base = ensure_built()
    workdir.mkdir(parents=True, exist_ok=True)
    ov = overlay(workdir, script, files, agent=agent or CHECKOUT / "edgeagent")
    initrd = workdir / "initrd.cpio"
    with initrd.open("wb") as out:
        for part in (base / "dom0-base.cpio", ov):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    ov.unlink()
    return initrd


def boot(
    workdir: Path, script: str, files: Mapping[str, Path], *, deadline_s: float = 300.0
) -> Iterator[tuple[float, str]]:
    """Prepare, boot and yield console lines until dom0 powers off (see `XenVm.lines`)."""
    initrd = prepare(workdir, script, files)
    with XenVm(workdir, initrd) as vm:
        yield from vm.lines(deadline_s)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgeagent.hostos.xen_boot [--guest IMAGE]... [--linux] [--script F]``."""
    p = argparse.ArgumentParser(
        prog="python -m edgeagent.hostos.xen_boot",
        description="Boot the Xen test bed under QEMU TCG (building it first if needed), run "
        "guests or a script in dom0, print the serial console, power off. Exit status 0 when "
        "dom0 reached its poweroff, 1 otherwise.",
    )
    p.add_argument(
        "--guest",
        action="append",
        default=[],
        metavar="'IMAGE [ARGS]'",
        help="a PVH ELF image to run with `xl create` (repeatable; name = file stem); words "
        "after the path become the guest's command line",
    )
    p.add_argument("--linux", action="store_true", help="also run the Linux PV control guest")
    p.add_argument("--script", type=Path, help="a shell script to run in dom0 (after guests)")
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="SRC:DEST",
        help="copy SRC (file or folder) to /testbed/DEST in dom0 (repeatable)",
    )
    p.add_argument("--workdir", type=Path, default=OUT / "runs" / "last")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument("--guest-timeout", type=int, default=60, help="seconds per guest")
    args = p.parse_args(argv)
    files: dict[str, Path] = {}
    guests: list[Guest] = []
    for spec in args.guest:
        img, _, cmdline = spec.strip().partition(" ")
        path = Path(img).resolve()
        name = re.sub(r"[^a-z0-9-]", "-", path.stem.lower())
        files[f"guests/{path.name}"] = path
        kernel = f"/testbed/guests/{path.name}"
        guests.append(Guest(name, kernel, extra=cmdline or None, timeout_s=args.guest_timeout))
    if args.linux:
        files.update(linux_guest_files())
        guests.append(linux_guest())
    for spec in args.file:
        src, sep, dest = spec.partition(":")
        if not sep or not dest:
            p.error(f"--file {spec!r}: want SRC:DEST")
        files[dest] = Path(src).resolve()
    script = guest_script(guests)
    if args.script is not None:
        script += args.script.read_text()
    shutil.rmtree(args.workdir, ignore_errors=True)
    ok = False
    try:
        for t, line in boot(args.workdir, script, files, deadline_s=args.deadline):
            print(f"[{t:6.1f}] {line}", flush=True)
            ok = ok or line.startswith("XTB: poweroff")
    except EdgeAgentError as exc:
        print(f"xen-boot: error: {exc}", file=sys.stderr)
        return 1
    print(f"xen-boot: console log in {args.workdir / 'console.log'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["GUEST_RE", "Guest", "XenVm", "boot", "guest_script", "linux_guest", "prepare"]

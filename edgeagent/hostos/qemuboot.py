"""Boot a host disk image in QEMU through OVMF and read its serial console (tests, bench).

What it does: creates a network namespace with a TAP device (`Netns`), starts
``qemu-system-x86_64 -machine q35 -accel tcg -cpu max`` with OVMF as pflash (a writable copy
of the VARS file), the disk image as a virtio disk, the TAP as a virtio NIC and the serial
port on a pty (`HostVm`), and yields the console lines with the time they arrived. A guest
reboot is a power cycle: QEMU runs with ``-no-reboot`` and is started again on the same disk
and EFI variables (OVMF's warm reset under TCG sometimes hung without output). The pty is
used because QEMU runs inside the namespace, where its own 127.0.0.1 is not the test's.

What it does not do: judge what it reads (the caller looks for the agent's JSON status line),
build images, or touch any address outside the namespace it created. It is synchronous on
purpose: the tests and the benchmark that use it run no trio code of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgeagent.errors import VmError

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: More guest reboots than this in one HostVm is a boot loop: an error, not a wait.
MAX_POWER_CYCLES = 12
_PTY_RE = re.compile(rb"char device redirected to (/dev/pts/\d+)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Netns:
    """A network namespace with one TAP device ``tap0`` holding ``address`` (CIDR)."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.tap = "tap0"

    def __enter__(self) -> Netns:
        _ip("netns", "add", self.name)
        try:
            self.run("ip", "link", "set", "lo", "up")
            self.run("ip", "tuntap", "add", "dev", self.tap, "mode", "tap")
            self.run("ip", "addr", "add", self.address, "dev", self.tap)
            self.run("ip", "link", "set", self.tap, "up")
        except BaseException:
            _ip("netns", "del", self.name)
            raise
        return self

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv: str) -> None:
        """Run a short command inside the namespace (raises on failure)."""
        subprocess.run([*self.prefix(), *argv], check=True, capture_output=True)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", self.name)


class HostVm:
    """One QEMU process booting ``disk`` (a private copy is the caller's job)."""

    def __init__(
        self,
        disk: Path,
        workdir: Path,
        *,
        netns: Netns | None = None,
        mem_mb: int = 1024,
        cpus: int = 1,
        cpu: str = "max",
    ) -> None:
        self.disk = disk
        self.cpu = cpu
        self.workdir = workdir
        self.netns = netns
        self.mem_mb = mem_mb
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.pty_fd = -1
        self.started = 0.0
        self.log: list[str] = []
        self.power_cycles = 0

    def argv(self) -> list[str]:
        """The QEMU command line."""
        vars_copy = self.workdir / "OVMF_VARS.fd"
        if not vars_copy.exists():
            shutil.copyfile(OVMF_VARS, vars_copy)
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            self.cpu,
            "-m",
            str(self.mem_mb),
            "-smp",
            str(self.cpus),
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            # A guest reboot ends QEMU; lines() starts it again (a power cycle, see _power_cycle).
            "-no-reboot",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive",
            f"file={self.disk},if=virtio,format=raw,cache=unsafe",
            "-serial",
            "pty",
        ]
        if self.netns is not None:
            argv += [
                "-netdev",
                f"tap,id=n0,ifname={self.netns.tap},script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]
        else:
            argv += ["-nic", "none"]
        prefix = self.netns.prefix() if self.netns is not None else []
        return [*prefix, *argv]

    def __enter__(self) -> HostVm:
        self.started = time.monotonic()
        self._spawn()
        return self

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert self.proc.stdout is not None
        head = b""
        while (m := _PTY_RE.search(head)) is None:
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise VmError(f"qemu exited before opening its serial pty: {head!r}")
            head += chunk
        self.pty_fd = os.open(m.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

    def _power_cycle(self) -> None:
        """The guest rebooted (QEMU runs with -no-reboot and exited 0): start QEMU again on the
        same disk and EFI variables, like a power cycle. OVMF's warm reset under TCG sometimes
        spins forever without output (seen in CI); a cold start never did."""
        self.power_cycles += 1
        if self.power_cycles > MAX_POWER_CYCLES:
            raise VmError(f"the guest rebooted more than {MAX_POWER_CYCLES} times: {self.tail()}")
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        os.close(self.pty_fd)
        self.pty_fd = -1
        self.log.append(f"(qemuboot: guest reset; power cycle {self.power_cycles})")
        self._spawn()

    def lines(self, deadline_s: float) -> Iterator[tuple[float, str]]:
        """Yield (seconds since QEMU started, line) until ``deadline_s`` after the start.

        Raises:
            VmError: QEMU exited; the message carries the last console lines.
        """
        buf = b""
        end = self.started + deadline_s
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.pty_fd], [], [], min(left, 1.0))
            if not ready:
                if self.proc is not None and self.proc.poll() is not None:
                    if self.proc.returncode == 0:
                        self._power_cycle()
                        continue
                    raise VmError(f"qemu exited ({self.proc.returncode}): {self.tail()}")
                continue
            try:
                chunk = os.read(self.pty_fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                chunk = b""
                closed = str(exc)
            else:
                closed = "end of file"
            if not chunk:
                # QEMU exited (a guest reboot, with -no-reboot) and took the pty with it.
                status = None
                if self.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        status = self.proc.wait(5)
                if status == 0:
                    self._power_cycle()
                    continue
                raise VmError(f"serial pty closed ({closed}); qemu status {status}: {self.tail()}")
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").rstrip("\r")
                self.log.append(line)
                yield time.monotonic() - self.started, line

    def tail(self, n: int = 40) -> str:
        """The last ``n`` console lines, for failure messages."""
        return "\n".join(self.log[-n:])

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.pty_fd >= 0:
            os.close(self.pty_fd)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def status_line(line: str) -> dict[str, object] | None:
    """The agent's JSON status object in a console line, or None."""
    start = line.find('{"edgeagent":"status"')
    if start < 0:
        return None
    try:
        doc = json.loads(line[start:])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def host_blessed(doc: dict[str, object]) -> bool:
    """Whether status ``doc`` shows the host's boot blessed by the agent's host OTA."""
    host = doc.get("host")
    return isinstance(host, dict) and host.get("blessed") is True


def workload_healthy(doc: dict[str, object], name: str) -> bool:
    """Whether status ``doc`` shows workload ``name`` running and healthy."""
    workloads = doc.get("workloads")
    if not isinstance(workloads, list):
        return False
    return any(
        isinstance(w, dict)
        and w.get("name") == name
        and w.get("state") == "running"
        and w.get("healthy") is True
        for w in workloads
    )


@dataclass(frozen=True, slots=True)
class BootResult:
    """Seconds from QEMU's start to each milestone (None: not reached) and the console tail."""

    first_status_s: float | None
    workload_healthy_s: float | None
    marker_s: float | None
    console_tail: str
    host_blessed_s: float | None = None  # a status line showed ``host.blessed`` true


def boot_to_health(
    disk: Path,
    repo: Path,
    workdir: Path,
    *,
    edgeagent: Path,
    registry_addr: str,
    workload: str | tuple[str, ...] = "ticker",
    marker: str | None = None,
    wait_blessed: bool = False,
    deadline_s: float = 420.0,
    mem_mb: int = 1024,
    cpus: int = 1,
    cpu: str = "max",
) -> BootResult:
    """Serve ``repo`` inside a fresh netns and boot a copy of ``disk`` (``workdir/disk.img``).

    Returns when the agent's status line shows ``workload`` (or all of several) healthy and, if
    ``marker`` is
    given, a console line containing ``marker`` was seen, and, with ``wait_blessed``, a status
    line shows the boot blessed by the agent's host OTA; or at the deadline. The copy is
    left in ``workdir`` for the caller to inspect.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    private = workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(private)], check=True)
    first = healthy = seen = blessed = None
    tail = ""
    with Netns(f"edgeos{os.getpid()}", f"{registry_addr}/24") as ns:
        server = subprocess.Popen(
            [
                *ns.prefix(),
                str(edgeagent),
                "repo",
                "serve",
                str(repo),
                "--listen",
                f"{registry_addr}:8000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert server.stdout is not None
            if b"serving" not in server.stdout.readline():
                raise VmError("edgeagent repo serve did not start")
            with HostVm(private, workdir, netns=ns, mem_mb=mem_mb, cpus=cpus, cpu=cpu) as vm:
                try:
                    for t, line in vm.lines(deadline_s):
                        if marker is not None and seen is None and marker in line:
                            seen = t
                        doc = status_line(line)
                        if doc is not None:
                            first = first if first is not None else t
                            names = (workload,) if isinstance(workload, str) else workload
                            if healthy is None and all(workload_healthy(doc, n) for n in names):
                                healthy = t
                            if blessed is None and host_blessed(doc):
                                blessed = t
                        if (
                            healthy is not None
                            and (marker is None or seen is not None)
                            and (not wait_blessed or blessed is not None)
                        ):
                            break
                finally:
                    tail = vm.tail()
        finally:
            server.terminate()
            server.wait(10)
            if server.stdout is not None:
                server.stdout.close()
    return BootResult(first, healthy, seen, tail, blessed)

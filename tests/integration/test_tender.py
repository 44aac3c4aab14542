"""Integration tests for edge-tender, run directly on real guest images under real KVM.

Each test boots the tender (host-os/tender/edge-tender, with its seccomp sandbox) on one of its
own minimal regression guests (tests/c/guests/, built into tests/c/build/ by
``make -C host-os/tender guests``) or on a hostile image from image-recipes/out/, and asserts the
documented contract from host-os/tender/README.md: the exit status, the one-line stderr message
and the JSON events written to ``--events-fd``.

These tests do not cover `edgeagent boot` (tests/integration/test_boot.py) or the library OS.
They need no root: net devices are tested through an inherited socketpair (``--net:NAME=@FD``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TENDER_DIR = REPO / "host-os" / "tender"
# EDGE_TENDER=host-os/tender/edge-tender-asan runs the whole file under ASan + UBSan.
TENDER = Path(os.environ.get("EDGE_TENDER", TENDER_DIR / "edge-tender")).resolve()
TENDER_DEBUG = TENDER_DIR / "edge-tender-debug"
GUESTS = REPO / "tests" / "c" / "build"
RECIPES_OUT = REPO / "image-recipes" / "out"
RUN_TIMEOUT = 60  # seconds; a guest that hangs fails the test instead of the run

pytestmark = pytest.mark.kvm


@dataclass(frozen=True)
class Run:
    status: int
    stdout: bytes
    stderr: str
    events: list[dict[str, object]]

    def event(self, name: str) -> dict[str, object]:
        found = [e for e in self.events if e["event"] == name]
        assert len(found) == 1, f"expected one {name!r} event, got {self.events}"
        return found[0]

    @property
    def exit_event(self) -> dict[str, object]:
        return self.event("exit")

    def describe(self) -> str:
        """Console tail and stderr, for assertion messages."""
        return f"status={self.status} stderr={self.stderr!r} stdout tail={self.stdout[-300:]!r}"


@pytest.fixture(scope="session", autouse=True)
def built() -> None:
    """Build the tender and the regression guests (a no-op when up to date)."""
    subprocess.run(
        ["make", "-s", "-C", str(TENDER_DIR), "all", "guests"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _read_events(fd: int) -> list[dict[str, object]]:
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    return [json.loads(line) for line in data.decode().splitlines()]


def run_tender(
    args: Sequence[str],
    *,
    tender: Path = TENDER,
    pass_fds: Sequence[int] = (),
    events: bool = True,
) -> Run:
    """Run the tender to completion with an events pipe on fd >= 3."""
    argv = [str(tender)]
    r, w = os.pipe()
    try:
        if events:
            argv.append(f"--events-fd={w}")
        argv.extend(args)
        proc = subprocess.run(
            argv,
            capture_output=True,
            pass_fds=(w, *pass_fds),
            timeout=RUN_TIMEOUT,
            check=False,
        )
    finally:
        os.close(w)
    return Run(proc.returncode, proc.stdout, proc.stderr.decode(), _read_events(r))


def guest(name: str) -> str:
    return str(GUESTS / f"{name}.hvt")


def multi(*args: str, mem: int = 4) -> Run:
    return run_tender([f"--mem={mem}", guest("multi"), *args])


def assert_stop(run: Run, status: int, reason: str, message: str) -> None:
    """The documented way a VM stops: status, stderr line, exit event."""
    assert run.status == status, run.describe()
    assert run.stderr.startswith("edge-tender: "), run.describe()
    assert message in run.stderr, run.describe()
    ev = run.exit_event
    assert ev["status"] == status
    assert ev["reason"] == reason
    assert message in str(ev["message"])


# --- well-behaved guests ----------------------------------------------------------------------


def test_hello_exits_zero_with_lifecycle_events() -> None:
    run = run_tender(["--mem=4", guest("hello")])
    assert run.status == 0, run.describe()
    assert run.stdout == b"Hello, world\nSUCCESS\n"
    assert run.stderr == ""
    names = [e["event"] for e in run.events]
    assert names == ["started", "first_output", "exit"]
    times = [e["t_ns"] for e in run.events]
    int_times = [t for t in times if isinstance(t, int)]
    assert int_times == times
    assert int_times == sorted(int_times)
    started = run.event("started")
    assert started["mem"] == 4 << 20
    assert started["entry"] == 0x100000
    assert run.exit_event == {**run.exit_event, "status": 0, "reason": "halt"}


def test_debug_build_without_sandbox_boots_hello() -> None:
    run = run_tender(["--mem=4", guest("hello")], tender=TENDER_DEBUG)
    assert run.status == 0, run.describe()
    assert b"SUCCESS" in run.stdout


def test_version_names_the_abi() -> None:
    out = subprocess.run([str(TENDER), "--version"], capture_output=True, check=True)
    assert out.stdout.decode().startswith("edge-tender ")
    assert out.stdout.decode().rstrip().endswith("(hvt abi 1.2)")


def test_help_documents_options_and_statuses() -> None:
    out = subprocess.run([str(TENDER), "--help"], capture_output=True, check=True)
    text = out.stdout.decode()
    for word in ("--mem=MB", "--block:NAME=PATH", "--net:NAME=IFACE|@FD", "--events-fd", "244"):
        assert word in text


def test_guest_arguments_are_joined_into_the_command_line() -> None:
    run = multi("args", "one", "--two", "three")
    assert run.status == 0, run.describe()
    assert b"ARGS:args one --two three\n" in run.stdout


@pytest.mark.parametrize("status", [0, 1, 7, 200])
def test_halt_status_is_the_exit_status(status: int) -> None:
    run = multi("halt", str(status))
    assert run.status == status, run.describe()
    assert run.exit_event["reason"] == "halt"
    assert run.exit_event["status"] == status
    assert run.stderr == ""


def test_guest_abort_exits_255() -> None:
    run = multi("abort")
    assert run.status == 255, run.describe()
    assert b"Solo5: ABORT" in run.stdout
    assert run.exit_event["reason"] == "halt"


def test_walltime_is_a_real_clock() -> None:
    run = multi("walltime")
    assert run.status == 0, run.describe()


def test_poll_times_out_with_nothing_ready() -> None:
    run = multi("poll")
    assert run.status == 0, run.describe()


def test_boot_info_matches_the_abi() -> None:
    run = multi("bootinfo", mem=6)
    assert run.status == 0, run.describe()
    line = run.stdout.split(b"\n")[0].decode()
    fields = dict(kv.split("=") for kv in line.split())
    assert fields["mem_size"] == str(6 << 20)
    assert fields["mft"] == str(0x10038)  # right after the 56-byte boot info
    assert fields["mft_entries"] == "1"
    assert fields["host_features"] == "0"
    assert fields["net_ring"] == "0"
    assert int(fields["tsc_hz"]) > 0
    assert 0x100000 < int(fields["kernel_end"]) < 6 << 20


def test_mem_is_rounded_down_to_2mib() -> None:
    run = multi("bootinfo", mem=5)
    assert run.status == 0, run.describe()
    assert f"mem_size={4 << 20} ".encode() in run.stdout


def test_boots_an_image_laid_out_like_solo5() -> None:
    """INTERP in text, execute-only text, empty TLS PT_LOAD, 2 MiB BSS-only PT_LOAD, 3 notes."""
    run = run_tender(["--mem=4", guest("solo5like")])
    assert run.status == 0, run.describe()
    assert run.stdout == b"SUCCESS\n"


def test_block_hypercalls_without_a_block_device_get_einval() -> None:
    run = multi("blk-nodev")
    assert run.status == 0, run.describe()


def test_console_flood_is_written_completely() -> None:
    run = multi("flood")
    assert run.status == 0, run.describe()
    assert len(run.stdout) == 2048 * 1024 + len(b"SUCCESS\n")


def test_console_flood_into_a_closed_stdout_does_not_crash_the_tender() -> None:
    r, w = os.pipe()
    with subprocess.Popen(
        [str(TENDER), "--mem=4", guest("multi"), "flood"], stdout=w, stderr=subprocess.PIPE
    ) as proc:
        os.close(w)
        os.read(r, 100)
        os.close(r)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err


# --- block devices ----------------------------------------------------------------------------


def disk(tmp_path: Path, size: int = 64 * 1024) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * size)
    return path


def test_block_read_write_and_range_checks(tmp_path: Path) -> None:
    d = disk(tmp_path)
    run = run_tender(["--mem=4", f"--block:storage={d}", guest("blk"), "rw"])
    assert run.status == 0, run.describe()
    assert b"capacity=65536 block_size=512" in run.stdout
    assert d.read_bytes()[512:1024] == bytes((i * 7 + 3) & 0xFF for i in range(512))


def test_block_sector_size_option(tmp_path: Path) -> None:
    d = disk(tmp_path)
    run = run_tender(
        ["--mem=4", f"--block:storage={d}", "--block-sector-size:storage=4096", guest("blk")]
    )
    assert run.status == 0, run.describe()
    assert b"block_size=4096" in run.stdout


def test_block_data_survives_a_restart(tmp_path: Path) -> None:
    d = disk(tmp_path)
    put = run_tender(["--mem=4", f"--block:storage={d}", guest("blk"), "put", "kept"])
    assert put.status == 0, put.describe()
    get = run_tender(["--mem=4", f"--block:storage={d}", guest("blk"), "get"])
    assert get.status == 0, get.describe()
    assert b"GOT:kept\n" in get.stdout


def test_rejects_block_read_into_read_only_text(tmp_path: Path) -> None:
    d = disk(tmp_path)
    run = run_tender(["--mem=4", f"--block:storage={d}", guest("blk"), "read-to-text"])
    assert_stop(run, 242, "abi", "BLOCK_READ buffer 0x100000+512 is read-only")


def test_rejects_block_write_from_outside_guest_memory(tmp_path: Path) -> None:
    d = disk(tmp_path)
    run = run_tender(["--mem=4", f"--block:storage={d}", guest("blk"), "buf-oob"])
    assert_stop(run, 242, "abi", "BLOCK_WRITE buffer 0x3ffff8+512 is outside guest memory")


def test_rejects_block_file_not_a_multiple_of_the_block_size(tmp_path: Path) -> None:
    d = disk(tmp_path, 1000)
    run = run_tender(["--mem=4", f"--block:storage={d}", guest("blk")])
    assert_stop(run, 240, "setup", "is not a positive multiple of the block size 512")


def test_missing_block_file_is_a_host_setup_failure(tmp_path: Path) -> None:
    run = run_tender(["--mem=4", f"--block:storage={tmp_path / 'nope'}", guest("blk")])
    assert_stop(run, 241, "setup", "cannot open")


def test_rejects_declared_device_left_unattached() -> None:
    run = run_tender(["--mem=4", guest("blk")])
    assert_stop(run, 240, "setup", "declares block device 'storage' but no --block:storage=")


def test_rejects_option_naming_an_undeclared_device(tmp_path: Path) -> None:
    d = disk(tmp_path)
    run = run_tender(["--mem=4", f"--block:other={d}", guest("blk")])
    assert_stop(run, 240, "setup", "no block device named 'other'")


def test_rejects_device_of_the_wrong_kind(tmp_path: Path) -> None:
    run = run_tender(["--mem=4", "--net:storage=tap0", guest("blk")])
    assert_stop(run, 240, "setup", "no net device named 'storage'")


# --- net devices (inherited fd) ---------------------------------------------------------------


def test_net_device_over_inherited_fd_echoes_a_frame() -> None:
    host, tender_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with host:
        fd = tender_end.fileno()
        with subprocess.Popen(
            [
                str(TENDER),
                "--mem=4",
                f"--net:service0=@{fd}",
                "--net-mac:service0=02:00:00:00:00:2a",
                guest("net"),
            ],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            tender_end.close()
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"MAC=02:00:00:00:00:2a MTU=1500\n"
            assert proc.stdout.readline() == b"READY\n"
            frame = bytes(range(60))
            host.sendall(frame)
            host.settimeout(RUN_TIMEOUT)
            assert host.recv(2048) == frame
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert out == b"SUCCESS\n"


def test_rejects_net_write_from_outside_guest_memory() -> None:
    host, tender_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with host, tender_end:
        fd = tender_end.fileno()
        run = run_tender(
            ["--mem=4", f"--net:service0=@{fd}", guest("net"), "hostile-len"], pass_fds=(fd,)
        )
    assert_stop(run, 242, "abi", "NET_WRITE buffer 0x3ffff0+64 is outside guest memory")


def test_rejects_missing_tap_interface() -> None:
    run = run_tender(["--mem=4", "--net:service0=edgenotthere0", guest("net")])
    assert_stop(run, 241, "setup", "no such interface")


# --- hostile guests (our own) -----------------------------------------------------------------

HOSTILE = [
    ("puts-oob", 242, "abi", "PUTS buffer 0x401000+16 is outside guest memory"),
    ("puts-huge", 242, "abi", "PUTS buffer 0x100000+4611686018427387904 is outside"),
    ("puts-wrap", 242, "abi", "PUTS buffer 0xffffffffffff0000+131072 is outside"),
    ("arg-oob", 242, "abi", "PUTS argument at 0xfffffff0 is outside guest memory"),
    ("hc-unknown", 242, "abi", "Invalid guest hypercall nr 29"),
    ("hc-zero", 242, "abi", "Invalid guest hypercall nr 0"),
    ("port-unknown", 242, "abi", "Invalid guest port access: out port 0x3f8 size 1"),
    ("port-in", 242, "abi", "Invalid guest port access: in port 0x502 size 4"),
    ("halt-cookie", 242, "abi", "HALT cookie 0x3fff9c is outside guest memory"),
    ("write-text", 243, "kvm", "KVM: write to read-only"),
    ("triple-fault", 243, "kvm", "KVM: triple fault (SHUTDOWN)"),
    ("hlt", 243, "kvm", "KVM: guest executed hlt"),
]


@pytest.mark.parametrize(
    ("case", "status", "reason", "message"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_guest_is_stopped_cleanly(
    case: str, status: int, reason: str, message: str
) -> None:
    run = multi(case)
    assert_stop(run, status, reason, message)
    assert b"FAIL: still running" not in run.stdout
    if reason == "kvm":
        fault = run.event("fault")
        assert isinstance(fault["rip"], int)
        assert fault["rip"] >= 0x100000
        assert fault["cr3"] == 0x2000


# --- hostile guests (image-recipes/out, built by helper D's recipes) --------------------------

RECIPE_HOSTILE = [
    ("hostile-ptr", 242, "abi", "is outside guest memory"),
    ("hostile-len", 242, "abi", "is outside guest memory"),
    ("hostile-hypercall", 242, "abi", "Invalid guest hypercall"),
    ("hostile-port", 242, "abi", "Invalid guest port access"),
    ("hostile-cookie", 242, "abi", "HALT cookie"),
    ("hostile-wtext", 243, "kvm", "KVM: write to read-only"),
    ("hostile-triplefault", 243, "kvm", "KVM: triple fault"),
]


@pytest.mark.parametrize(
    ("name", "status", "reason", "message"), RECIPE_HOSTILE, ids=[h[0] for h in RECIPE_HOSTILE]
)
def test_recipe_hostile_image_is_stopped_cleanly(
    name: str, status: int, reason: str, message: str
) -> None:
    image = RECIPES_OUT / f"{name}.hvt"
    if not image.exists():
        pytest.skip(f"{image} not built (run `make images`); tests/c/guests cover the same case")
    run = run_tender(["--mem=4", str(image)])
    assert_stop(run, status, reason, message)


def test_recipe_flood_image_completes() -> None:
    image = RECIPES_OUT / "hostile-flood.hvt"
    if not image.exists():
        pytest.skip(f"{image} not built (run `make images`)")
    run = run_tender(["--mem=4", str(image)])
    assert run.status == 0, run.describe()
    assert run.exit_event["reason"] == "halt"


# --- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["wait", "spin"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_termination_signal_exits_244(mode: str, sig: signal.Signals) -> None:
    """In POLL (wait) and in guest code (spin), a signal ends the VM with 244."""
    r, w = os.pipe()
    with subprocess.Popen(
        [str(TENDER), f"--events-fd={w}", "--mem=4", guest("multi"), mode],
        pass_fds=(w,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        os.close(w)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"READY\n"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    run = Run(proc.returncode, b"", err.decode(), _read_events(r))
    assert_stop(run, 244, "signal", f"Exiting on signal {int(sig)}")


# --- sandbox ----------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.mark.parametrize(("tender", "seccomp"), [(TENDER_DEBUG, "0"), (None, "2")])
def test_seccomp_filter_is_active_while_the_guest_runs(tender: Path | None, seccomp: str) -> None:
    """The release tender runs the guest under a seccomp filter; the -debug build does not."""
    binary = TENDER_DIR / "edge-tender" if tender is None else tender
    with subprocess.Popen(
        [str(binary), "--mem=4", guest("multi"), "wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"READY\n"
        status = _proc_status(proc.pid)
        proc.terminate()
        proc.communicate(timeout=RUN_TIMEOUT)
    assert status["Seccomp"].strip() == seccomp
    if seccomp == "2":
        assert status["NoNewPrivs"].strip() == "1"
    assert proc.returncode == 244


# --- bad images and options -------------------------------------------------------------------


def test_rejects_a_file_that_is_not_elf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hvt"
    bad.write_bytes(b"#!/bin/sh\necho hi\n")
    run = run_tender(["--mem=4", str(bad)])
    assert_stop(run, 240, "setup", "not an ELF file")


def test_rejects_a_host_executable() -> None:
    run = run_tender(["--mem=4", "/bin/true"])
    assert_stop(run, 240, "setup", "expected an x86_64 executable (ET_EXEC)")


def test_rejects_an_image_for_another_solo5_target(tmp_path: Path) -> None:
    data = bytearray((GUESTS / "hello.hvt").read_bytes())
    note = data.index(b"Solo5\0\0\0" + (1).to_bytes(4, "little") + (2).to_bytes(4, "little"))
    data[note + 8 : note + 12] = (2).to_bytes(4, "little")  # abi_target = spt
    image = tmp_path / "spt.hvt"
    image.write_bytes(bytes(data))
    run = run_tender(["--mem=4", str(image)])
    assert_stop(run, 240, "setup", "Executable is not for the solo5-hvt target")


def test_rejects_an_image_asking_for_another_abi_version(tmp_path: Path) -> None:
    data = bytearray((GUESTS / "hello.hvt").read_bytes())
    note = data.index(b"Solo5\0\0\0" + (1).to_bytes(4, "little") + (2).to_bytes(4, "little"))
    data[note + 12 : note + 16] = (3).to_bytes(4, "little")
    image = tmp_path / "v3.hvt"
    image.write_bytes(bytes(data))
    run = run_tender(["--mem=4", str(image)])
    assert_stop(run, 240, "setup", "Executable requests unsupported ABI version 3")


def test_rejects_unknown_option() -> None:
    run = run_tender(["--frobnicate", guest("hello")])
    assert_stop(run, 240, "setup", "unknown option: '--frobnicate'")


def test_rejects_missing_kernel() -> None:
    run = run_tender(["--mem=4", "/nonexistent/kernel.hvt"])
    assert_stop(run, 240, "setup", "cannot open")


def test_rejects_events_fd_that_is_not_open() -> None:
    proc = subprocess.run(
        [str(TENDER), "--events-fd=200", guest("hello")], capture_output=True, check=False
    )
    assert proc.returncode == 240
    assert b"--events-fd=200: fd is not open" in proc.stderr


# --- net devices (TAP in a network namespace) -------------------------------------------------

_SEND_UDP = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.sendto(b'ping', ('10.211.0.2', 7))"
)


@pytest.fixture
def netns_tap() -> Iterator[str]:
    """A fresh network namespace holding an up TAP interface tap0 (MTU 1400, 10.211.0.1/24)."""
    ns = f"edgetnd{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            "ip tuntap add tap0 mode tap",
            "ip link set tap0 mtu 1400",
            "ip addr add 10.211.0.1/24 dev tap0",
            "ip link set tap0 up",
        ):
            subprocess.run(["ip", "netns", "exec", ns, *cmd.split()], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


@pytest.mark.netns
def test_net_device_over_tap_in_a_netns(netns_tap: str) -> None:
    ns = netns_tap
    with subprocess.Popen(
        ["ip", "netns", "exec", ns, str(TENDER), "--mem=4", "--net:service0=tap0", guest("net")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(b"MAC="), first
        assert first.endswith(b" MTU=1400\n"), first
        assert proc.stdout.readline() == b"READY\n"
        # Sending to 10.211.0.2 makes the host ARP for it over tap0: the guest echoes that frame.
        subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", _SEND_UDP], check=True)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert out == b"SUCCESS\n"


@pytest.mark.netns
def test_rejects_tap_interface_that_is_down(netns_tap: str) -> None:
    ns = netns_tap
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "tap0", "down"], check=True)
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, str(TENDER), "--mem=4", "--net:service0=tap0", guest("net")],
        capture_output=True,
        check=False,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 241
    assert b"edge-tender: --net:service0=tap0: interface is down" in proc.stderr

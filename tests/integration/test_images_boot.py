"""Our images boot and behave: under edge-tender on real KVM, and under QEMU (TCG and KVM).

Smoke tests for the image side of the ABI: hello and ticker on both platforms, kvstore across
a restart and a torn sector, echo over a TAP device in a network namespace, and every hostile
guest ending with the tender's documented status after announcing itself. The tender is
host-os/tender/edge-tender; the KVM tests need it built (`make tender`) and are skipped with
that reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.build import BuiltImage

from .images import TENDER, built_fixture  # noqa: F401 (fixture)

QEMU = shutil.which("qemu-system-x86_64")
needs_tender = pytest.mark.skipif(
    not TENDER.exists(), reason=f"{TENDER} is not built (run `make tender`)"
)
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
HEARTBEAT = re.compile(r"HEARTBEAT seq=(\d+) uptime_ms=(\d+)")
# Guard against a hung guest only; nothing here asserts on time.
HANG_GUARD_S = 120


def tender(image: Path, *args: str, devices: tuple[str, ...] = ()) -> tuple[int, str, str]:
    proc = subprocess.run(
        [str(TENDER), "--mem=4", *devices, str(image), *args],
        capture_output=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()


def qemu(image: Path, append: str, *, accel: str) -> tuple[int, str]:
    assert QEMU is not None
    cpu = ["-cpu", "host,-arch-capabilities"] if accel == "kvm" else []
    # QEMU's `-append` is passed to the guest after the kernel's path.
    argv = [QEMU, "-accel", accel, *cpu, "-nographic", "-no-reboot", "-nodefaults"]
    argv += ["-kernel", str(image), "-append", append, "-serial", "stdio"]
    argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-display", "none"]
    proc = subprocess.run(argv, capture_output=True, timeout=HANG_GUARD_S, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace")


def guest_lines(text: str) -> list[str]:
    """Console lines from the guest's first line on (firmware may print before it)."""
    return [ln.rstrip("\r") for ln in text.splitlines()]


# ---- edge-tender (hvt) ---------------------------------------------------------------------


@pytest.mark.kvm
@needs_tender
def test_hello_hvt_prints_greeting_args_and_success(built: dict[str, BuiltImage]) -> None:
    rc, out, err = tender(built["hello.hvt"].path, "one", "k=v")
    assert rc == 0, err
    assert out.splitlines() == [
        "Hello, world from edgeagent hello",
        "arg[1]=one",
        "arg[2]=k=v",
        "SUCCESS",
    ]


@pytest.mark.kvm
@needs_tender
def test_abort_prints_file_line_message_and_exits_255(built: dict[str, BuiltImage]) -> None:
    rc, out, _err = tender(built["hello.hvt"].path, "abort")
    assert rc == 255
    assert re.search(r"^ABORT: hello/hello\.c:\d+: abort requested$", out, re.MULTILINE), out
    assert "SUCCESS" not in out


@pytest.mark.kvm
@needs_tender
def test_exit_status_reaches_the_tender(built: dict[str, BuiltImage]) -> None:
    rc, out, _err = tender(built["hello.hvt"].path, "exit=7")
    assert rc == 7
    assert out.endswith("SUCCESS\n")


@pytest.mark.kvm
@needs_tender
def test_ticker_hvt_beats_count_times_then_exits_0(built: dict[str, BuiltImage]) -> None:
    rc, out, err = tender(built["ticker.hvt"].path, "interval_ms=20", "count=3")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "READY"
    beats = [HEARTBEAT.fullmatch(ln) for ln in lines[1:]]
    assert all(beats), lines
    assert [int(m.group(1)) for m in beats if m] == [1, 2, 3]
    uptimes = [int(m.group(2)) for m in beats if m]
    assert uptimes == sorted(uptimes)


@pytest.mark.kvm
@needs_tender
def test_ticker_rejects_an_unknown_argument(built: dict[str, BuiltImage]) -> None:
    rc, out, _err = tender(built["ticker.hvt"].path, "interval=5")
    assert rc == 2
    assert "ERROR unknown argument: interval=5" in out


@pytest.mark.kvm
@needs_tender
def test_kvstore_survives_restart_and_ignores_a_torn_sector(
    built: dict[str, BuiltImage], tmp_path: Path
) -> None:
    disk = tmp_path / "storage.img"
    disk.write_bytes(b"\0" * 32 * 1024)
    image = built["kvstore.hvt"].path
    dev = (f"--block:storage={disk}",)

    def kv(*args: str) -> tuple[int, str]:
        rc, out, err = tender(image, *args, devices=dev)
        assert rc in (0, 1), err
        return rc, out

    assert kv("put", "colour", "deep", "blue") == (0, "OK\n")
    assert kv("put", "size", "3") == (0, "OK\n")
    assert kv("put", "colour", "red") == (0, "OK\n")
    # Each run is a new guest: the data lives on the block device only.
    assert kv("get", "colour") == (0, "VALUE key=colour value=red\n")
    assert kv("list") == (0, "VALUE key=size value=3\nVALUE key=colour value=red\nOK count=2\n")
    assert kv("del", "size") == (0, "OK\n")
    assert kv("get", "size") == (1, "NOTFOUND key=size\n")

    # Tear the newest record of "colour" (flip a byte of its value): it must be ignored and
    # the previous version must win.
    data = bytearray(disk.read_bytes())
    newest = max(
        (struct.unpack_from("<Q", data, off + 8)[0], off)
        for off in range(0, len(data), 512)
        if data[off : off + 4] == b"KVS1" and data[off + 24 : off + 30] == b"colour"
    )[1]
    data[newest + 30] ^= 0xFF
    disk.write_bytes(bytes(data))
    assert kv("get", "colour") == (0, "VALUE key=colour value=deep blue\n")


@pytest.mark.kvm
@needs_tender
def test_kvstore_without_its_disk_is_refused_by_the_tender(built: dict[str, BuiltImage]) -> None:
    rc, _out, _err = tender(built["kvstore.hvt"].path, "list")
    assert rc != 0


HOSTILE = {
    "ptr": 242,
    "len": 242,
    "hypercall": 242,
    "port": 242,
    "cookie": 242,
    "wtext": 243,
    "triplefault": 243,
}


@pytest.mark.kvm
@needs_tender
@pytest.mark.parametrize(("case", "status"), sorted(HOSTILE.items()))
def test_hostile_guest_announces_itself_and_is_stopped(
    built: dict[str, BuiltImage], case: str, status: int
) -> None:
    rc, out, err = tender(built[f"hostile-{case}.hvt"].path)
    assert out.startswith(f"HOSTILE {case}: about to do ")
    assert "still running" not in out
    assert rc == status, err


@pytest.mark.kvm
@needs_tender
def test_hostile_flood_is_written_out_and_exits_0(built: dict[str, BuiltImage]) -> None:
    rc, out, err = tender(built["hostile-flood.hvt"].path)
    assert rc == 0, err
    assert out.count("F" * 63 + "\n") == 256 * 64
    assert out.endswith("FLOOD DONE\n")


@pytest.fixture
def tap_netns() -> Iterator[str]:
    """A network namespace holding tap0 (10.0.0.1/24, up); removed afterwards."""
    ns = f"edgeD{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            ["tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["addr", "add", "10.0.0.1/24", "dev", "tap0"],
            ["link", "set", "tap0", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


ECHO_CLIENT = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for msg in (b"ping", b"x" * 1400):
    s.sendto(msg, ("10.0.0.2", 7))
    data, peer = s.recvfrom(2048)
    print(data == msg, peer[0], peer[1], len(data))
"""


@pytest.mark.kvm
@pytest.mark.netns
@needs_tender
def test_echo_answers_arp_and_echoes_udp_over_tap(
    built: dict[str, BuiltImage], tap_netns: str
) -> None:
    argv = ["ip", "netns", "exec", tap_netns, str(TENDER), "--mem=4", "--net:service=tap0"]
    argv += [str(built["echo.hvt"].path), "count=2"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as guest:
        try:
            assert guest.stdout is not None
            ready = guest.stdout.readline().decode()
            assert ready.startswith("READY ip=10.0.0.2 port=7 mac=")
            # The first datagram needs ARP to resolve the guest's address.
            client = subprocess.run(
                ["ip", "netns", "exec", tap_netns, sys.executable, "-c", ECHO_CLIENT],
                capture_output=True,
                timeout=HANG_GUARD_S,
                check=False,
                text=True,
            )
            assert client.stdout.splitlines() == ["True 10.0.0.2 7 4", "True 10.0.0.2 7 1400"]
            assert guest.wait(timeout=HANG_GUARD_S) == 0
            assert guest.stdout.read().decode() == "DONE echoed=2\n"
        finally:
            if guest.poll() is None:
                guest.kill()


# ---- QEMU (multiboot) ------------------------------------------------------------------------


def qemu_status(rc: int) -> int:
    """isa-debug-exit: QEMU exits with (value << 1) | 1; see image-recipes/README.md."""
    assert rc % 2 == 1, f"QEMU exit code {rc}: the guest did not reach isa-debug-exit"
    return 255 if rc == 255 else (rc - 1) // 2


@needs_qemu
def test_hello_qemu_tcg_prints_greeting_args_and_success(built: dict[str, BuiltImage]) -> None:
    rc, out = qemu(built["hello.qemu"].path, "alpha beta=2", accel="tcg")
    assert qemu_status(rc) == 0
    lines = guest_lines(out)
    start = lines.index("Hello, world from edgeagent hello")
    assert lines[start:] == [
        "Hello, world from edgeagent hello",
        "arg[1]=alpha",
        "arg[2]=beta=2",
        "SUCCESS",
    ]


@needs_qemu
def test_ticker_qemu_tcg_beats_with_a_calibrated_clock(built: dict[str, BuiltImage]) -> None:
    rc, out = qemu(built["ticker.qemu"].path, "interval_ms=20 count=3", accel="tcg")
    assert qemu_status(rc) == 0
    seqs = [int(m.group(1)) for m in HEARTBEAT.finditer(out)]
    assert seqs == [1, 2, 3]
    assert "READY" in out


@needs_qemu
@pytest.mark.parametrize(("append", "status"), [("exit=7", 7), ("exit=126", 126), ("abort", 255)])
def test_qemu_status_mapping(built: dict[str, BuiltImage], append: str, status: int) -> None:
    rc, out = qemu(built["hello.qemu"].path, append, accel="tcg")
    assert qemu_status(rc) == status
    assert ("ABORT: hello/hello.c:" in out) == (append == "abort")


@pytest.mark.kvm
@pytest.mark.slow
@needs_qemu
def test_hello_qemu_kvm(built: dict[str, BuiltImage]) -> None:
    rc, out = qemu(built["hello.qemu"].path, "", accel="kvm")
    assert qemu_status(rc) == 0
    assert "Hello, world from edgeagent hello" in out
    assert "SUCCESS" in out

"""Real images under the real edge-tender and QEMU, through `run_vm` and `edgeagent boot`.

Needs the artefacts of ``make tender`` and ``make images`` (host-os/tender/edge-tender,
image-recipes/out/*). A test whose artefact is missing is skipped with a reason that
says which one and how to build it. KVM tests are marked ``kvm``; the echo test also
needs root for its network namespace (``netns``). Every failing guest assertion carries
the console tail (house style 7, Firecracker's microvm_factory).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from edgeagent.vmm.events import VmResult
from edgeagent.vmm.runner import RunnerTools, RunningVm, run_vm
from edgeagent.vmm.spec import VmSpec

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image-recipes" / "out"
TENDER = REPO / "host-os" / "tender" / "edge-tender"
BOOT_TIMEOUT = 60  # seconds; guest code is emulated here (~1 us per instruction)


def image(name: str) -> str:
    path = OUT / name
    if not path.is_file():
        pytest.skip(f"{path} is not built: run `make images`")
    return str(path)


@pytest.fixture
def tools() -> RunnerTools:
    if not os.access(TENDER, os.X_OK):
        pytest.skip(f"{TENDER} is not built: run `make tender`")
    return RunnerTools(tender=str(TENDER), stop_grace=2.0)


class Console:
    """Console sink: keeps the output; ``seen(marker)`` waits until it appears."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._waiters: list[tuple[bytes, trio.Event]] = []

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        for marker, event in self._waiters:
            if marker in self.data:
                event.set()

    async def seen(self, marker: bytes) -> None:
        event = trio.Event()
        self._waiters.append((marker, event))
        if marker in self.data:
            event.set()
        await event.wait()

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


def check(result: VmResult, *, exit_status: int, reason: str = "halt") -> None:
    """Assert how the VM ended; on failure show the console and stderr tails."""
    assert (result.exit_status, result.reason) == (exit_status, reason), (
        f"VM ended with {result.exit_status} ({result.reason}: {result.message}), "
        f"expected {exit_status} ({reason})\n--- console tail ---\n{result.console_tail}"
        f"\n--- stderr tail ---\n{result.stderr_tail}"
    )


async def boot(spec: VmSpec, tools: RunnerTools) -> tuple[VmResult, Console]:
    console = Console()
    with trio.fail_after(BOOT_TIMEOUT):
        result = await run_vm(spec, console_sink=console, tools=tools)
    return result, console


def edgeagent_boot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", "boot", *args],
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT,
        check=False,
    )


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    return f"\n--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-2000:]}"


# hello


@pytest.mark.kvm
def test_edgeagent_boot_hello_exits_0_with_success() -> None:
    proc = edgeagent_boot(image("hello.hvt"))
    assert proc.returncode == 0, tail(proc)
    assert "Hello, world from edgeagent hello" in proc.stdout, tail(proc)
    assert "SUCCESS" in proc.stdout, tail(proc)


@pytest.mark.kvm
def test_edgeagent_boot_hello_passes_arguments() -> None:
    proc = edgeagent_boot("--mem", "4", image("hello.hvt"), "--", "alpha", "--beta=1")
    assert proc.returncode == 0, tail(proc)
    assert "arg[1]=alpha" in proc.stdout, tail(proc)
    assert "arg[2]=--beta=1" in proc.stdout, tail(proc)


@pytest.mark.kvm
async def test_run_vm_hello_reports_events_and_first_output(tools: RunnerTools) -> None:
    result, console = await boot(VmSpec(image=image("hello.hvt"), kind="hvt", mem_mb=4), tools)
    check(result, exit_status=0)
    assert "SUCCESS" in console.text
    assert [e.event for e in result.events] == ["started", "first_output", "exit"]
    assert result.first_output_s is not None


# ticker


@pytest.mark.kvm
async def test_ticker_count_3_prints_three_heartbeats(tools: RunnerTools) -> None:
    spec = VmSpec(
        image=image("ticker.hvt"), kind="hvt", mem_mb=4, args=("count=3", "interval_ms=20")
    )
    result, console = await boot(spec, tools)
    check(result, exit_status=0)
    beats = [line for line in console.text.splitlines() if line.startswith("HEARTBEAT ")]
    assert [b.split()[1] for b in beats] == ["seq=1", "seq=2", "seq=3"], result.console_tail


@pytest.mark.kvm
async def test_ticker_forever_is_stopped_with_sigterm_by_cancellation(
    tools: RunnerTools,
) -> None:
    spec = VmSpec(image=image("ticker.hvt"), kind="hvt", mem_mb=4, args=("interval_ms=20",))
    console = Console()
    with trio.fail_after(BOOT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            vm: RunningVm = await nursery.start(
                lambda task_status: run_vm(
                    spec, console_sink=console, tools=tools, task_status=task_status
                )
            )
            await console.seen(b"HEARTBEAT seq=2 ")
            nursery.cancel_scope.cancel(reason="test: stop the ticker")
    # The runner reaped the tender before Cancelled propagated, and the tender ended
    # on our SIGTERM with the contract's 244 (not by SIGKILL after the grace period).
    assert vm.process.returncode == 244, console.text[-2000:]


@pytest.mark.kvm
async def test_ticker_forever_stop_returns_a_signal_result(tools: RunnerTools) -> None:
    spec = VmSpec(image=image("ticker.hvt"), kind="hvt", mem_mb=4, args=("interval_ms=20",))
    console = Console()
    results: list[VmResult] = []

    async def run(*, task_status: trio.TaskStatus[RunningVm]) -> None:
        results.append(
            await run_vm(spec, console_sink=console, tools=tools, task_status=task_status)
        )

    with trio.fail_after(BOOT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            vm: RunningVm = await nursery.start(run)
            await console.seen(b"HEARTBEAT seq=1 ")
            vm.stop()
    (result,) = results
    check(result, exit_status=244, reason="signal")
    assert result.process_status == 244
    assert [e.get("reason") for e in result.events if e.event == "exit"] == ["signal"]


@pytest.mark.kvm
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_edgeagent_boot_stops_the_vm_on_sigterm_and_ctrl_c(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "boot",
            "--mem",
            "4",
            image("ticker.hvt"),
            "--",
            "interval_ms=20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("HEARTBEAT"):
                break
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=BOOT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 244, err
    assert "edgeagent: error:" in err
    assert "stopped by edgeagent with signal 15" in err


@pytest.mark.kvm
def test_edgeagent_boot_stops_the_vm_when_its_stdout_closes() -> None:
    # `edgeagent boot ticker.hvt | head -2` must not leave the guest running.
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeagent", "boot", "--mem", "4", image("ticker.hvt"), "--",
         "interval_ms=20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"READY\n"
        proc.stdout.close()
        _out, err = proc.communicate(timeout=BOOT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 244, err.decode()
    assert b"Traceback" not in err


# kvstore


def _kv(tools: RunnerTools, disk: Path, *args: str) -> tuple[VmResult, Console]:
    spec = VmSpec(
        image=image("kvstore.hvt"),
        kind="hvt",
        mem_mb=4,
        blocks=(("storage", str(disk)),),
        args=args,
    )
    return trio.run(boot, spec, tools)


def _newest_record_sector(disk: Path, sector: int = 512) -> int:
    """Index of the valid-looking kvstore record with the highest seq (format in kvstore.c)."""
    data = disk.read_bytes()
    best, best_seq = -1, -1
    for i in range(len(data) // sector):
        magic, _crc, seq = struct.unpack_from("<IIQ", data, i * sector)
        if magic == 0x3153564B and seq > best_seq:
            best, best_seq = i, seq
    assert best >= 0, "no kvstore record on disk"
    return best


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "storage.img"
    path.write_bytes(b"\0" * 512 * 16)
    return path


@pytest.mark.kvm
def test_kvstore_value_survives_a_restart(tools: RunnerTools, disk: Path) -> None:
    result, console = _kv(tools, disk, "put", "colour", "blue")
    check(result, exit_status=0)
    assert "OK" in console.text
    result, console = _kv(tools, disk, "get", "colour")
    check(result, exit_status=0)
    assert "VALUE key=colour value=blue" in console.text, result.console_tail


@pytest.mark.kvm
@pytest.mark.parametrize("damage", ["torn", "bitflip"])
def test_kvstore_ignores_a_torn_last_write_and_the_previous_value_wins(
    tools: RunnerTools, disk: Path, damage: str
) -> None:
    for value in ("v1", "v2"):
        result, _console = _kv(tools, disk, "put", "k", value)
        check(result, exit_status=0)
    newest = _newest_record_sector(disk)
    with disk.open("r+b") as f:
        f.seek(newest * 512)
        record = bytearray(f.read(512))
        if damage == "torn":
            # Power cut mid-write: only the first 16 bytes of the new sector landed.
            record[16:] = bytes(len(record) - 16)
        else:
            record[24 + 1] ^= 0x01  # One bit of the value flipped ("v2" -> "w2").
        f.seek(newest * 512)
        f.write(record)
    result, console = _kv(tools, disk, "get", "k")
    check(result, exit_status=0)
    assert "VALUE key=k value=v1" in console.text, result.console_tail


@pytest.mark.kvm
def test_kvstore_without_its_block_device_is_a_tender_usage_error(tools: RunnerTools) -> None:
    spec = VmSpec(image=image("kvstore.hvt"), kind="hvt", mem_mb=4, args=("list",))
    result, _console = trio.run(boot, spec, tools)
    check(result, exit_status=240, reason="usage")


# echo over TAP in a network namespace

ECHO_CLIENT = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for attempt in range(20):
    s.sendto(b"edgeagent-ping", ("10.0.0.2", 7))
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    print(data.decode(), peer[0], peer[1])
    sys.exit(0)
sys.exit("no echo after 20 attempts")
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"ea-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "addr", "add", "10.0.0.1/24", "dev", "tap0"],
            ["ip", "link", "set", "tap0", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.kvm
@pytest.mark.netns
async def test_echo_answers_udp_over_tap_in_a_netns(tools: RunnerTools, netns: str) -> None:
    spec = VmSpec(
        image=image("echo.hvt"),
        kind="hvt",
        mem_mb=4,
        nets=(("service", "tap0"),),
        args=("ip=10.0.0.2", "port=7", "count=1"),
    )
    ns_tools = RunnerTools(tender=tools.tender, prefix=("ip", "netns", "exec", netns))
    console = Console()
    results: list[VmResult] = []

    async def run(*, task_status: trio.TaskStatus[RunningVm]) -> None:
        results.append(
            await run_vm(spec, console_sink=console, tools=ns_tools, task_status=task_status)
        )

    with trio.fail_after(BOOT_TIMEOUT):
        async with trio.open_nursery() as nursery:
            vm: RunningVm = await nursery.start(run)
            await console.seen(b"READY ip=10.0.0.2")
            client = await trio.run_process(
                ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_CLIENT],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if client.returncode != 0:
                vm.stop()
    (result,) = results
    assert client.returncode == 0, (
        f"{client.stderr.decode()}\n--- console tail ---\n{result.console_tail}"
    )
    assert client.stdout.decode().split() == ["edgeagent-ping", "10.0.0.2", "7"]
    check(result, exit_status=0)


# QEMU: the multiboot build of hello


@pytest.mark.parametrize("accel", ["tcg", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_edgeagent_boot_hello_qemu(accel: str) -> None:
    proc = edgeagent_boot("--accel", accel, image("hello.qemu"), "--", "gamma")
    assert proc.returncode == 0, tail(proc)
    assert "Hello, world from edgeagent hello" in proc.stdout, tail(proc)
    assert "arg[1]=gamma" in proc.stdout, tail(proc)
    assert "SUCCESS" in proc.stdout, tail(proc)


async def test_run_vm_ticker_qemu_under_tcg() -> None:
    spec = VmSpec(
        image=image("ticker.qemu"),
        kind="multiboot",
        args=("count=2", "interval_ms=10"),
        accel="tcg",
    )
    result, console = await boot(spec, RunnerTools())
    check(result, exit_status=0)
    assert result.runner == "qemu"
    assert console.text.count("HEARTBEAT ") == 2, result.console_tail


# Tender-reserved statuses through `edgeagent boot`


@pytest.mark.kvm
def test_edgeagent_boot_maps_a_hostile_guest_to_a_clear_error() -> None:
    proc = edgeagent_boot("--mem", "4", image("hostile-ptr.hvt"))
    assert proc.returncode == 242, tail(proc)
    assert "edgeagent: error:" in proc.stderr, tail(proc)
    assert "outside guest memory" in proc.stderr, tail(proc)


def test_edgeagent_boot_unknown_format_names_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.img"
    bogus.write_bytes(b"MZ" + bytes(100))
    proc = edgeagent_boot(str(bogus))
    assert proc.returncode == 1
    assert f"{bogus}: unrecognised image format" in proc.stderr
    assert "expected an hvt unikernel" in proc.stderr


def test_edgeagent_boot_missing_image(tmp_path: Path) -> None:
    proc = edgeagent_boot(str(tmp_path / "none.hvt"))
    assert proc.returncode == 1
    assert "no such file" in proc.stderr


def test_edgeagent_boot_missing_tender_says_make_tender(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEAGENT_TENDER": str(tmp_path / "edge-tender")}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeagent", "boot", image("hello.hvt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=BOOT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 1
    assert "EDGEAGENT_TENDER" in proc.stderr
    proc = edgeagent_boot("--tender", str(tmp_path / "nope"), image("hello.hvt"))
    assert proc.returncode == 1
    assert "not an executable file" in proc.stderr

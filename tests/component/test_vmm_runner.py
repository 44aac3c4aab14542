"""The VM runner against a fake tender and a fake QEMU (real processes, real pipes).

The fakes are small Python scripts written per test; they follow edge-tender's
contract (console on stdout, JSON-lines events on --events-fd, exit statuses) and
QEMU's (isa-debug-exit codes). Stop tests use a short grace period.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from edgeagent.errors import ConfigError, KvmUnavailableError, VmError
from edgeagent.vmm.runner import RunnerTools, RunningVm, find_tender, run_vm
from edgeagent.vmm.spec import VmSpec

FAKE_TENDER = """\
import json, os, signal, sys, time
argv = sys.argv[1:]
sep = argv.index("--")
opts, image, args = argv[:sep], argv[sep + 1], argv[sep + 2:]
events = None
for o in opts:
    if o.startswith("--events-fd="):
        events = os.fdopen(int(o.split("=", 1)[1]), "w", buffering=1)
def event(name, **kw):
    if events:
        events.write(json.dumps({"event": name, "t_ns": time.monotonic_ns(), **kw}) + "\\n")
def on_term(sig, frame):
    event("exit", status=244, reason="signal", message=f"Exiting on signal {sig}")
    sys.stderr.write(f"edge-tender: Exiting on signal {sig}\\n")
    os._exit(244)
signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore-term" in args else on_term)
event("started")
sys.stdout.write("opts " + " ".join(opts) + "\\n")
for a in args:
    if a.startswith("print="):
        for i in range(int(a[6:])):
            sys.stdout.write(f"line {i}\\n")
    if a == "garbage-event" and events:
        events.write("not json\\n")
    if a == "forever":
        sys.stdout.write("READY\\n")
        sys.stdout.flush()
        while True:
            time.sleep(1)
    if a.startswith("exit="):
        status = int(a[5:])
        sys.stdout.flush()
        if status >= 240 and status != 255:
            event("exit", status=status, reason="abi", message="guest pointer out of range")
            sys.stderr.write("edge-tender: guest pointer out of range\\n")
        else:
            event("exit", status=status, reason="halt")
        os._exit(status)
sys.stdout.flush()
event("exit", status=0, reason="halt")
"""

FAKE_QEMU = """\
import sys
argv = sys.argv[1:]
append = argv[argv.index("-append") + 1] if "-append" in argv else ""
sys.stdout.write("argv " + " ".join(argv) + "\\n")
for a in append.split():
    if a == "fail":
        sys.stderr.write("qemu: could not load kernel\\n")
        sys.exit(1)
    if a.startswith("exit="):
        sys.stdout.flush()
        sys.exit((int(a[5:]) << 1) | 1)
sys.exit(0)
"""


class Console:
    """A console sink that remembers output and signals when READY was printed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ready = trio.Event()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        if b"READY" in self.data:
            self.ready.set()


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "guest.img"
    path.write_bytes(b"\0" * 64)
    return str(path)


@pytest.fixture
def tender(tmp_path: Path) -> RunnerTools:
    return RunnerTools(tender=_script(tmp_path / "fake-tender", FAKE_TENDER), stop_grace=0.5)


def hvt(image: str, *args: str) -> VmSpec:
    return VmSpec(image=image, kind="hvt", mem_mb=4, args=args)


async def test_console_streams_in_order_and_events_arrive(image: str, tender: RunnerTools) -> None:
    chunks: list[bytes] = []
    with trio.fail_after(20):
        result = await run_vm(
            hvt(image, "print=100"), console_sink=chunks.append, tools=tender, kvm=True
        )
    console = b"".join(chunks).decode()
    assert console.splitlines()[1:] == [f"line {i}" for i in range(100)]
    assert "--mem=4" in console
    assert "--events-fd=" in console
    assert [e.event for e in result.events] == ["started", "exit"]
    assert (result.exit_status, result.reason, result.guest_status) == (0, "halt", 0)
    assert result.ok
    assert result.first_output_s is not None
    assert result.console_tail.endswith("line 99\n")


async def test_guest_status_is_returned(image: str, tender: RunnerTools) -> None:
    with trio.fail_after(20):
        result = await run_vm(
            hvt(image, "exit=42"), console_sink=lambda _b: None, tools=tender, kvm=True
        )
    assert (result.exit_status, result.guest_status, result.reason) == (42, 42, "halt")


async def test_tender_abi_violation_carries_the_tender_message(
    image: str, tender: RunnerTools
) -> None:
    stderr: list[bytes] = []
    with trio.fail_after(20):
        result = await run_vm(
            hvt(image, "garbage-event", "exit=242"),
            console_sink=lambda _b: None,
            stderr_sink=stderr.append,
            tools=tender,
            kvm=True,
        )
    assert (result.exit_status, result.guest_status, result.reason) == (242, None, "abi")
    assert "guest pointer out of range" in result.message
    assert b"edge-tender: guest pointer out of range" in b"".join(stderr)
    assert "guest pointer out of range" in result.stderr_tail


async def test_stop_sends_sigterm_and_returns_a_signal_result(
    image: str, tender: RunnerTools
) -> None:
    console = Console()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            results = []

            async def run(*, task_status: trio.TaskStatus[RunningVm]) -> None:
                results.append(
                    await run_vm(
                        hvt(image, "forever"),
                        console_sink=console,
                        tools=tender,
                        kvm=True,
                        task_status=task_status,
                    )
                )

            vm = await nursery.start(run)
            await console.ready.wait()
            vm.stop()
    (result,) = results
    assert (result.process_status, result.reason, result.exit_status) == (244, "signal", 244)
    assert "signal 15" in result.message


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
    image: str, tender: RunnerTools
) -> None:
    console = Console()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            results = []

            async def run(*, task_status: trio.TaskStatus[RunningVm]) -> None:
                results.append(
                    await run_vm(
                        hvt(image, "ignore-term", "forever"),
                        console_sink=console,
                        tools=tender,
                        kvm=True,
                        task_status=task_status,
                    )
                )

            vm = await nursery.start(run)
            await console.ready.wait()
            vm.stop()
    (result,) = results
    assert result.process_status == -signal.SIGKILL
    assert (result.reason, result.exit_status) == ("signal", 244)


async def test_cancelling_run_vm_reaps_the_process(image: str, tender: RunnerTools) -> None:
    console = Console()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            vm: RunningVm = await nursery.start(
                lambda task_status: run_vm(
                    hvt(image, "forever"),
                    console_sink=console,
                    tools=tender,
                    kvm=True,
                    task_status=task_status,
                )
            )
            await console.ready.wait()
            nursery.cancel_scope.cancel(reason="test: stop the VM")
    assert vm.process.returncode == 244


async def test_prefix_keeps_the_events_fd(image: str, tender: RunnerTools) -> None:
    tools = RunnerTools(tender=tender.tender, prefix=("env", "FOO=1"))
    with trio.fail_after(20):
        result = await run_vm(hvt(image), console_sink=lambda _b: None, tools=tools, kvm=True)
    assert [e.event for e in result.events] == ["started", "exit"]


async def test_no_fd_leaks_across_runs(image: str, tender: RunnerTools) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        await run_vm(hvt(image), console_sink=lambda _b: None, tools=tender, kvm=True)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_missing_image_is_named(tmp_path: Path, tender: RunnerTools) -> None:
    with pytest.raises(VmError, match=r"image .*nope\.hvt: no such file"):
        await run_vm(
            hvt(str(tmp_path / "nope.hvt")), console_sink=lambda _b: None, tools=tender, kvm=True
        )


async def test_tender_that_is_not_executable_is_named(image: str, tmp_path: Path) -> None:
    path = tmp_path / "edge-tender"
    path.write_text("")
    with pytest.raises(VmError, match="not an executable file"):
        await run_vm(
            hvt(image), console_sink=lambda _b: None, tools=RunnerTools(tender=str(path)), kvm=True
        )


async def test_tender_that_cannot_be_spawned_is_a_vm_error(image: str, tmp_path: Path) -> None:
    path = tmp_path / "edge-tender"
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(0o755)
    with pytest.raises(VmError, match="cannot run"):
        await run_vm(
            hvt(image), console_sink=lambda _b: None, tools=RunnerTools(tender=str(path)), kvm=True
        )


def test_find_tender_prefers_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _script(tmp_path / "t", "")
    monkeypatch.setenv("EDGEAGENT_TENDER", path)
    assert find_tender() == path
    monkeypatch.setenv("EDGEAGENT_TENDER", str(tmp_path / "missing"))
    with pytest.raises(VmError, match="EDGEAGENT_TENDER"):
        find_tender()


async def test_hvt_without_kvm_fails_before_starting(image: str, tender: RunnerTools) -> None:
    with pytest.raises(KvmUnavailableError):
        await run_vm(hvt(image), console_sink=lambda _b: None, tools=tender, kvm=False)


async def test_hvt_under_tcg_is_refused(image: str, tender: RunnerTools) -> None:
    spec = VmSpec(image=image, kind="hvt", accel="tcg")
    with pytest.raises(ConfigError):
        await run_vm(spec, console_sink=lambda _b: None, tools=tender, kvm=True)


# QEMU path, with a fake QEMU.


@pytest.fixture
def qemu(tmp_path: Path) -> RunnerTools:
    return RunnerTools(qemu=_script(tmp_path / "fake-qemu", FAKE_QEMU))


async def test_qemu_debug_exit_code_maps_back(image: str, qemu: RunnerTools) -> None:
    chunks: list[bytes] = []
    spec = VmSpec(image=image, kind="multiboot", args=("exit=3",), accel="tcg")
    with trio.fail_after(20):
        result = await run_vm(spec, console_sink=chunks.append, tools=qemu, kvm=False)
    assert (result.process_status, result.guest_status, result.exit_status) == (7, 3, 3)
    assert "-accel tcg -cpu max" in b"".join(chunks).decode()
    assert result.events == ()


async def test_qemu_guest_status_0(image: str, qemu: RunnerTools) -> None:
    spec = VmSpec(image=image, kind="pvh", args=("exit=0",))
    result = await run_vm(spec, console_sink=lambda _b: None, tools=qemu, kvm=True)
    assert (result.process_status, result.guest_status, result.ok) == (1, 0, True)


async def test_qemu_start_failure_is_not_guest_success(image: str, qemu: RunnerTools) -> None:
    spec = VmSpec(image=image, kind="linux", args=("fail",))
    result = await run_vm(spec, console_sink=lambda _b: None, tools=qemu, kvm=True)
    assert (result.guest_status, result.reason, result.exit_status) == (None, "setup", 241)
    assert "could not load kernel" in result.message


async def test_missing_qemu_is_named(image: str) -> None:
    spec = VmSpec(image=image, kind="linux")
    with pytest.raises(VmError, match="qemu-nope not found"):
        await run_vm(
            spec, console_sink=lambda _b: None, tools=RunnerTools(qemu="qemu-nope"), kvm=True
        )

"""Run one VM as a child process and report how it ended (trio shell).

`run_vm(spec, console_sink=...)` starts edge-tender (hvt images) or QEMU (multiboot,
Linux, PVH kernels), streams the guest console to ``console_sink``, reads the
tender's JSON-lines events from a pipe passed as ``--events-fd``, waits for the
process to exit and returns a `VmResult` (exit status decoded as in
`edgeagent.vmm.spec`, the events, the time to first console byte, the console tail).

Stopping (ADR 0005, house style 4.3): a VM is stopped with SIGTERM, then SIGKILL
after ``RunnerTools.stop_grace`` seconds if it is still there; every step is
logged. Two ways lead there:

- cancelling the task that runs `run_vm` (the process is always reaped before
  `Cancelled` propagates), or
- `RunningVm.stop()`, after which `run_vm` returns a `VmResult` with reason
  "signal" (what a supervisor wants when it stops a VM on purpose).

What this module does not do: it makes no decisions of its own (argv, accelerator
and exit decoding live in the pure modules `spec` and `events`), restarts nothing
(the supervisor's job) and parses no console markers (`health`). It does not
recognise image formats either; the caller passes a spec with the kind set.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeagent.errors import VmError
from edgeagent.vmm.events import (
    EventFramer,
    TailBuffer,
    TenderEvent,
    VmResult,
    decide_result,
)
from edgeagent.vmm.spec import VmSpec, qemu_argv, resolve_accel, tender_argv

log = logging.getLogger(__name__)

ConsoleSink = Callable[[bytes], None]

#: Seconds between SIGTERM and SIGKILL when a VM is stopped.
DEFAULT_STOP_GRACE = 5.0
#: Seconds the output pumps may keep reading after the runner process is reaped.
DRAIN_GRACE = 2.0
TENDER_ENV = "EDGEAGENT_TENDER"
TENDER_NAME = "edge-tender"
QEMU_NAME = "qemu-system-x86_64"
_READ_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class RunnerTools:
    """Where the runners are and how to launch them.

    Attributes:
        tender: path of edge-tender; None means `find_tender()`.
        qemu: path or name of qemu-system-x86_64.
        prefix: argv prepended to the runner's, e.g. ``("ip", "netns", "exec", "ns1")``;
            the prefix must exec the runner (so signals reach it) and keep inherited fds.
        stop_grace: seconds between SIGTERM and SIGKILL.
    """

    tender: str | None = None
    qemu: str = QEMU_NAME
    prefix: tuple[str, ...] = ()
    stop_grace: float = DEFAULT_STOP_GRACE


def repo_tender_path() -> Path:
    """The tender built in this checkout: <repo>/host-os/tender/edge-tender."""
    return Path(__file__).resolve().parents[2] / "host-os" / "tender" / TENDER_NAME


def find_tender(explicit: str | None = None) -> str:
    """Locate edge-tender.

    Order: ``explicit`` (``--tender``), ``$EDGEAGENT_TENDER``, the checkout's
    host-os/tender/edge-tender, then ``edge-tender`` on PATH.

    Raises:
        VmError: none of them is an executable file.
    """
    if explicit is not None:
        if not os.access(explicit, os.X_OK) or not os.path.isfile(explicit):
            raise VmError(f"tender {explicit}: not an executable file")
        return explicit
    from_env = os.environ.get(TENDER_ENV)
    if from_env:
        if not os.access(from_env, os.X_OK) or not os.path.isfile(from_env):
            raise VmError(f"${TENDER_ENV}={from_env}: not an executable file")
        return from_env
    in_repo = repo_tender_path()
    if os.access(in_repo, os.X_OK) and in_repo.is_file():
        return str(in_repo)
    on_path = shutil.which(TENDER_NAME)
    if on_path:
        return on_path
    raise VmError(
        f"edge-tender not found (looked at ${TENDER_ENV}, {in_repo} and PATH): "
        "run `make tender`, or pass --tender PATH"
    )


def kvm_usable() -> bool:
    """Whether /dev/kvm exists and is read-write for us."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


class RunningVm:
    """A started VM, handed to the caller through ``task_status.started``.

    Attributes:
        argv: the command line that was run (prefix included).
        process: the trio `Process` (``pid``, ``returncode``).
    """

    def __init__(self, argv: list[str], process: trio.Process, stop_event: trio.Event) -> None:
        self.argv = argv
        self.process = process
        self._stop_event = stop_event

    @property
    def pid(self) -> int:
        """The runner process id."""
        return self.process.pid

    def stop(self) -> None:
        """Ask the VM to stop: SIGTERM, then SIGKILL after the grace period.

        Returns at once; `run_vm` then returns a result with reason "signal".
        """
        self._stop_event.set()


class _Stopper:
    """Term-then-kill escalation; remembers the last signal it sent."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.signal_sent: int | None = None

    async def term_then_kill(self, proc: trio.Process) -> None:
        """Send SIGTERM, wait ``grace`` seconds, then SIGKILL (trio's deliver_cancel shape)."""
        log.info("stopping pid %d with SIGTERM (SIGKILL in %.1f s)", proc.pid, self.grace)
        self._send(proc, signal.SIGTERM)
        await trio.sleep(self.grace)
        log.warning("pid %d ignored SIGTERM for %.1f s; sending SIGKILL", proc.pid, self.grace)
        self._send(proc, signal.SIGKILL)

    def _send(self, proc: trio.Process, sig: signal.Signals) -> None:
        if proc.returncode is not None:
            return
        self.signal_sent = int(sig)
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            log.debug("pid %d already gone before %s", proc.pid, sig.name)


def _launch_argv(
    spec: VmSpec, tools: RunnerTools, kvm: bool | None, events_fd: int | None
) -> list[str]:
    """Check the image and the runner exist, then build the full argv (blocking, quick)."""
    if not os.path.isfile(spec.image):
        raise VmError(f"image {spec.image}: no such file")
    kvm = kvm_usable() if kvm is None else kvm
    accel = resolve_accel(spec.accel, kind=spec.kind, kvm_usable=kvm)
    if spec.runner == "tender":
        tender = find_tender(tools.tender)
        return [*tools.prefix, *tender_argv(spec, tender=tender, events_fd=events_fd)]
    qemu = shutil.which(tools.qemu)
    if qemu is None:
        raise VmError(f"{tools.qemu} not found: install qemu-system-x86 or pass --qemu PATH")
    return [*tools.prefix, *qemu_argv(spec, qemu=qemu, accel=accel)]


def check_runnable(spec: VmSpec, tools: RunnerTools | None = None, kvm: bool | None = None) -> None:
    """Raise now what `run_vm` would raise before starting anything.

    Useful outside a nursery, where the error is not wrapped in an exception group.

    Raises:
        VmError: the image or the runner is missing.
        KvmUnavailableError: KVM is needed but not usable.
        ConfigError: the spec cannot be run.
    """
    _launch_argv(spec, tools or RunnerTools(), kvm, None)


class _EventsPipe:
    """The events pipe: the read end is ours, the write end goes to the tender.

    Each end is closed exactly once, so a recycled fd number is never closed by mistake.
    """

    def __init__(self) -> None:
        self.read_fd: int | None
        self.write_fd: int | None
        self.read_fd, self.write_fd = os.pipe()

    def take_read(self) -> int:
        """Hand the read end over (to an `FdStream`, which closes it)."""
        assert self.read_fd is not None
        fd, self.read_fd = self.read_fd, None
        return fd

    def close_write(self) -> None:
        """Close our copy of the write end (after the child inherited it)."""
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def close(self) -> None:
        """Close whatever is still ours."""
        self.close_write()
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None


async def run_vm(
    spec: VmSpec,
    *,
    console_sink: ConsoleSink,
    stderr_sink: ConsoleSink | None = None,
    tools: RunnerTools | None = None,
    kvm: bool | None = None,
    task_status: trio.TaskStatus[RunningVm] = trio.TASK_STATUS_IGNORED,
) -> VmResult:
    """Boot ``spec`` and wait until the VM ends.

    Args:
        spec: what to boot.
        console_sink: called with each chunk of console output, in order.
        stderr_sink: called with each chunk the runner writes on stderr (its own
            messages); None keeps them only in the result's ``stderr_tail``.
        tools: runner locations and stop grace; defaults to `RunnerTools()`.
        kvm: whether /dev/kvm is usable; None probes it.
        task_status: receives a `RunningVm` once the process is running.

    Returns:
        How the VM ended. A guest failure is a result, not an exception.

    Raises:
        VmError: the image or the runner is missing or cannot be started.
        KvmUnavailableError: KVM is needed but not usable.
        ConfigError: the spec cannot be run (e.g. ``--accel tcg`` for hvt).
    """
    tools = tools or RunnerTools()
    pipe = _EventsPipe() if spec.runner == "tender" else None
    try:
        argv = _launch_argv(spec, tools, kvm, None if pipe is None else pipe.write_fd)
        log.info("starting VM: %s", " ".join(argv))
        return await _run(argv, spec, tools, pipe, console_sink, stderr_sink, task_status)
    finally:
        if pipe is not None:
            pipe.close()


async def _run(
    argv: list[str],
    spec: VmSpec,
    tools: RunnerTools,
    pipe: _EventsPipe | None,
    console_sink: ConsoleSink,
    stderr_sink: ConsoleSink | None,
    task_status: trio.TaskStatus[RunningVm],
) -> VmResult:
    stopper = _Stopper(tools.stop_grace)
    stop_event = trio.Event()
    console_tail = TailBuffer()
    stderr_tail = TailBuffer()
    framer = EventFramer()
    events: list[TenderEvent] = []
    first_output: list[float] = []
    process: trio.Process | None = None
    spawn_error: OSError | None = None
    started_at = trio.current_time()

    # The pumps drain their pipe until EOF even when run_vm is cancelled: a tender
    # that is being stopped still writes its last events and console lines, and a
    # closed pipe would kill it with SIGPIPE instead. Their scopes are shielded and
    # get a deadline once the process is gone (a grandchild could hold the pipe).
    console_scope = trio.CancelScope(shield=True)
    stderr_scope = trio.CancelScope(shield=True)
    events_scope = trio.CancelScope(shield=True)

    async def pump_console(stream: trio.abc.ReceiveStream) -> None:
        with console_scope:
            while chunk := await stream.receive_some(_READ_CHUNK):
                if not first_output:
                    first_output.append(trio.current_time() - started_at)
                console_tail.feed(bytes(chunk))
                console_sink(bytes(chunk))

    async def pump_stderr(stream: trio.abc.ReceiveStream) -> None:
        with stderr_scope:
            while chunk := await stream.receive_some(_READ_CHUNK):
                stderr_tail.feed(bytes(chunk))
                if stderr_sink is not None:
                    stderr_sink(bytes(chunk))

    async def pump_events(fd: int) -> None:
        with events_scope:
            async with trio.lowlevel.FdStream(fd) as stream:
                while chunk := await stream.receive_some(_READ_CHUNK):
                    for event in framer.feed(chunk):
                        log.debug("tender event: %s", dict(event.fields))
                        events.append(event)

    async def run_child(*, task_status: trio.TaskStatus[trio.Process]) -> None:
        try:
            await trio.run_process(
                argv,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=() if pipe is None or pipe.write_fd is None else (pipe.write_fd,),
                deliver_cancel=stopper.term_then_kill,
                task_status=task_status,
            )
        finally:
            # run_process returns (or raises Cancelled) only once the child is reaped.
            deadline = trio.current_time() + DRAIN_GRACE
            for scope in (console_scope, stderr_scope, events_scope):
                scope.deadline = min(scope.deadline, deadline)

    async def stop_on_request(
        proc: trio.Process, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await stop_event.wait()
            await stopper.term_then_kill(proc)

    async with trio.open_nursery() as nursery:
        try:
            process = await nursery.start(run_child)
        except OSError as exc:
            spawn_error = exc
        if process is not None:
            if pipe is not None:
                pipe.close_write()  # The child holds it now; EOF comes when it exits.
                nursery.start_soon(pump_events, pipe.take_read())
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(pump_console, process.stdout)
            nursery.start_soon(pump_stderr, process.stderr)
            stop_scope = await nursery.start(stop_on_request, process)
            task_status.started(RunningVm(argv, process, stop_event))
            await process.wait()
            stop_scope.cancel(reason="vm exited")

    if process is None:
        raise VmError(f"cannot run {argv[0]}: {spawn_error}") from spawn_error
    assert process.returncode is not None
    result = decide_result(
        runner=spec.runner,
        process_status=process.returncode,
        events=tuple(events),
        stopped_by_signal=stopper.signal_sent,
        first_output_s=first_output[0] if first_output else None,
        console_tail=console_tail.text(),
        stderr_tail=stderr_tail.text(),
    )
    if framer.dropped:
        log.warning("%d malformed event lines from the tender were dropped", framer.dropped)
    log.info(
        "VM %s ended: %s (exit status %d, reason %s)",
        spec.image,
        result.message,
        result.exit_status,
        result.reason,
    )
    return result

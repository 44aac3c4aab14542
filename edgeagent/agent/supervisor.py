"""Supervision of workloads (trio shell): one `Instance` per boot, one supervisor per workload.

What it does:

- `Instance` boots one version of one workload with `edgeagent.vmm.runner.run_vm` (or, for
  kind "xen", `edgeagent.vmm.xen_runner.run_domain`, ADR 0012) in the agent's guests nursery,
  feeds its console into the workload's `ConsoleLog`, counts heartbeat lines
  (``^HEARTBEAT seq=N uptime_ms=M$``, image-recipes/README.md) and records how it ended.
  Stopping is the runner's: SIGTERM, a grace period, SIGKILL (xen: xl shutdown, a grace
  period, xl destroy), each step logged.
- `WorkloadSupervisor` runs the restart loop of one workload: start an instance (or adopt the
  candidate an OTA update just committed), watch its heartbeat deadline, and after it ends ask
  the pure `edgeagent.agent.policy.RestartPolicy` when to start it again.

Block devices are files in the state folder (`edgeagent.agent.state.volume_path`); the core
guarantees that at most one instance holding them runs at a time (ADR 0007 §3).

What it does not do: no decisions of its own (policy.py and ota.py decide), no registry access,
no persistence (the core persists through callbacks).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeagent.agent.desired import Workload
from edgeagent.agent.policy import RestartPolicy, RestartSettings
from edgeagent.agent.state import ConsoleLog, LineFramer, ensure_volume
from edgeagent.errors import EdgeAgentError, ImageFormatError, VmError
from edgeagent.vmm.events import VmResult
from edgeagent.vmm.imageformat import recognise
from edgeagent.vmm.runner import RunnerTools, RunningVm, run_vm
from edgeagent.vmm.spec import Accel, VmSpec
from edgeagent.vmm.xen import XenSpec, domain_name
from edgeagent.vmm.xen_runner import RunningDomain, XenTools, run_domain

log = logging.getLogger(__name__)

HEARTBEAT_RE = re.compile(r"^HEARTBEAT seq=(\d+) uptime_ms=(\d+)$")
#: Extra seconds, beyond the stop grace, that a stop may take before we stop waiting for it.
STOP_SLACK_S = 3.0
#: The same for a Xen domain: xl shutdown, list and destroy each take a second or more in dom0.
XEN_STOP_SLACK_S = 15.0


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every instance needs: runner tools, the state folder, the accelerator.

    ``xen`` is set when the device runs Xen (``runner.hypervisor = "xen"``): xen workloads
    run as domains with those settings.
    """

    tools: RunnerTools
    state_dir: Path
    accel: Accel = "auto"
    kvm: bool | None = None
    xen: XenTools | None = None


class _StartStatus:
    """A `trio.TaskStatus` stand-in: the instance reports "started" even when boot failed."""

    def __init__(self, inner: trio.TaskStatus[None], instance: Instance) -> None:
        self._inner = inner
        self._instance = instance
        self.reported = False

    def started(self, value: RunningVm | RunningDomain | None = None) -> None:
        if value is not None:
            self._instance._on_started(value)
        if not self.reported:
            self.reported = True
            self._inner.started()


def build_xen_spec(workload: Workload, image: Path, runtime: Runtime) -> XenSpec:
    """The `XenSpec` for one boot of a xen workload (blocking: reads the image).

    Raises:
        VmError: the device does not run Xen.
        ImageFormatError: the image is not a PVH kernel (before anything is asked of xl).
        ConfigError: the workload cannot be a domain (name, arguments).
    """
    xen = runtime.xen
    if xen is None:
        raise VmError(
            f"target {workload.name} v{workload.version}: kind xen needs a Xen dom0 "
            '(runner.hypervisor = "xen" in the agent config)'
        )
    info = recognise(str(image), image.read_bytes())
    if info.kind != "pvh":
        raise ImageFormatError(
            f"target {workload.name} v{workload.version}: custom kind is xen but the image is "
            f"{info.kind} ({info.detail}); expected a PVH kernel (ELF with a Xen PVH entry note)"
        )
    if workload.blocks or workload.nets:
        raise VmError(
            f"target {workload.name} v{workload.version}: xen workloads cannot have block or "
            "net devices (no PV front-ends yet)"
        )
    return XenSpec(
        name=domain_name(xen.prefix, workload.name, workload.key),
        kernel=str(image.resolve()),
        mem_mb=workload.mem_mb,
        vcpus=xen.vcpus,
        args=workload.args,
        tsc_mode=xen.tsc_mode,
    )


def build_spec(workload: Workload, image: Path, runtime: Runtime) -> VmSpec:
    """The `VmSpec` for one boot (blocking: reads the image, creates volume files).

    Raises:
        ImageFormatError: the image is not of the kind its target says.
        StoreError: a volume file cannot be created.
    """
    if workload.kind == "xen":
        raise ImageFormatError(
            f"target {workload.name} v{workload.version}: kind xen runs under xl, not QEMU"
        )
    info = recognise(str(image), image.read_bytes())
    if (workload.kind == "hvt") != (info.kind == "hvt"):
        raise ImageFormatError(
            f"target {workload.name} v{workload.version}: custom kind is {workload.kind} but "
            f"the image is {info.kind}"
        )
    blocks = tuple(
        (dev, str(ensure_volume(runtime.state_dir, workload.name, dev))) for dev in workload.blocks
    )
    return VmSpec(
        image=str(image),
        kind=info.kind,
        mem_mb=workload.mem_mb,
        blocks=blocks,
        args=workload.args,
        accel=runtime.accel,
    )


class Instance:
    """One boot of one workload version (see the module docstring).

    Attributes:
        workload, image: what runs.
        started_at: trio time of the boot (set when started).
        heartbeats, last_heartbeat, last_heartbeat_wall: heartbeat lines seen.
        result: how the VM ended (None while running or when it could not start).
        error: why it could not start.
        stopping: the agent asked it to stop.
    """

    def __init__(
        self,
        workload: Workload,
        image: Path,
        console: ConsoleLog,
        runtime: Runtime,
        on_pid: Callable[[Instance], None] | None = None,
    ) -> None:
        self.workload = workload
        self.image = image
        self.console = console
        self.runtime = runtime
        self.on_pid = on_pid
        self.vm: RunningVm | RunningDomain | None = None
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        self.heartbeats = 0
        self.last_heartbeat: float | None = None
        self.last_heartbeat_wall: float | None = None
        self.result: VmResult | None = None
        self.error: Exception | None = None
        self.stopping = False
        self.done = trio.Event()
        self._changed = trio.Event()
        self._framer = LineFramer()

    @property
    def pid(self) -> int | None:
        """The runner's pid while it runs."""
        return None if self.vm is None or self.done.is_set() else self.vm.pid

    def _on_started(self, vm: RunningVm | RunningDomain) -> None:
        self.vm = vm
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        if self.stopping:
            vm.stop()
        if self.on_pid is not None:
            self.on_pid(self)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
        """Wait for the next heartbeat or the end of the run."""
        if not self.done.is_set():
            await self._changed.wait()

    def _sink(self, chunk: bytes) -> None:
        beat = False
        lines = self._framer.feed(chunk)
        self.console.add(lines)
        for line in lines:
            if HEARTBEAT_RE.match(line):
                beat = True
        if beat:
            self.heartbeats += 1
            self.last_heartbeat = trio.current_time()
            self.last_heartbeat_wall = time.time()
            self._poke()

    def stop(self) -> None:
        """Ask the VM to stop (SIGTERM, grace, SIGKILL). Returns at once."""
        self.stopping = True
        if self.vm is not None:
            self.vm.stop()

    async def stop_and_wait(self) -> None:
        """Stop the VM and wait until it is gone (time-bounded, shielded)."""
        self.stop()
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(
                self.runtime.tools.stop_grace
                + (XEN_STOP_SLACK_S if self.workload.kind == "xen" else STOP_SLACK_S)
            ),
        ):
            await self.done.wait()
        if not self.done.is_set():
            log.error("%s: instance did not end after stop", self.workload.name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Boot and wait until the VM ends; calls ``task_status.started()`` in every case."""
        status = _StartStatus(task_status, self)
        w = self.workload
        try:
            if w.kind == "xen":
                xspec = await trio.to_thread.run_sync(build_xen_spec, w, self.image, self.runtime)
                assert self.runtime.xen is not None
                self.console.mark(f"starting {w.name} v{w.version} (xen domain {xspec.name})")
                self.result = await run_domain(
                    xspec,
                    key=w.key,
                    console_sink=self._sink,
                    tools=self.runtime.xen,
                    task_status=status,
                )
            else:
                spec = await trio.to_thread.run_sync(build_spec, w, self.image, self.runtime)
                self.console.mark(f"starting {w.name} v{w.version}")
                self.result = await run_vm(
                    spec,
                    console_sink=self._sink,
                    tools=self.runtime.tools,
                    kvm=self.runtime.kvm,
                    task_status=status,
                )
            self.console.mark(f"{w.name} v{w.version} ended: {self.result.message}")
        except (EdgeAgentError, OSError) as exc:
            # VmError, KvmUnavailableError, ConfigError (a spec that cannot run), StoreError.
            self.error = exc
            self.console.mark(f"{w.name} v{w.version} could not start: {exc}")
            log.error("workload %s v%s could not start: %s", w.name, w.version, exc)
        finally:
            self.done.set()
            self._poke()
            status.started()

    @property
    def exit_ok(self) -> bool | None:
        """None while running; whether the guest exited by itself with status 0."""
        if not self.done.is_set():
            return None
        return self.result is not None and self.result.ok and not self.stopping

    @property
    def end_message(self) -> str:
        """How the run ended, for humans."""
        if self.error is not None:
            return f"could not start: {self.error}"
        if self.result is not None:
            return self.result.message
        return "running"


class WorkloadSupervisor:
    """The restart loop of one workload version (see the module docstring).

    Args:
        workload: the version to run.
        image: its verified blob.
        console: the workload's console log.
        runtime: runner settings.
        settings: restart policy knobs.
        guests: the nursery instances run in.
        on_change: called (sync) when the set of running pids changes (for persistence).
    """

    def __init__(
        self,
        workload: Workload,
        image: Path,
        console: ConsoleLog,
        runtime: Runtime,
        settings: RestartSettings,
        guests: trio.Nursery,
        on_change: Callable[[], None],
    ) -> None:
        self.workload = workload
        self.image = image
        self.console = console
        self.runtime = runtime
        self.policy = RestartPolicy(settings)
        self.guests = guests
        self.on_change = on_change
        self.instance: Instance | None = None
        self.last_exit_status: int | None = None
        self.last_heartbeat_wall: float | None = None
        self.started_wall: float | None = None
        self._scope = trio.CancelScope()
        self._wake = trio.Event()
        self._restart_requested = False
        self.finished = trio.Event()

    def new_instance(self) -> Instance:
        """An instance of this supervisor's workload (not started)."""
        return Instance(
            self.workload, self.image, self.console, self.runtime, lambda _i: self.on_change()
        )

    async def run(
        self,
        adopt: Instance | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Supervise until `stop` (or cancellation). ``adopt``: an instance already running."""
        try:
            with self._scope:
                task_status.started()
                inst = adopt
                while True:
                    if inst is None:
                        await self._wait_until_due()
                        inst = self.new_instance()
                        self.instance = inst
                        await self.guests.start(inst.run)
                    self.instance = inst
                    await self._watch(inst)
                    inst = None
        finally:
            self.finished.set()

    async def _wait_until_due(self) -> None:
        while True:
            p = self.policy
            if self._restart_requested:
                self._restart_requested = False
                p.restart()
                return
            if p.state == "idle":
                return
            at = p.next_start_at
            if at is not None and trio.current_time() >= at:
                return
            with trio.move_on_at(math.inf if at is None else at):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _watch(self, inst: Instance) -> None:
        p = self.policy
        p.booted(inst.started_at)
        self.started_wall = inst.started_wall
        seen = 0
        while True:
            if inst.heartbeats > seen:
                seen = inst.heartbeats
                assert inst.last_heartbeat is not None
                p.heartbeat(inst.last_heartbeat)
                self.last_heartbeat_wall = inst.last_heartbeat_wall
            if inst.done.is_set():
                break
            if p.check(trio.current_time()):
                log.warning("workload %s: %s; stopping it", self.workload.name, p.reason)
                self.console.mark(f"unhealthy: {p.reason}")
                inst.stop()
            due = p.deadline()
            with trio.move_on_at(math.inf if due is None else due):
                await inst.wait_change()
        self.on_change()
        if inst.result is not None:
            self.last_exit_status = inst.result.exit_status
        when = p.exited(
            trio.current_time(),
            ok=bool(inst.exit_ok),
            stopped_by_agent=inst.stopping,
            message=inst.end_message,
        )
        if when is not None:
            log.info(
                "workload %s: %s; restart in %.1f s (%s)",
                self.workload.name,
                inst.end_message,
                when - trio.current_time(),
                p.state,
            )

    def request_restart(self) -> None:
        """Restart now: stop the running instance (if any) and start a new one."""
        self._restart_requested = True
        if self.instance is not None and not self.instance.done.is_set():
            self.instance.stop()
        self._wake.set()

    async def stop(self) -> None:
        """Stop supervising and stop the running instance (time-bounded)."""
        self._scope.cancel(reason=f"stop workload {self.workload.name}")
        inst = self.instance
        if inst is not None and not inst.done.is_set():
            await inst.stop_and_wait()
        self.policy.stopped()
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_SLACK_S):
            await self.finished.wait()

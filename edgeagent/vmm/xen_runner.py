"""Run a PVH image as a Xen domain with ``xl`` and follow it to its end (trio shell).

`run_domain(spec, key=..., console_sink=...)` is the xen counterpart of
`edgeagent.vmm.runner.run_vm` (ADR 0012): it writes the xl config to the runner's state folder
(atomically), runs ``xl create``, follows the domain with ``xl list -v`` every
``XenTools.poll_interval_s``, streams the guest console from xenconsoled's log
(``<console_dir>/guest-<name>.log``) into ``console_sink``, and returns a `VmResult` built by
the pure core `edgeagent.vmm.xen` from the shutdown reason and the status the guest printed.

Stopping has the same two ways in as `run_vm`: cancelling the task, or `RunningDomain.stop()`
(then `run_domain` returns a result with reason "signal"). Either way: ``xl shutdown DOMID``,
then ``xl destroy DOMID`` after ``stop_grace`` seconds if the domain is still running; every
step is logged. A domain that ended by itself stays (``on_* = "preserve"``) until the runner
has read its shutdown reason, then it is destroyed.

Ownership (ADR 0012 §1): before ``xl create`` the runner records the domain's name, the uuid it
wrote into the config and the version key in ``<state>/domains.json``. Only a live domain whose
name *and* uuid match a record is ever adopted, shut down or destroyed, and destructive commands
name the domain by the id the runner verified. `cleanup_domains` applies the adoption rules at
agent start.

What this module does not do: no decisions of its own (config text, parsing, end mapping and
adoption are `edgeagent.vmm.xen`), no restarts (the supervisor), no console markers (the
supervisor reads heartbeats from the sink). It does not start xenconsoled or xenstored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeagent.errors import ConfigError, VmError
from edgeagent.verify.clock import write_atomic
from edgeagent.vmm.events import TailBuffer, VmResult
from edgeagent.vmm.xen import (
    DEFAULT_PREFIX,
    DEFAULT_TSC_MODE,
    DomainRecord,
    DomainRow,
    XenSpec,
    decide_cleanup,
    decide_start,
    describe_domain_end,
    domain_result,
    find_row,
    foreign_domains,
    guest_exit_status,
    parse_domid,
    parse_list,
    parse_records,
    plan_console_read,
    render_config,
    render_records,
)

log = logging.getLogger(__name__)

ConsoleSink = Callable[[bytes], None]

DEFAULT_XL = "xl"
DEFAULT_CONSOLE_DIR = "/var/log/xen"
RECORDS_FILE = "domains.json"
#: Seconds between reads of the guest log.
CONSOLE_POLL_S = 0.25
#: Upper bound on one xl call (``xl create`` takes ~6 s under QEMU TCG; xen-notes.md).
XL_CALL_LIMIT_S = 120.0
#: Warn when the guest log has not appeared after this many seconds.
LOG_LATE_WARN_S = 20.0
#: Consecutive failed ``xl list`` polls tolerated while following a domain.
LIST_FAILURES_MAX = 3
#: After the domain ended, the log is read until it stops growing, for at most this long.
CONSOLE_DRAIN_S = 2.0
#: Seconds, beyond the stop grace, that the final cleanup of a domain may take (xl calls).
CLEANUP_SLACK_S = 20.0
#: Bytes of xl's stderr quoted in errors.
STDERR_TAIL = 600


@dataclass(frozen=True, slots=True)
class XenTools:
    """Where xl and the logs are, and how domains are run.

    Attributes:
        state_dir: the runner's folder: domain configs and ``domains.json`` (agent:
            ``<paths.state>/xen``).
        xl: path of xl, or a name looked up on PATH.
        console_dir: xenconsoled's ``--log-dir`` (guest logs ``guest-<name>.log``).
        tsc_mode: xl ``tsc_mode`` ("native" under QEMU TCG).
        vcpus: virtual CPUs per domain.
        prefix: domain name prefix.
        poll_interval_s: seconds between ``xl list -v`` polls of a running domain.
        stop_grace: seconds between ``xl shutdown`` and ``xl destroy``.
    """

    state_dir: Path
    xl: str = DEFAULT_XL
    console_dir: str = DEFAULT_CONSOLE_DIR
    tsc_mode: str = DEFAULT_TSC_MODE
    vcpus: int = 1
    prefix: str = DEFAULT_PREFIX
    poll_interval_s: float = 1.0
    stop_grace: float = 5.0

    def console_log(self, name: str) -> Path:
        """xenconsoled's log of domain ``name``."""
        return Path(self.console_dir) / f"guest-{name}.log"


def find_xl(tools: XenTools) -> str:
    """Locate xl.

    Raises:
        VmError: not found, or not an executable file.
    """
    if "/" in tools.xl:
        if os.path.isfile(tools.xl) and os.access(tools.xl, os.X_OK):
            return tools.xl
        raise VmError(f"xl {tools.xl}: not an executable file (xen.xl in the agent config)")
    found = shutil.which(tools.xl)
    if found is None:
        raise VmError(
            f"xl ({tools.xl!r}) not found on PATH: the xen runner needs the Xen tools in dom0 "
            "(set xen.xl in the agent config, or --xl)"
        )
    return found


def _tail(text: str, limit: int = STDERR_TAIL) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


async def run_xl(tools: XenTools, *args: str) -> str:
    """Run ``xl ARGS`` and return its stdout.

    Raises:
        VmError: xl is missing, cannot run, takes longer than `XL_CALL_LIMIT_S`, or exits
            non-zero (the message names the command, its exit status and its stderr tail).
    """
    xl = find_xl(tools)
    argv = [xl, *args]
    what = "xl " + " ".join(args)
    with trio.move_on_after(XL_CALL_LIMIT_S) as scope:
        try:
            proc = await trio.run_process(
                argv,
                check=False,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
            )
        except OSError as exc:
            raise VmError(f"cannot run `{what}`: {exc}") from exc
    if scope.cancelled_caught:
        raise VmError(f"`{what}` did not finish within {XL_CALL_LIMIT_S:g} s")
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise VmError(
            f"`{what}` failed with exit status {proc.returncode}: "
            f"{_tail(stderr) or '(no message on stderr)'}"
        )
    return proc.stdout.decode(errors="replace")


async def list_domains(tools: XenTools) -> list[DomainRow]:
    """``xl list -v``, parsed."""
    return parse_list(await run_xl(tools, "list", "-v"))


# Records ------------------------------------------------------------------------------------


def load_records(tools: XenTools) -> dict[str, DomainRecord]:
    """The domains this runner created (empty when none yet).

    Raises:
        VmError: the file is unreadable or malformed.
    """
    path = tools.state_dir / RECORDS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise VmError(f"{path}: cannot read the xen domain records: {exc}") from exc
    try:
        return parse_records(data, str(path))
    except ConfigError as exc:
        raise VmError(str(exc)) from exc


def _save_records(tools: XenTools, records: dict[str, DomainRecord]) -> None:
    path = tools.state_dir / RECORDS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, render_records(records))
    except OSError as exc:
        raise VmError(f"{path}: cannot write the xen domain records: {exc}") from exc


def _record(tools: XenTools, record: DomainRecord) -> None:
    records = load_records(tools)
    records[record.name] = record
    _save_records(tools, records)


def _forget(tools: XenTools, name: str, uuid_: str) -> None:
    records = load_records(tools)
    if name in records and records[name].uuid == uuid_:
        del records[name]
        _save_records(tools, records)


# Stopping ----------------------------------------------------------------------------------


async def _our_row(tools: XenTools, name: str, uuid_: str) -> DomainRow | None:
    """Our domain's row now (None once it is gone or the name is someone else's)."""
    row = find_row(await list_domains(tools), name)
    return row if row is not None and row.uuid == uuid_ else None


async def _destroy(tools: XenTools, name: str, uuid_: str, domid: int) -> None:
    """``xl destroy DOMID`` of our domain; no error when it is already gone."""
    log.info("xen domain %s (id %d): xl destroy", name, domid)
    try:
        await run_xl(tools, "destroy", str(domid))
    except VmError:
        if await _our_row(tools, name, uuid_) is not None:
            raise
        log.info("xen domain %s (id %d) was already gone", name, domid)


async def _stop(tools: XenTools, name: str, uuid_: str, domid: int) -> str:
    """Shut down, wait the grace period, destroy. Returns the step that ended it.

    ``xl shutdown`` itself waits (up to a minute) for a guest that announced PV control to
    acknowledge the request; it runs next to the grace period's polling and is abandoned
    (killed) when the grace period ends.
    """
    log.info(
        "stopping xen domain %s (id %d): xl shutdown, xl destroy in %.1f s",
        name,
        domid,
        tools.stop_grace,
    )
    ended = False

    async def request(cancel: trio.CancelScope) -> None:
        try:
            await run_xl(tools, "shutdown", str(domid))
        except VmError as exc:
            log.warning("xen domain %s: %s; destroying it now", name, exc)
            cancel.cancel(reason="xl shutdown failed")

    with trio.move_on_after(tools.stop_grace) as grace:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, grace)
            while True:
                await trio.sleep(min(tools.poll_interval_s, 0.5))
                try:
                    row = await _our_row(tools, name, uuid_)
                except VmError as exc:
                    log.warning("xen domain %s: while stopping it: %s", name, exc)
                    continue
                if row is None or not row.running:
                    ended = True
                    nursery.cancel_scope.cancel(reason="domain shut down")
                    break
    if not ended and grace.cancelled_caught and trio.current_time() >= grace.deadline:
        log.warning(
            "xen domain %s did not shut down within %.1f s; destroying it", name, tools.stop_grace
        )
    await _destroy(tools, name, uuid_, domid)
    return "xl shutdown" if ended else "xl destroy"


# Running -----------------------------------------------------------------------------------


class RunningDomain:
    """A started (or adopted) domain, handed out through ``task_status.started``.

    Attributes:
        name: the domain name.
        domid: its id.
        adopted: it was running already (agent restart) and is followed, not created.
    """

    pid: int | None = None  # No process of ours runs the guest.

    def __init__(self, name: str, domid: int, adopted: bool, stop_event: trio.Event) -> None:
        self.name = name
        self.domid = domid
        self.adopted = adopted
        self._stop_event = stop_event

    def stop(self) -> None:
        """Ask the domain to stop (xl shutdown, then xl destroy after the grace period).

        Returns at once; `run_domain` then returns a result with reason "signal".
        """
        self._stop_event.set()


class GuestLogTail:
    """Follows xenconsoled's guest log from an offset (see `plan_console_read`)."""

    def __init__(self, path: Path, sink: ConsoleSink, started_at: float) -> None:
        self.path = path
        self.sink = sink
        self.started_at = started_at
        self.offset = 0
        self.inode: int | None = None
        self.tail = TailBuffer()
        self.first_output_s: float | None = None
        self.skipped = 0

    def start_at_end(self) -> None:
        """Skip what the file holds now (earlier domains of the same name)."""
        with contextlib.suppress(OSError):
            st = self.path.stat()
            self.offset, self.inode = st.st_size, st.st_ino

    async def read_once(self) -> int:
        """Read what is new; return the number of bytes delivered."""
        try:
            st = await trio.to_thread.run_sync(self.path.stat)
        except OSError:
            return 0
        plan = plan_console_read(
            self.offset, st.st_size, same_file=self.inode is None or self.inode == st.st_ino
        )
        self.inode = st.st_ino
        if plan.restarted:
            log.info("%s was truncated or replaced; reading it from the start", self.path)
        if plan.skipped:
            self.skipped += plan.skipped
            log.warning(
                "%s: the guest floods its console; skipped %d bytes", self.path, plan.skipped
            )
        if not plan.length:
            self.offset = plan.start
            return 0
        data = await trio.to_thread.run_sync(_read_range, self.path, plan.start, plan.length)
        self.offset = plan.start + len(data)
        if data:
            if self.first_output_s is None:
                self.first_output_s = trio.current_time() - self.started_at
            self.tail.feed(data)
            self.sink(data)
        return len(data)

    async def follow(self) -> None:
        """Read forever (until cancelled), warning once if the log never appears."""
        warned = False
        while True:
            await self.read_once()
            if (
                not warned
                and self.inode is None
                and trio.current_time() - self.started_at > LOG_LATE_WARN_S
            ):
                warned = True
                log.warning(
                    "%s has not appeared after %.0f s: is xenconsoled running with "
                    "--log=guest --log-dir=%s?",
                    self.path,
                    LOG_LATE_WARN_S,
                    self.path.parent,
                )
            await trio.sleep(CONSOLE_POLL_S)

    async def drain(self) -> None:
        """Read until the log stops growing (bounded by `CONSOLE_DRAIN_S`)."""
        with trio.move_on_after(CONSOLE_DRAIN_S):
            quiet = 0
            # Two quiet reads in a row, CONSOLE_POLL_S apart: xenconsoled has written it all.
            for _ in range(int(CONSOLE_DRAIN_S / 0.05)):
                quiet = 0 if await self.read_once() else quiet + 1
                if quiet >= 2:
                    return
                await trio.sleep(0.05 if quiet == 0 else CONSOLE_POLL_S)


def _read_range(path: Path, start: int, length: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(start)
            return f.read(length)
    except OSError:
        return b""


def check_runnable(spec: XenSpec, tools: XenTools) -> None:
    """Raise now what `run_domain` would raise before asking xl anything.

    Raises:
        VmError: the kernel or xl is missing.
    """
    if not os.path.isfile(spec.kernel):
        raise VmError(f"image {spec.kernel}: no such file")
    find_xl(tools)


async def run_domain(
    spec: XenSpec,
    *,
    key: tuple[str, str, str],
    console_sink: ConsoleSink,
    tools: XenTools,
    allow_adopt: bool = True,
    task_status: trio.TaskStatus[RunningDomain] = trio.TASK_STATUS_IGNORED,
) -> VmResult:
    """Boot ``spec`` as a Xen domain (or adopt ours) and wait until it ends.

    Args:
        spec: what to boot.
        key: the version key (recorded; an adopted domain must run the same version).
        console_sink: called with each chunk of the guest's console, in order.
        tools: xl, folders and timings.
        allow_adopt: follow our running domain of the same name and version instead of
            replacing it (agent restart).
        task_status: receives a `RunningDomain` once the domain runs.

    Returns:
        How the domain ended. A guest failure is a result, not an exception.

    Raises:
        VmError: xl or the image is missing, an xl command failed (named, with its exit
            status and stderr), or the agent's state folder cannot be written.
        DomainCollisionError: a domain with this name exists that edgeagent did not create;
            it is left alone.
    """
    check_runnable(spec, tools)
    rows = await list_domains(tools)
    records = load_records(tools)
    live = find_row(rows, spec.name)
    action = decide_start(spec.name, key, live, records.get(spec.name), allow_adopt=allow_adopt)
    console = GuestLogTail(tools.console_log(spec.name), console_sink, trio.current_time())
    if action == "adopt":
        assert live is not None
        record = records[spec.name]
        log.info("xen domain %s (id %d) is ours and running: adopting it", spec.name, live.domid)
        console.start_at_end()
        domid, uuid_ = live.domid, record.uuid
        adopted = True
    else:
        if action == "replace":
            assert live is not None
            old = records[spec.name]
            log.info(
                "xen domain %s (id %d, ours, state %s) is replaced",
                spec.name,
                live.domid,
                live.state,
            )
            await _destroy(tools, spec.name, old.uuid, live.domid)
            _forget(tools, spec.name, old.uuid)
        uuid_ = str(uuid.uuid4())
        console.start_at_end()
        domid = await _create(spec, key, uuid_, tools)
        console.started_at = trio.current_time()
        adopted = False

    stop_event = trio.Event()
    handle = RunningDomain(spec.name, domid, adopted, stop_event)
    end: tuple[str, int | None, str | None] | None = None
    watch_error: VmError | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(console.follow)
            task_status.started(handle)
            # Errors are kept out of the nursery: callers catch a plain VmError, not a group.
            try:
                end = await _watch(spec.name, uuid_, domid, tools, stop_event)
            except VmError as exc:
                watch_error = exc
            else:
                await console.drain()
            nursery.cancel_scope.cancel(reason="domain ended")
    finally:
        # Whatever happened (cancellation, an xl failure while following), our domain does
        # not outlive this call: stop it now if it may still be there (shielded, bounded).
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(tools.stop_grace + CLEANUP_SLACK_S),
        ):
            try:
                if end is None and stop_event.is_set():
                    # A stop was under way when we were cancelled: skip to its last step.
                    await _destroy(tools, spec.name, uuid_, domid)
                elif end is None:
                    await _stop(tools, spec.name, uuid_, domid)
                elif end[0] == "shutdown":
                    # Preserved after its shutdown so we could read why; now it goes.
                    await _destroy(tools, spec.name, uuid_, domid)
                _forget(tools, spec.name, uuid_)
            except VmError as exc:
                log.error("xen domain %s (id %d) could not be removed: %s", spec.name, domid, exc)

    if watch_error is not None:
        raise watch_error
    assert end is not None
    kind, reason, step = end
    printed = guest_exit_status(console.tail.text().splitlines())
    info = describe_domain_end(
        end="stopped" if kind == "stopped" else "vanished" if kind == "vanished" else "shutdown",
        reason=reason,
        printed_status=printed,
        stop_step=step,
    )
    result = domain_result(
        info,
        reason=reason,
        first_output_s=console.first_output_s,
        console_tail=console.tail.text(),
        stderr_tail="",
    )
    log.info(
        "xen domain %s ended: %s (exit status %d, reason %s)",
        spec.name,
        result.message,
        result.exit_status,
        result.reason,
    )
    return result


async def _create(spec: XenSpec, key: tuple[str, str, str], uuid_: str, tools: XenTools) -> int:
    """Write the config, record the domain, ``xl create`` it; return its id."""
    cfg = tools.state_dir / f"{spec.name}.cfg"
    try:
        cfg.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cfg, render_config(spec, uuid_).encode())
    except OSError as exc:
        raise VmError(f"{cfg}: cannot write the xl config: {exc}") from exc
    # Recorded before it exists: if the agent dies during `xl create`, the next one knows
    # (by name and uuid) that the domain is ours.
    _record(tools, DomainRecord(spec.name, uuid_, key, str(cfg)))
    log.info("xen domain %s: xl create %s", spec.name, cfg)
    try:
        await run_xl(tools, "create", str(cfg))
        domid = parse_domid(await run_xl(tools, "domid", spec.name))
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(XL_CALL_LIMIT_S / 4):
            try:
                row = await _our_row(tools, spec.name, uuid_)
                if row is not None:
                    await _destroy(tools, spec.name, uuid_, row.domid)
                _forget(tools, spec.name, uuid_)
            except VmError as exc:
                log.error("xen domain %s: cleanup after a failed create: %s", spec.name, exc)
        raise
    log.info("xen domain %s is running (id %d)", spec.name, domid)
    return domid


async def _watch(
    name: str, uuid_: str, domid: int, tools: XenTools, stop_event: trio.Event
) -> tuple[str, int | None, str | None]:
    """Follow the domain until it shuts down, vanishes or we are asked to stop it.

    Returns:
        ("shutdown", reason, None), ("vanished", None, None) or ("stopped", None, step).
    """
    failures = 0
    while True:
        with trio.move_on_after(tools.poll_interval_s):
            await stop_event.wait()
        if stop_event.is_set():
            step = await _stop(tools, name, uuid_, domid)
            return ("stopped", None, step)
        try:
            rows = await list_domains(tools)
        except VmError as exc:
            failures += 1
            if failures >= LIST_FAILURES_MAX:
                raise
            log.warning("xen domain %s: following it: %s (retrying)", name, exc)
            continue
        failures = 0
        row = find_row(rows, name)
        if row is None or row.uuid != uuid_:
            return ("vanished", None, None)
        if row.shut_down:
            return ("shutdown", row.shutdown_reason, None)


# Agent start -------------------------------------------------------------------------------


async def cleanup_domains(tools: XenTools, keep: Iterable[tuple[str, str, str]]) -> None:
    """At agent start: destroy our domains that are no longer wanted; keep the rest for adoption.

    Our running domains whose version is in ``keep`` stay (the runner adopts them when the
    workload starts); our other domains are destroyed; records of vanished domains are
    dropped. Domains we did not create are never touched, even with our prefix (logged).

    Raises:
        VmError: xl is missing or failing, or the records cannot be read or written.
    """
    records = load_records(tools)
    rows = await list_domains(tools)
    by_name = {r.name: r for r in rows}
    for record, action in decide_cleanup(records, rows, keep):
        if action == "keep":
            log.info("xen domain %s (ours, %s v%s) is still wanted", record.name, *record.key[:2])
            continue
        if action == "destroy":
            row = by_name[record.name]
            log.info(
                "xen domain %s (ours, %s v%s, state %s) is no longer wanted: destroying it",
                record.name,
                record.key[0],
                record.key[1],
                row.state,
            )
            await _destroy(tools, record.name, record.uuid, row.domid)
        _forget(tools, record.name, record.uuid)
    for row in foreign_domains(rows, load_records(tools), tools.prefix):
        log.warning(
            "xen domain %s (id %d) carries the prefix %r but was not created by this agent; "
            "leaving it alone",
            row.name,
            row.domid,
            tools.prefix,
        )

"""The device agent (trio shell): root nursery, poll loop, reconcile, OTA updates, control.

What it does (issue 4 §1-5, ADR 0007):

- Startup: takes the state folder's lock (a second agent refuses), opens the store, loads
  ``state.json``, SIGKILLs guests a previous (SIGKILLed) agent left running, resumes each
  workload's persisted OTA phase (`edgeagent.agent.ota.recover`) and starts the current version
  of every workload from its verified blob, before the first poll: the registry being down does
  not stop the device from running what it already has.
- Poll loop: every ``poll_interval_s`` plus up to ``poll_jitter_s`` (at once on `update_now`),
  refreshes the TUF metadata with the shared `edgeagent.client.updater.Updater`, turns the
  verified targets into desired workloads (`edgeagent.agent.desired`) and reconciles: pulls and
  verifies what is missing (at most ``max_concurrent_pulls`` at once, a `trio.CapacityLimiter`),
  starts what should run, stops what should not. A failing registry is retried with
  exponential back-off while the workloads keep running. A target that fails verification is not
  booted; the failure is reported in the status and not retried until a different version is
  published.
- OTA update of a running workload: pull -> verified -> start the new version (after stopping
  the old one when the workload has block devices) -> health window -> commit (stop the old one)
  or roll back (stop the new one, mark it bad, restart the old one if it was stopped). Every
  phase is persisted before the action it announces.
- Implements `edgeagent.control.AgentControl` for the serial console and HTTP services, which
  it starts in its nursery when configured.
- `request_stop` (SIGTERM/SIGINT in the command) stops every guest cleanly, then returns.

What it does not do: no decisions of its own (desired.py, policy.py, ota.py), no argument
parsing, no logging configuration, no trust logic (the updater and the store verify).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]

import edgeagent
from edgeagent.agent import ota, status
from edgeagent.agent.desired import TargetEntry, VersionKey, Workload, choose, desired_state
from edgeagent.agent.policy import RestartSettings
from edgeagent.agent.state import (
    ConsoleLog,
    StateFile,
    StateLock,
    WorkloadState,
    is_gone,
    kill_orphans,
    process_start_ticks,
)
from edgeagent.agent.supervisor import STOP_SLACK_S, Instance, Runtime, WorkloadSupervisor
from edgeagent.client.updater import MetadataDir, Updater
from edgeagent.config import AgentConfig
from edgeagent.control import (
    AgentInfo,
    AgentSnapshot,
    NetInfo,
)
from edgeagent.errors import (
    ConfigError,
    ControlError,
    FetchError,
    StoreError,
    UnknownWorkloadError,
    VerificationError,
    VmError,
)
from edgeagent.ota import service as host_ota_service
from edgeagent.registry.fetch import FetchConfig, Fetcher, HttpxFetcher
from edgeagent.registry.protocol import RegistryLayout
from edgeagent.store.cas import Store
from edgeagent.store.layout import BlobRef, Entry
from edgeagent.verify.clock import TrustedClock
from edgeagent.vmm.runner import RunnerTools
from edgeagent.vmm.spec import Accel
from edgeagent.vmm.xen_runner import XenTools, cleanup_domains

log = logging.getLogger(__name__)

#: Seconds to wait for orphaned guests to disappear after SIGKILL at startup.
ORPHAN_WAIT_S = 5.0


def fetch_config(cfg: AgentConfig) -> FetchConfig:
    """The network layer's config from ``[registry.fetch]``."""
    f = cfg.registry.fetch
    return FetchConfig(
        connect_timeout_s=f.connect_timeout_s,
        read_timeout_s=f.read_timeout_s,
        metadata_timeout_s=f.metadata_timeout_s,
        min_throughput_bps=f.min_throughput_bps,
        throughput_grace_s=f.throughput_grace_s,
        retries=f.retries,
        backoff_initial_s=f.backoff_initial_s,
        backoff_max_s=f.backoff_max_s,
    )


def restart_settings(cfg: AgentConfig) -> RestartSettings:
    """The restart policy's knobs from ``[health]``."""
    h = cfg.health
    return RestartSettings(
        heartbeat_deadline_s=h.heartbeat_deadline_s,
        heartbeat_required=h.heartbeat_required,
        backoff_initial_s=h.restart_backoff_initial_s,
        backoff_max_s=h.restart_backoff_max_s,
        crash_loop_restarts=h.crash_loop_restarts,
        crash_loop_window_s=h.crash_loop_window_s,
    )


def xen_tools(cfg: AgentConfig, state_dir: Path) -> XenTools | None:
    """The xen runner's settings from ``[xen]``, when ``runner.hypervisor = "xen"`` (ADR 0012)."""
    if cfg.runner.hypervisor != "xen":
        return None
    x = cfg.xen
    return XenTools(
        state_dir=state_dir / "xen",
        xl=x.xl,
        console_dir=x.console_dir,
        tsc_mode=x.tsc_mode,
        vcpus=x.vcpus,
        prefix=x.domain_prefix,
        poll_interval_s=x.poll_interval_s,
        stop_grace=cfg.runner.stop_grace_s,
    )


def _accel(value: str) -> Accel:
    for a in ("auto", "kvm", "tcg"):
        if a == value:
            return a
    raise ConfigError(f"runner.accel: unexpected {value!r}")


ServiceStarter = Callable[["Agent", trio.Nursery], Awaitable[None]]


class Agent:
    """The device agent (see the module docstring). Implements `AgentControl`.

    Args:
        cfg: the validated config.
        once: poll once, let every update settle (commit or roll back), then stop.
        services: coroutines that start the diagnostics services in the agent's nursery
            (the command passes the serial console and HTTP health services here).
        fetcher: the network (tests may pass another `Fetcher`); default `HttpxFetcher`.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        once: bool = False,
        services: tuple[ServiceStarter, ...] = (),
        fetcher: Fetcher | None = None,
    ) -> None:
        self.cfg = cfg
        self.once = once
        self.services = services
        self.state_dir = Path(cfg.paths.state)
        self.store_dir = Path(cfg.paths.store)
        self.lock = StateLock(self.state_dir)
        self.state_file = StateFile(self.state_dir)
        self.ws: dict[str, WorkloadState] = {}
        self.sups: dict[str, WorkloadSupervisor] = {}
        self.trials: dict[str, Instance] = {}
        self.consoles: dict[str, ConsoleLog] = {}
        self.updating: set[str] = set()
        self.failed: dict[str, tuple[VersionKey, str]] = {}
        self.skipped: dict[str, str] = {}
        self.published: dict[str, Workload] = {}
        self.started_at = time.time()
        self.agent_state = "starting"
        self.last_poll: float | None = None
        self.last_poll_ok: bool | None = None
        self.last_refresh: float | None = None
        self.poll_error: str | None = None
        self.poll_failing_since: float | None = None
        self.polls = 0
        #: Where the HTTP health service listens (set by whoever starts it; port 0 resolved).
        self.http_address: str | None = (
            None if cfg.http is None else f"{cfg.http.host}:{cfg.http.port}"
        )
        self.runtime = Runtime(
            tools=RunnerTools(
                tender=cfg.runner.tender, qemu=cfg.runner.qemu, stop_grace=cfg.runner.stop_grace_s
            ),
            state_dir=self.state_dir,
            accel=_accel(cfg.runner.accel),
            xen=xen_tools(cfg, self.state_dir),
        )
        self.settings = restart_settings(cfg)
        self._fetcher = fetcher
        self._poll_now = trio.Event()
        self._stop = trio.Event()
        self._settled = trio.Event()
        self._finished = trio.Event()
        self._running = trio.Event()
        self._pulls = trio.CapacityLimiter(cfg.limits.max_concurrent_pulls)
        # One metadata refresh at a time: the network poll and offline media share the
        # trusted metadata folder (hot-plug, `apply_offline`).
        self._refresh_lock = trio.Lock()
        #: The updater whose metadata was refreshed last (network or offline), for `snapshot`.
        self._trust_view: Updater | None = None
        self._blob_locks: dict[str, trio.Lock] = {}
        self._store: Store | None = None
        self._updater: Updater | None = None
        self._guests: trio.Nursery | None = None
        self._tasks: trio.Nursery | None = None
        # Host A/B OTA (issue 5 §3, ADR 0010): None unless [host_ota] enabled.
        self.host_ota = host_ota_service.host_ota_for(cfg, self.state_dir)

    # Lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop all guests cleanly and make `run` return (SIGTERM/SIGINT)."""
        self._stop.set()

    def prepare(self) -> None:
        """Take the state lock, load the state, open the store and the TUF client (blocking).

        Call before `run`, outside any nursery, so that these errors are plain exceptions.

        Raises:
            AgentBusyError: another agent holds the state folder.
            ConfigError: the trust root cannot be read, or the state file is malformed.
            StoreError: the store or the state folder cannot be used.
        """
        trust_path = Path(self.cfg.registry.trust_root)
        try:
            trust_root = trust_path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{self.cfg.source}: key 'registry.trust_root': cannot read {trust_path}: {exc}"
            ) from exc
        self.lock.acquire()
        try:
            self.ws = self.state_file.load()
            store = Store.open(self.store_dir)
            self._store = store
            metadata = MetadataDir(store.metadata_dir)
            Updater.bootstrap(metadata, trust_root)
            self._updater = Updater(
                metadata,
                RegistryLayout.from_registry(self.cfg.registry.url),
                self._fetcher or HttpxFetcher(fetch_config(self.cfg)),
                store,
                TrustedClock(self.state_dir),
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the store and the state lock (after `run`)."""
        for console in self.consoles.values():
            console.close()
        if self._store is not None:
            self._store.close()
            self._store = None
        self.lock.release()

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the agent until `request_stop` (or, with ``once``, until updates settle).

        `prepare` must have been called; `close` afterwards.
        """
        updater = self._updater
        if updater is None:
            raise RuntimeError("Agent.run before Agent.prepare")
        try:
            await self._run_nurseries(task_status)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await updater.fetcher.aclose()
            self._finished.set()

    async def wait_running(self) -> None:
        """Wait until startup recovery is done and the poll loop runs (hot-plug waits for it)."""
        await self._running.wait()

    async def wait_stopped(self) -> None:
        """Wait until `run` has stopped every guest and returned."""
        await self._finished.wait()

    async def _run_nurseries(self, task_status: trio.TaskStatus[Agent]) -> None:
        async with trio.open_nursery() as guests:
            self._guests = guests
            try:
                async with trio.open_nursery() as tasks:
                    self._tasks = tasks
                    for start_service in self.services:
                        await start_service(self, tasks)
                    await self._recover()
                    if self.host_ota is not None:
                        probe = lambda: host_ota_service.judge_health(self.snapshot())  # noqa: E731
                        await tasks.start(self.host_ota.run, probe)
                    tasks.start_soon(self._poll_loop)
                    self.agent_state = "running"
                    self._running.set()
                    task_status.started(self)
                    await self._stop.wait()
                    tasks.cancel_scope.cancel(reason="agent stopping")
            finally:
                self.agent_state = "stopping"
                # Every guest gets SIGTERM at once; SIGKILL after the grace period.
                bound = self.cfg.runner.stop_grace_s + 2 * STOP_SLACK_S
                with trio.CancelScope(shield=True), trio.move_on_after(bound):
                    await self._stop_all()
                guests.cancel_scope.cancel(reason="agent stopped")
        log.info("agent stopped")

    async def _stop_all(self) -> None:
        async with trio.open_nursery() as n:
            for sup in list(self.sups.values()):
                n.start_soon(sup.stop)
            for trial in list(self.trials.values()):
                n.start_soon(trial.stop_and_wait)
        self._persist()

    # Persistence -------------------------------------------------------------------------

    def _persist(self) -> None:
        for name, ws in self.ws.items():
            pids: list[tuple[int, int]] = []
            for inst in (
                self.sups[name].instance if name in self.sups else None,
                self.trials.get(name),
            ):
                if inst is not None and inst.pid is not None:
                    ticks = process_start_ticks(inst.pid)
                    if ticks is not None:
                        pids.append((inst.pid, ticks))
            ws.pids = pids
        self.state_file.save(self.ws)

    def _console(self, name: str) -> ConsoleLog:
        if name not in self.consoles:
            self.consoles[name] = ConsoleLog(self.state_dir, name)
        return self.consoles[name]

    # Startup recovery ----------------------------------------------------------------------

    async def _recover(self) -> None:
        orphans = [p for ws in self.ws.values() for p in ws.pids]
        killed = kill_orphans(orphans)
        with trio.move_on_after(ORPHAN_WAIT_S):
            # Orphans are not our children: there is nothing to wait on but /proc.
            while not all(is_gone(pid) for pid in killed):  # noqa: ASYNC110
                await trio.sleep(0.01)
        for name, ws in self.ws.items():
            ws.pids = []
            before = ws.phase
            ws.phase = ota.recover(ws.phase)
            if before != ws.phase:
                log.info("workload %s: resuming OTA from %s (was %s)", name, ws.phase, before)
            if ws.phase == "idle":
                ws.candidate = None
        self._persist()
        if self.runtime.xen is not None:
            # Our domains left by a previous agent: the current versions' are adopted when
            # their workloads start, the others destroyed; other domains are never touched.
            keep = [ws.current.key for ws in self.ws.values() if ws.current is not None]
            try:
                await cleanup_domains(self.runtime.xen, keep)
            except VmError as exc:
                log.error("xen: cleaning up domains left by a previous agent failed: %s", exc)
        for _name, ws in sorted(self.ws.items()):
            if ws.current is not None:
                path = await self._cached(ws.current)
                if path is None:
                    ws.last_error = f"v{ws.current.version}: blob missing from the store; re-pull"
                    continue
                await self._start_supervisor(ws.current, path)
            if ws.phase == "verified" and ws.candidate is not None:
                self._spawn_update(ws.candidate, None)

    async def _cached(self, w: Workload) -> Path | None:
        store = self._store
        assert store is not None
        ref = BlobRef(w.sha256, w.length)
        return await trio.to_thread.run_sync(store.verified_blob, ref)

    async def _start_supervisor(
        self, w: Workload, image: Path, adopt: Instance | None = None
    ) -> None:
        assert self._guests is not None
        assert self._tasks is not None
        console = self._console(w.name)
        sup = WorkloadSupervisor(
            w, image, console, self.runtime, self.settings, self._guests, self._persist
        )
        self.sups[w.name] = sup
        await self._tasks.start(sup.run, adopt)

    # Polling -------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        failures = 0
        r = self.cfg.registry
        while True:
            ok = await self.poll_once()
            failures = 0 if ok else failures + 1
            if self.once:
                await self.wait_updates_settled()
                self.request_stop()
                return
            # Jitter spreads a fleet's polls; it is not a secret (S311 does not apply).
            interval = r.poll_interval_s + random.uniform(0, r.poll_jitter_s)  # noqa: S311
            if failures:
                interval = min(r.poll_interval_s * 2**failures, r.poll_backoff_max_s)
            with trio.move_on_after(interval):
                await self._poll_now.wait()
            self._poll_now = trio.Event()

    async def poll_once(self) -> bool:
        """Refresh the metadata and reconcile; False when the registry failed (reported)."""
        updater = self._updater
        assert updater is not None
        async with self._refresh_lock:
            return await self._poll_locked(updater)

    async def _poll_locked(self, updater: Updater) -> bool:
        self.last_poll = time.time()
        self.polls += 1
        try:
            await updater.refresh()
            entries = await self._entries(updater)
        except (FetchError, VerificationError, StoreError) as exc:
            self.last_poll_ok = False
            self.poll_error = str(exc)
            if self.poll_failing_since is None:
                self.poll_failing_since = self.last_poll
            log.warning("poll failed (workloads keep running): %s", exc)
            return False
        self.last_poll_ok = True
        self.poll_error = None
        self.poll_failing_since = None
        self.last_refresh = self.last_poll
        self._trust_view = updater
        await self._reconcile(entries)
        if self.host_ota is not None:
            consistent = bool(updater.trusted.root.consistent_snapshot)
            host_ota_service.offer_from_entries(
                self.host_ota,
                self.cfg,
                lambda name, sha: updater.layout.target(name, sha, consistent=consistent),
                entries,
                updater.fetcher,
            )
        return True

    async def _entries(self, updater: Updater) -> dict[str, tuple[TargetEntry, TargetFile]]:
        top = updater.trusted.targets
        assert top is not None
        names = set(top.targets)
        if top.delegations is not None and top.delegations.roles:
            for role in top.delegations.roles.values():
                try:
                    # The updater has no public listing of a delegated role (ask helper B).
                    listed = await updater._load_targets(role.name, "targets")
                except (FetchError, VerificationError) as exc:
                    log.warning("delegated role %s not loaded: %s", role.name, exc)
                    continue
                names.update(listed.targets)
        out: dict[str, tuple[TargetEntry, TargetFile]] = {}
        for name in sorted(names):
            info = await updater.get_target_info(name)
            if info is None:
                continue
            entry = TargetEntry(
                name=name,
                length=info.length,
                sha256=str(info.hashes.get("sha256", "")),
                custom=info.unrecognized_fields.get("custom"),
            )
            out[name] = (entry, info)
        return out

    async def _reconcile(self, entries: dict[str, tuple[TargetEntry, TargetFile]]) -> None:
        c = self.cfg
        desired = desired_state(
            (e for e, _ in entries.values()),
            device_id=c.device.id,
            groups=c.device.groups,
            max_workloads=c.limits.max_workloads,
            max_mem_mb=c.limits.max_mem_mb,
            hypervisor=c.runner.hypervisor,
        )
        self.skipped = dict(desired.skipped)
        self.published = dict(desired.workloads)
        # Stop what should not run any more (volumes are kept).
        for name in sorted(set(self.ws) - set(desired.workloads)):
            if name in self.updating:
                continue
            ws = self.ws[name]
            if ws.current is None and name not in self.sups:
                continue
            log.info("workload %s is no longer published for this device; stopping it", name)
            sup = self.sups.pop(name, None)
            if sup is not None:
                await sup.stop()
            ws.previous, ws.current, ws.candidate, ws.phase = ws.current, None, None, "idle"
            self._persist()
        for name, w in desired.workloads.items():
            if name in self.updating:
                continue
            failed = self.failed.get(name)
            if failed is not None and failed[0] == w.key:
                continue  # Reported; not retried until a different version is published.
            ws = self.ws.setdefault(name, WorkloadState())
            choice = choose(w, ws.current, ws.bad)
            if choice in ("install", "update") or (choice == "keep" and name not in self.sups):
                self._spawn_update(w, entries[name][1])

    async def apply_offline(self, fetcher: Fetcher, url: str) -> str:
        """Update from an offline registry (a hot-plugged medium): same trust, same rules.

        The offline `Updater` shares the trusted metadata folder, the store and the trusted
        clock with the network one, so the trust root, root rotation, rollback and expiry
        rules are the same: a stale copy (an older timestamp, snapshot or targets version
        than the device already trusts) or expired metadata is refused and changes nothing.
        The blobs of the workloads to install or update are copied into the store and
        verified first, then the workloads are reconciled as after a poll (the normal OTA
        path: health window, commit or rollback), so the medium can be removed as soon as
        this returns.

        Args:
            fetcher: reads the medium (`edgeagent.agent.offline.LocalFetcher`).
            url: the offline registry's ``file://`` URL (``metadata/`` and ``targets/``).

        Returns:
            A one-line summary for the log.

        Raises:
            VerificationError: the offline metadata or a blob failed verification.
            FetchError: the medium lacks a file or cannot be read.
            StoreError: the store cannot be used.
        """
        online = self._updater
        assert online is not None
        offline = Updater(
            online.metadata,
            RegistryLayout.from_registry(url),
            fetcher,
            online.store,
            online.clock,
        )
        async with self._refresh_lock:
            await offline.refresh()
            entries = await self._entries(offline)
            c = self.cfg
            desired = desired_state(
                (e for e, _ in entries.values()),
                device_id=c.device.id,
                groups=c.device.groups,
                max_workloads=c.limits.max_workloads,
                max_mem_mb=c.limits.max_mem_mb,
                hypervisor=c.runner.hypervisor,
            )
            copied: list[str] = []
            for name, w in sorted(desired.workloads.items()):
                ws = self.ws.get(name, WorkloadState())
                if choose(w, ws.current, ws.bad) in ("install", "update"):
                    async with self._pulls:
                        await offline.download_target(entries[name][1])
                    copied.append(f"{name} v{w.version}")
            self.last_refresh = time.time()
            self._trust_view = offline
            await self._reconcile(entries)
        root = offline.trusted.root.version
        what = ", ".join(copied) if copied else "nothing new for this device"
        return f"offline registry {url} verified (root v{root}): {what}"

    # Updates -------------------------------------------------------------------------------

    def _spawn_update(self, w: Workload, info: TargetFile | None) -> None:
        assert self._tasks is not None
        if not self.updating:
            self._settled = trio.Event()
        self.updating.add(w.name)
        self._tasks.start_soon(self._update, w, info)

    async def _update(self, w: Workload, info: TargetFile | None) -> None:
        try:
            await self._update_inner(w, info)
        finally:
            self.updating.discard(w.name)
            if not self.updating:
                self._settled.set()
            self._persist()

    async def wait_updates_settled(self) -> None:
        """Wait until no update is in progress (each committed, rolled back or failed)."""
        while self.updating:
            await self._settled.wait()

    async def _pull(self, w: Workload, info: TargetFile | None) -> Path | None:
        """Pull and verify ``w`` into the store; None (reported) on failure."""
        updater, store = self._updater, self._store
        assert updater is not None
        assert store is not None
        ws = self.ws.setdefault(w.name, WorkloadState())
        ws.phase, ws.candidate = ota.step(ws.phase, "offer"), w
        self._persist()
        try:
            if info is None:
                path = await self._cached(w)
                if path is None:
                    raise StoreError(f"target {w.name} v{w.version}: blob not in the store")
            else:
                # One download per blob at a time: targets may share bytes, and the store keeps
                # one partial file per digest.
                lock = self._blob_locks.setdefault(w.sha256, trio.Lock())
                async with lock, self._pulls:
                    path = await updater.download_target(info)
                store.record(w.name, Entry(w.sha256, w.length, w.version))
        except VerificationError as exc:
            msg = f"v{w.version} failed verification, not booted: {exc}"
            self.failed[w.name] = (w.key, msg)
            log.error("target %s: %s", w.name, msg)
            ws.phase, ws.candidate, ws.last_error = ota.step(ws.phase, "pull_failed"), None, msg
            return None
        except (FetchError, StoreError, OSError) as exc:
            msg = f"v{w.version} could not be pulled (retried at the next poll): {exc}"
            log.warning("target %s: %s", w.name, msg)
            ws.phase, ws.candidate, ws.last_error = ota.step(ws.phase, "pull_failed"), None, msg
            return None
        self.failed.pop(w.name, None)
        ws.phase = ota.step(ws.phase, "pulled")
        self._persist()
        return path

    async def _update_inner(self, w: Workload, info: TargetFile | None) -> None:
        ws = self.ws.setdefault(w.name, WorkloadState())
        if ws.phase == "verified":
            path = await self._cached(w)
            if path is None:
                ws.phase, ws.candidate = "idle", None
                return
        else:
            path = await self._pull(w, info)
            if path is None:
                return
        current = ws.current
        sup = self.sups.get(w.name)
        if current is None or sup is None or current.key == w.key:
            # First install (or the current version's blob was missing): nothing to roll back to.
            if sup is not None:
                await sup.stop()
                self.sups.pop(w.name, None)
            ws.phase = ota.step(ws.phase, "install")
            if current is not None and current.key != w.key:
                ws.previous = current
            ws.current, ws.candidate, ws.last_error = w, None, ""
            self._persist()
            log.info("workload %s: installing v%s", w.name, w.version)
            await self._start_supervisor(w, path)
            return
        await self._trial(ws, w, path, current, sup)

    async def _trial(
        self, ws: WorkloadState, w: Workload, path: Path, current: Workload, sup: WorkloadSupervisor
    ) -> None:
        assert self._guests is not None
        stop_old = ota.must_stop_old_first(w.blocks + current.blocks)
        ws.phase = ota.step(ws.phase, "starting")
        self._persist()
        log.info(
            "workload %s: updating v%s -> v%s (%s)",
            w.name,
            current.version,
            w.version,
            "old stopped first: block devices" if stop_old else "overlapping",
        )
        if stop_old:
            await sup.stop()
            self.sups.pop(w.name, None)
        trial = Instance(w, path, self._console(w.name), self.runtime, lambda _i: self._persist())
        self.trials[w.name] = trial
        try:
            await self._guests.start(trial.run)
            ws.phase = ota.step(ws.phase, "started")
            self._persist()
            verdict, message = await self._judge(trial)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trial.stop_and_wait()
            self.trials.pop(w.name, None)
            raise
        self.trials.pop(w.name, None)
        if verdict == "commit":
            ws.phase = ota.step(ws.phase, "commit")
            ws.previous, ws.current, ws.candidate, ws.last_error = current, w, None, ""
            self._persist()
            log.info("workload %s: v%s committed", w.name, w.version)
            self._console(w.name).mark(f"v{w.version} committed")
            if not stop_old:
                await sup.stop()
            await self._start_supervisor(w, path, adopt=trial)
            await trio.to_thread.run_sync(self._gc)
            return
        await trial.stop_and_wait()
        ws.phase = ota.step(ws.phase, "rollback")
        ws.bad.append(w.key)
        ws.candidate = None
        ws.last_error = f"v{w.version} rolled back to v{current.version}: {message}"
        self._persist()
        log.warning("workload %s: %s", w.name, ws.last_error)
        self._console(w.name).mark(ws.last_error)
        if stop_old:
            old = await self._cached(current)
            if old is not None:
                await self._start_supervisor(current, old)

    def _gc(self) -> None:
        """Drop store blobs no name references (the store keeps current + previous per name)."""
        store = self._store
        if store is None:
            return
        try:
            removed = store.scan(gc=True)
        except StoreError as exc:
            log.warning("store garbage collection failed: %s", exc)
            return
        if removed:
            log.info("store: removed %d unreferenced blobs", len(removed))

    async def _judge(self, trial: Instance) -> tuple[ota.Verdict, str]:
        h = self.cfg.health
        while True:
            now = trio.current_time()
            since = trial.last_heartbeat if trial.last_heartbeat is not None else trial.started_at
            hb_due = since + h.heartbeat_deadline_s if h.heartbeat_required else math.inf
            unhealthy = trial.exit_ok is None and now >= hb_due
            message = trial.end_message
            if unhealthy:
                message = f"no heartbeat within {h.heartbeat_deadline_s:g} s"
            elif trial.exit_ok is False:
                message = f"exited: {trial.end_message}"
            t = ota.Trial(
                started_at=trial.started_at,
                heartbeats=trial.heartbeats,
                exit_ok=trial.exit_ok,
                unhealthy=unhealthy,
                message=message,
            )
            verdict = ota.judge(
                t, now, window_s=h.health_window_s, heartbeat_required=h.heartbeat_required
            )
            if verdict != "wait":
                return verdict, message
            with trio.move_on_at(min(trial.started_at + h.health_window_s, hb_due)):
                await trial.wait_change()

    # AgentControl --------------------------------------------------------------------------

    def snapshot(self) -> AgentSnapshot:
        """A copy of the agent's state now (AgentControl)."""
        now = time.time()
        names = sorted(set(self.ws) | set(self.skipped))
        workloads = [status.workload_info(self, name) for name in names]
        reasons: list[str] = []
        if self.poll_failing_since is not None:
            reasons.append(f"registry unreachable or failing: {self.poll_error}")
        state = self.agent_state
        if state == "running" and (reasons or any(w.health_reasons for w in workloads)):
            state = "degraded"
        return AgentSnapshot(
            taken_at=now,
            agent=AgentInfo(
                device_id=self.cfg.device.id,
                version=edgeagent.__version__,
                started_at=self.started_at,
                state=state,
                groups=self.cfg.device.groups,
                health_reasons=tuple(reasons),
            ),
            trust=status.trust_info(
                self._trust_view or self._updater, self.last_refresh, self.poll_error
            ),
            net=NetInfo(
                registry_url=self.cfg.registry.url,
                http_listen=self.http_address,
                last_poll=self.last_poll,
                last_poll_ok=self.last_poll_ok,
                interfaces=status.interfaces(),
            ),
            workloads=tuple(workloads),
            host=None if self.host_ota is None else self.host_ota.host_info(),
        )

    def console_tail(self, name: str, n: int) -> list[str]:
        """The last ``n`` console lines of ``name`` (AgentControl)."""
        if name not in self.ws and name not in self.consoles:
            raise UnknownWorkloadError(f"no workload called {name!r}")
        return self._console(name).tail(n)

    async def restart(self, name: str) -> str:
        """Restart workload ``name`` now (AgentControl)."""
        if name not in self.ws:
            raise UnknownWorkloadError(f"no workload called {name!r}")
        if name in self.updating:
            raise ControlError(f"{name}: an update is in progress; try again when it ends")
        sup = self.sups.get(name)
        if sup is None:
            raise ControlError(f"{name}: not running on this device (no verified version)")
        sup.request_restart()
        return f"restarting {name} v{sup.workload.version}"

    async def update_now(self) -> str:
        """Poll the registry now (AgentControl)."""
        if self._stop.is_set():
            raise ControlError("the agent is stopping")
        self._poll_now.set()
        return "polling the registry now"

    async def rollback(self, name: str) -> str:
        """Go back to the previous version of ``name`` and mark the current one bad."""
        ws = self.ws.get(name)
        if ws is None:
            raise UnknownWorkloadError(f"no workload called {name!r}")
        if name in self.updating:
            raise ControlError(f"{name}: an update is in progress; try again when it ends")
        if ws.previous is None or ws.current is None:
            raise ControlError(f"{name}: there is no previous version to roll back to")
        previous, current = ws.previous, ws.current
        path = await self._cached(previous)
        if path is None:
            raise ControlError(f"{name}: v{previous.version} is no longer in the store")
        self.updating.add(name)
        try:
            sup = self.sups.pop(name, None)
            if sup is not None:
                await sup.stop()
            ws.bad.append(current.key)
            ws.current, ws.previous, ws.phase = previous, None, "rolled-back"
            ws.last_error = f"v{current.version} rolled back by the operator"
            self._persist()
            await self._start_supervisor(previous, path)
        finally:
            self.updating.discard(name)
        return f"{name}: rolled back from v{current.version} to v{previous.version}"

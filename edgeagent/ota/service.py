"""Host OTA orchestration: the trio task that runs ``edgeagent.ota.slots`` on the device.

What it does: loads (or creates) ``STATE/host-ota.json``; at start feeds `Booted` with the slot
named on the kernel command line; takes offers of the host-slot target from the agent's poll
(`HostOta.offer_nowait`); runs the steps the machine asks for, in order: ESP changes (through
bootctl, the ESP mounted only while changed), then persist the new state (atomic, fsynced), then
the step: stream into the target slot (writer), read it back, stage it, wait for the reboot
window and reboot, or watch the agent's health (a probe the agent passes in) on a trial boot.

What it does not do: TUF (the agent resolves the target and passes the signed `Candidate` and
its URL), decisions (slots), the health checks themselves (the agent's probe).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio

from edgeagent.agent.desired import CUSTOM_KEY, TargetEntry, selects
from edgeagent.config import AgentConfig, HostOtaConfig
from edgeagent.control import AgentSnapshot, HostInfo
from edgeagent.errors import (
    ConfigError,
    DigestMismatchError,
    FetchError,
    OtaError,
    TooLargeError,
)
from edgeagent.ota import bootctl, slots, writer
from edgeagent.ota.slots import Candidate, Decision, SlotState
from edgeagent.registry.fetch import Fetcher
from edgeagent.verify.clock import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "host-ota.json"
PROBE_INTERVAL_S = 2.0
WINDOW_POLL_S = 30.0
ESP_MOUNT = Path("/run/edgeagent/esp")
REBOOT_FLUSH_S = 0.5

#: Workload states that are not (yet) healthy for a trial; otherwise the control rule applies:
#: a workload is healthy when its ``health_reasons`` is empty (edgeagent.control).
UNSETTLED_STATES = frozenset({"pending", "starting", "trial", "backoff", "crashloop", "failed"})

HealthProbe = Callable[[], tuple[bool, str]]
EspAccess = Callable[[], AbstractContextManager[bootctl.EspDir]]


@dataclass(frozen=True, slots=True)
class Offered:
    """A signed host-slot target and where to fetch it."""

    candidate: Candidate
    url: str
    fetcher: Fetcher


def default_esp_access(cfg: HostOtaConfig) -> EspAccess:
    """An already-mounted ``esp_dir``, or the ESP partition mounted at /run/edgeagent/esp."""
    if cfg.esp_dir is not None:
        esp_dir = bootctl.EspDir(Path(cfg.esp_dir), cfg.boot_prefix)
        return lambda: contextlib.nullcontext(esp_dir)

    @contextlib.contextmanager
    def mounted() -> Iterator[bootctl.EspDir]:
        dev = Path(cfg.esp) if cfg.esp else bootctl.find_partition("esp")
        if dev is None:
            raise OtaError("no ESP: no partition named 'esp' (set [host_ota] esp)")
        with bootctl.mount_esp(dev, ESP_MOUNT) as root:
            yield bootctl.EspDir(root, cfg.boot_prefix)

    return mounted


def default_slot_devices(cfg: HostOtaConfig) -> dict[str, writer.SlotDevice]:
    """The slot partitions from the config, else found by GPT name (root-a / root-b).

    Raises:
        OtaError: a slot partition cannot be found or sized.
    """
    out: dict[str, writer.SlotDevice] = {}
    for slot, path in (("a", cfg.slot_a), ("b", cfg.slot_b)):
        if path is None:
            out[slot] = writer.slot_device(f"root-{slot}")
            continue
        p = Path(path)
        try:
            with p.open("rb") as f:
                size = f.seek(0, 2)
        except OSError as exc:
            raise OtaError(f"[host_ota] slot_{slot} = {path}: cannot open: {exc}") from exc
        out[slot] = writer.SlotDevice(p, size)
    return out


class HostOta:
    """The host OTA task of one agent (see the module docstring).

    Args:
        cfg: the ``[host_ota]`` config.
        state_dir: the agent's state folder (``host-ota.json`` goes there).
        version: the running host OS version (for a first start).
        cmdline: the kernel command line (``/proc/cmdline``).
        esp: how to reach the ESP.
        devices: the slot devices (``default_slot_devices``), resolved lazily when None.
        reboot: restarts the machine (``bootctl.reboot_now``; tests pass a recorder).
        clock: wall-clock seconds (trial timing survives restarts, so not monotonic).
    """

    def __init__(
        self,
        cfg: HostOtaConfig,
        state_dir: Path,
        *,
        version: str,
        cmdline: str,
        esp: EspAccess | None = None,
        devices: dict[str, writer.SlotDevice] | None = None,
        reboot: Callable[[], None] = bootctl.reboot_now,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.path = state_dir / STATE_FILE
        self.version = version
        self.cmdline = cmdline
        self.esp = esp or default_esp_access(cfg)
        self._devices = devices
        self.reboot = reboot
        self.clock = clock
        self.window = slots.parse_window(cfg.reboot_window)
        self.state: SlotState | None = None
        self.booted: str | None = None
        self.error: str | None = None
        self._offered: Offered | None = None
        self._offer_event = trio.Event()
        self._rebooting = False
        self._resting_watch = False
        self.blessed = False

    # State -----------------------------------------------------------------------------------

    def load(self) -> SlotState | None:
        """The persisted state (None on a first start).

        Raises:
            ConfigError: the file is malformed (names the field).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read: {exc}") from exc
        return slots.load_state(data, str(self.path))

    def _devices_now(self) -> dict[str, writer.SlotDevice]:
        if self._devices is None:
            self._devices = default_slot_devices(self.cfg)
        return self._devices

    async def _apply(self, d: Decision) -> slots.Step | None:
        """ESP changes, then persist, then hand back the step (the order of slots' rules)."""
        if d.esp:

            def esp_work() -> None:
                with self.esp() as esp:
                    for action in d.esp:
                        esp.apply(action)

            await trio.to_thread.run_sync(esp_work, abandon_on_cancel=False)
        if d.state != self.state:
            data = slots.dump_state(d.state)
            await trio.to_thread.run_sync(write_atomic, self.path, data, abandon_on_cancel=False)
            if self.state is None or d.state.phase != self.state.phase:
                log.info("host-ota: %s (%s)", d.state.phase, d.state.last or "-")
        self.state = d.state
        return d.step

    # Public ----------------------------------------------------------------------------------

    def offer_nowait(self, candidate: Candidate, url: str, fetcher: Fetcher) -> None:
        """The agent's poll found the host-slot target ``candidate`` (signed) at ``url``."""
        self._offered = Offered(candidate, url, fetcher)
        self._offer_event.set()

    def host_info(self) -> HostInfo | None:
        """For the agent's status line and /status (None before the first start or off)."""
        s = self.state
        if s is None or self.booted is None:
            return None
        return HostInfo(
            slot=self.booted,
            version=s.good_version,
            phase=s.phase,
            blessed=self.blessed,
            candidate=None if s.candidate is None else s.candidate.version,
            last=s.last,
            error=self.error,
        )

    def snapshot(self) -> dict[str, object]:
        """For the agent's status: booted slot, phase, versions, last outcome, error."""
        s = self.state
        return {
            "booted": self.booted,
            "phase": None if s is None else s.phase,
            "good": None if s is None else s.good,
            "version": None if s is None else s.good_version,
            "candidate": None if s is None or s.candidate is None else s.candidate.version,
            "offset": None if s is None else s.offset,
            "last": None if s is None else s.last,
            "error": self.error,
        }

    async def run(
        self, probe: HealthProbe, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start (Booted), then serve offers and health until cancelled.

        Raises:
            ConfigError: the state file is malformed.
        """
        booted = bootctl.booted_slot(self.cmdline)
        if booted is None:
            # Not an A/B host image (a workstation, a container): report it, stay out of the way.
            self.error = "no edge.root=root-a|root-b on the kernel command line; host OTA is off"
            log.error("host-ota: %s", self.error)
            task_status.started()
            return
        self.booted = booted
        state = self.load() or slots.initial_state(booted, self.version)
        step = await self._apply(slots.decide(state, slots.Booted(booted, self.clock())))
        task_status.started()
        while True:
            step = await self._run_step(step, probe)
            if step is not None:
                continue
            # Idle: wait for an offer; on a resting boot, probe health now and then until the
            # first healthy report blesses the good slot.
            wait = PROBE_INTERVAL_S if self._resting_watch else math.inf
            with trio.move_on_after(wait):
                await self._offer_event.wait()
            if self._offer_event.is_set():
                step = await self._take_offer()
            elif self._resting_watch:
                step = await self._resting_probe(probe)

    async def _take_offer(self) -> slots.Step | None:
        self._offer_event = trio.Event()
        offered = self._offered
        assert offered is not None
        assert self.state is not None
        return await self._apply(slots.decide(self.state, slots.Offer(offered.candidate)))

    async def _run_step(self, step: slots.Step | None, probe: HealthProbe) -> slots.Step | None:
        assert self.state is not None
        try:
            if step == "write":
                return await self._write()
            if step == "read-back":
                cand = self.state.candidate
                assert cand is not None
                dev = self._devices_now()[self.state.target]
                digest = await writer.read_back(dev, cand.length)
                return await self._apply(slots.decide(self.state, slots.ReadBack(digest)))
            if step == "stage":
                return await self._apply(slots.decide(self.state, slots.Stage()))
            if step == "reboot-in-window":
                await self._wait_window()
                await self._reboot()
            if step == "reboot":
                await self._reboot()
            if step == "watch-health":
                return await self._watch_health(probe)
        except (OtaError, FetchError) as exc:
            # Kept state; retried from the next offer (the next poll).
            self.error = str(exc)
            log.warning("host-ota: %s", exc)
            return None
        return None

    async def _write(self) -> slots.Step | None:
        state = self.state
        assert state is not None
        cand = state.candidate
        assert cand is not None
        offered = self._offered
        if offered is None or offered.candidate != cand:
            return None  # Resumes when the next poll offers it again (its URL comes with it).
        dev = self._devices_now()[state.target]

        async def progress(n: int) -> None:
            assert self.state is not None
            if self.state.phase == "downloading" and n < cand.length:
                await self._apply(slots.decide(self.state, slots.Progress(n)))
                log.info("host-ota: %d of %d bytes of %s written", n, cand.length, cand.version)

        try:
            await writer.write_slot(
                offered.fetcher,
                offered.url,
                dev,
                cand,
                start=state.offset,
                on_progress=progress,
                checkpoint=self.cfg.checkpoint_mb * 1024 * 1024,
            )
        except (DigestMismatchError, TooLargeError) as exc:
            log.error("host-ota: refusing %s: %s", cand.version, exc)
            self.error = str(exc)
            assert self.state is not None
            return await self._apply(slots.decide(self.state, slots.WriteRefused(str(exc))))
        self.error = None
        assert self.state is not None
        return await self._apply(slots.decide(self.state, slots.Written()))

    async def _wait_window(self) -> None:
        while True:
            now = datetime.fromtimestamp(self.clock(), UTC)
            if slots.reboot_allowed(self.window, now.hour * 60 + now.minute):
                return
            await trio.sleep(WINDOW_POLL_S)

    async def _reboot(self) -> None:
        log.warning("host-ota: rebooting (%s)", self.state.last if self.state else "-")
        self._rebooting = True
        await trio.sleep(REBOOT_FLUSH_S)  # Let the log line reach the serial console.
        await trio.to_thread.run_sync(self.reboot)
        await trio.sleep_forever()  # The machine goes down; tests cancel here.

    def _health_event(self, probe: HealthProbe) -> slots.Health:
        ok, detail = probe()
        return slots.Health(ok, detail, self.clock(), self.cfg.health_window_s)

    async def _watch_health(self, probe: HealthProbe) -> slots.Step | None:
        assert self.state is not None
        if self.state.phase != "trial":
            self._resting_watch = True
            return None
        while True:
            assert self.state is not None
            before = self.state
            d = slots.decide(before, self._health_event(probe))
            if d.state != before or d.esp or d.step:
                step = await self._apply(d)
                if d.state.phase == "committed":
                    self._set_blessed()  # Commit made the booted target the blessed default.
                return step
            await trio.sleep(PROBE_INTERVAL_S)

    async def _resting_probe(self, probe: HealthProbe) -> slots.Step | None:
        """A healthy resting boot blesses the good slot; failures are retried at the next probe."""
        assert self.state is not None
        event = self._health_event(probe)
        if not event.ok:
            return None
        if self.state.phase not in slots.RESTING:
            self._resting_watch = False
            return None
        try:
            step = await self._apply(slots.decide(self.state, event))
        except OtaError as exc:
            # Keep watching: the ESP may be busy or not there yet; the boot stays counted and
            # falls back on its own if the agent never manages to bless it.
            self.error = str(exc)
            log.warning("host-ota: cannot bless slot %s yet: %s", self.state.good, exc)
            return None
        self._resting_watch = False
        self._set_blessed()
        return step

    def _set_blessed(self) -> None:
        assert self.state is not None
        self.blessed = True
        self.error = None
        log.info("host-ota: blessed slot %s (%s)", self.state.good, self.state.good_version)

    @property
    def rebooting(self) -> bool:
        """True once a reboot was requested (tests)."""
        return self._rebooting


def candidate_from_target(
    custom: object, length: int, sha256: str, *, device_id: str, groups: tuple[str, ...]
) -> Candidate | None:
    """The `Candidate` of a signed target, if it is a host-slot image meant for this device.

    Args:
        custom: the target's signed ``custom`` field.
        length: its signed length.
        sha256: its signed sha256.
        device_id: this device's id; groups: its groups (ADR 0003 §3 selectors).
    """
    if not isinstance(custom, dict):
        return None
    section = custom.get(CUSTOM_KEY)
    if not isinstance(section, dict) or section.get("kind") != "host-slot":
        return None
    version = section.get("version")
    if not isinstance(version, str) or not version or not sha256:
        return None
    if not selects(custom, device_id, groups):
        return None
    return Candidate(version, sha256, length)


def judge_health(snap: AgentSnapshot) -> tuple[bool, str]:
    """The trial's health checks over an agent snapshot: agent up, trust loaded (the last poll
    refreshed signed metadata), every workload running and healthy."""
    if snap.agent.state not in ("running", "degraded"):
        return False, f"agent {snap.agent.state}"
    if snap.net.last_poll_ok is not True:
        return False, "trusted metadata not refreshed yet"
    for w in snap.workloads:
        if w.state in UNSETTLED_STATES or w.health_reasons:
            why = "; ".join(w.health_reasons) or w.state
            return False, f"workload {w.name} {w.version}: {why}"
    if snap.agent.health_reasons:
        return False, "; ".join(snap.agent.health_reasons)
    return True, "healthy"


def host_ota_for(cfg: AgentConfig, state_dir: Path) -> HostOta | None:
    """The agent's host OTA task when ``[host_ota] enabled`` (None otherwise)."""
    if not cfg.host_ota.enabled:
        return None
    return HostOta(cfg.host_ota, state_dir, version=host_version(), cmdline=read_cmdline())


def offer_from_entries(
    host_ota: HostOta,
    cfg: AgentConfig,
    url: Callable[[str, str], str],
    entries: Mapping[str, tuple[TargetEntry, object]],
    fetcher: Fetcher,
) -> None:
    """Offer the signed host-slot target of this poll, if there is one for this device.

    Args:
        url: the target's URL from (name, sha256) (the updater's layout).
    """
    found = entries.get(cfg.host_ota.target)
    if found is None:
        return
    entry = found[0]
    cand = candidate_from_target(
        entry.custom,
        entry.length,
        entry.sha256,
        device_id=cfg.device.id,
        groups=cfg.device.groups,
    )
    if cand is not None:
        host_ota.offer_nowait(cand, url(entry.name, entry.sha256), fetcher)


def read_cmdline() -> str:
    """/proc/cmdline ("" when unreadable)."""
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""


def host_version(path: Path = Path("/etc/os-release")) -> str:
    """VERSION_ID from os-release ("unknown" when absent)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("VERSION_ID="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"

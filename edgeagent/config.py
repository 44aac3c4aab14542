"""The agent's configuration: ``agent.toml`` bytes -> a validated, frozen `AgentConfig`. [pure]

Validation is strict (Firecracker's ``deny_unknown_fields``): an unknown section or key, a value
of the wrong type, or a value out of range is a `ConfigError` that names the file, the key path
and what was expected, e.g. ``agent.toml: key 'registry.poll_interval_s': expected a positive
number, got 'x'``. Everything has a sane default except ``registry.url`` and
``registry.trust_root``. ``docs/agent.example.toml`` documents every key.

Relative paths are resolved against ``base_dir`` (the folder holding the config file), which the
caller passes in.

What this module does not do: it reads no files (the caller passes the bytes), checks no paths
exist and opens nothing; it does not build the network layer's ``FetchConfig`` (the agent shell
does that from `FetchSettings`).
"""

from __future__ import annotations

import math
import posixpath
import re
import tomllib
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from edgeagent.errors import ConfigError

SCHEMA_VERSION = 1

CommandMode = Literal["allowed", "confirm", "disabled"]
COMMAND_MODES: tuple[CommandMode, ...] = ("allowed", "confirm", "disabled")
#: Console commands that change state, and their default mode.
STATEFUL_COMMANDS: dict[str, CommandMode] = {
    "restart": "allowed",
    "update": "allowed",
    "rollback": "confirm",
}
ACCELS = ("auto", "kvm", "tcg")
HYPERVISORS = ("kvm", "xen")
XEN_TSC_MODES = ("default", "always_emulate", "native", "native_paravirt")

_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_URL_RE = re.compile(r"https?://[^\s/]+(/\S*)?")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Who this device is: its id and the groups it belongs to (target selectors, ADR 0003 §3)."""

    id: str = "edge-device"
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """Network limits, mapped one to one onto ``edgeagent.registry.fetch.FetchConfig``."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    metadata_timeout_s: float = 60.0
    min_throughput_bps: int = 32 * 1024
    throughput_grace_s: float = 10.0
    retries: int = 2
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where updates come from and how often the agent asks.

    Attributes:
        url: registry base URL (``metadata/`` and ``targets/`` beneath it).
        trust_root: path of the initial trusted ``root.json`` (used until the store has one).
        poll_interval_s: seconds between polls.
        poll_jitter_s: up to this many seconds added at random to each interval.
        poll_backoff_max_s: longest wait between polls while the registry is failing.
        fetch: network limits.
    """

    url: str
    trust_root: str
    poll_interval_s: float = 30.0
    poll_jitter_s: float = 5.0
    poll_backoff_max_s: float = 300.0
    fetch: FetchSettings = field(default_factory=FetchSettings)


@dataclass(frozen=True, slots=True)
class PathsConfig:
    """Folders the agent owns: the content-addressed store and the agent state."""

    store: str = "/var/lib/edgeagent/store"
    state: str = "/var/lib/edgeagent/state"


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """The VM runners: edge-tender (None: search as `edgeagent boot` does) and QEMU.

    ``hypervisor`` says what the device runs on: "kvm" (hvt and QEMU targets) or "xen" (the
    agent runs in dom0: xen targets run under xl, ADR 0012; hvt targets cannot run).
    """

    tender: str | None = None
    qemu: str = "qemu-system-x86_64"
    accel: str = "auto"
    stop_grace_s: float = 5.0
    hypervisor: str = "kvm"


@dataclass(frozen=True, slots=True)
class XenConfig:
    """The xen runner (used when ``runner.hypervisor = "xen"``; ADR 0012).

    Attributes:
        xl: path of xl, or a name looked up on PATH.
        console_dir: xenconsoled's ``--log-dir`` (it must run with ``--log=guest``).
        tsc_mode: xl ``tsc_mode`` of every domain ("native" under QEMU TCG).
        vcpus: virtual CPUs per domain.
        domain_prefix: domain names are ``<prefix><workload>-<8 hex>``.
        poll_interval_s: seconds between ``xl list`` polls of a running domain.
    """

    xl: str = "xl"
    console_dir: str = "/var/log/xen"
    tsc_mode: str = "native"
    vcpus: int = 1
    domain_prefix: str = "edge-"
    poll_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Supervision: heartbeat deadline, OTA health window, restart back-off, crash loops.

    Attributes:
        heartbeat_deadline_s: a running guest must print a heartbeat line at least this often
            (the first one counts from boot).
        heartbeat_required: when false, only the exit status counts.
        health_window_s: how long a new version must stay healthy before it is committed.
        restart_backoff_initial_s: first restart delay; doubles per consecutive failure...
        restart_backoff_max_s: ...up to this.
        crash_loop_restarts: this many restarts...
        crash_loop_window_s: ...within this many seconds is a crash loop (restarts continue at
            the maximum back-off, and the workload is reported as crash-looping).
    """

    heartbeat_deadline_s: float = 10.0
    heartbeat_required: bool = True
    health_window_s: float = 10.0
    restart_backoff_initial_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Resource limits: concurrent pulls, workloads run, total guest memory."""

    max_concurrent_pulls: int = 2
    max_workloads: int = 32
    max_mem_mb: int = 2048


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """The diagnostics console on serial ports.

    Attributes:
        ports: serial device paths (``/dev/ttyS0``, a pty); empty = no serial console.
        baudrate: line speed for real ttys.
        status_interval_s: seconds between JSON status lines.
        commands: mode of each state-changing command (allowed, confirm or disabled).
    """

    ports: tuple[str, ...] = ()
    baudrate: int = 115200
    status_interval_s: float = 10.0
    commands: tuple[tuple[str, CommandMode], ...] = tuple(STATEFUL_COMMANDS.items())

    def command_mode(self, name: str) -> CommandMode:
        """The mode of console command ``name`` ("allowed" for read-only commands)."""
        return dict(self.commands).get(name, "allowed")


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """A TCP listen address; ``listen = ""`` in the file disables the service."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The optional fleet heartbeat: the status JSON POSTed to ``url`` every ``interval_s``."""

    url: str
    interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class HotplugConfig:
    """Hot-plug (issue 4 §8, docs/hotplug.md): USB-serial consoles and offline update media.

    Attributes:
        enabled: watch kernel/udev device events at all.
        serial: a USB-serial adapter that appears gets the diagnostics console.
        media: removable storage carrying ``edgeagent-registry/`` is an offline update source.
        mount_root: where media are mounted read-only (None: ``STATE/media``).
        media_devices: extra kernel block device names (fnmatch patterns, e.g. ``loop*``)
            treated as removable media although the kernel does not say so.
    """

    enabled: bool = False
    serial: bool = True
    media: bool = True
    mount_root: str | None = None
    media_devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostOtaConfig:
    """A/B host OS updates (issue 5 §3, ADR 0010, docs/host-ota.md).

    Attributes:
        enabled: follow the host-slot target at all.
        target: the target name of this board's host slot images (``repo add-host --name``).
        reboot_window: "always" or "HH:MM-HH:MM" (UTC, may wrap midnight): when a staged
            update may reboot the device.
        health_window_s: after the trial boot, the agent must be healthy (trust loaded,
            workloads healthy) within this many seconds, or the slot is rolled back.
        boot_prefix: the UKI file names' prefix on the ESP (the host recipe's image name).
        slot_a, slot_b: slot partitions (block devices); None: the partitions named
            root-a / root-b.
        esp: the ESP partition; None: the partition named esp. Mounted while it is changed.
        esp_dir: an ESP that is already mounted (or a folder standing in for it); when set,
            ``esp`` is not mounted.
        checkpoint_mb: fsync and persist the write offset every this many MiB.
    """

    enabled: bool = False
    target: str = "host-slot"
    reboot_window: str = "always"
    health_window_s: float = 120.0
    boot_prefix: str = "edgeos"
    slot_a: str | None = None
    slot_b: str | None = None
    esp: str | None = None
    esp_dir: str | None = None
    checkpoint_mb: int = 8


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole validated config."""

    source: str
    registry: RegistryConfig
    device: DeviceConfig = field(default_factory=DeviceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    xen: XenConfig = field(default_factory=XenConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    http: ListenConfig | None = field(default_factory=lambda: ListenConfig("127.0.0.1", 8480))
    console_socket: ListenConfig | None = None
    fleet: FleetConfig | None = None
    hotplug: HotplugConfig = field(default_factory=HotplugConfig)
    host_ota: HostOtaConfig = field(default_factory=HostOtaConfig)
    schema_version: int = SCHEMA_VERSION


class _Table:
    """One TOML table being read: tracks which keys were used, names key paths in errors."""

    def __init__(self, source: str, path: str, data: object) -> None:
        self.source = source
        self.path = path
        if not isinstance(data, dict):
            raise self.error(path or "(top level)", "a table", data)
        self.data: dict[str, object] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, key: str, expected: str, got: object) -> ConfigError:
        return ConfigError(f"{self.source}: key '{key}': expected {expected}, got {got!r}")

    def raw(self, name: str) -> object | None:
        self.used.add(name)
        return self.data.get(name)

    def table(self, name: str) -> _Table:
        value = self.raw(name)
        return _Table(self.source, self.key(name), {} if value is None else value)

    def string(self, name: str, default: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            what = "a string" if pattern is None else f"a string matching {pattern.pattern}"
            raise self.error(self.key(name), what, value)
        return value

    def required_string(self, name: str) -> str:
        value = self.raw(name)
        if not isinstance(value, str) or not value:
            raise self.error(self.key(name), "a non-empty string (required)", value)
        return value

    def number(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number) and (number > 0 or (allow_zero and number == 0)):
                return number
        what = "a non-negative number" if allow_zero else "a positive number"
        raise self.error(self.key(name), what, value)

    def integer(self, name: str, default: int, low: int = 1, high: int = 1 << 31) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise self.error(self.key(name), f"an integer in {low}..{high}", value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(self.key(name), "true or false", value)
        return value

    def strings(self, name: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        what = "a list of strings" if pattern is None else f"a list of {pattern.pattern} strings"
        if not isinstance(value, list):
            raise self.error(self.key(name), what, value)
        out: list[str] = []
        for item in value:
            if not isinstance(item, str) or not item:
                raise self.error(self.key(name), what, value)
            if pattern is not None and not pattern.fullmatch(item):
                raise self.error(self.key(name), what, value)
            out.append(item)
        return tuple(out)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.source}: unknown key '{self.key(unknown[0])}'")


def _path(value: str, base_dir: str) -> str:
    return posixpath.normpath(posixpath.join(base_dir, value))


def _listen(t: _Table, default: ListenConfig | None) -> ListenConfig | None:
    value = t.raw("listen")
    t.done()
    if value is None:
        return default
    if value == "":
        return None
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if sep and host and port.isdigit() and 0 <= int(port) <= 65535:
            return ListenConfig(host, int(port))
    raise t.error(t.key("listen"), "'HOST:PORT' (port 0-65535) or '' to disable", value)


def _registry(t: _Table, base_dir: str) -> RegistryConfig:
    url = t.required_string("url")
    if not _URL_RE.fullmatch(url):
        raise t.error(t.key("url"), "an http:// or https:// URL", url)
    trust_root = _path(t.required_string("trust_root"), base_dir)
    d = FetchSettings()
    f = t.table("fetch")
    fetch = FetchSettings(
        connect_timeout_s=f.number("connect_timeout_s", d.connect_timeout_s),
        read_timeout_s=f.number("read_timeout_s", d.read_timeout_s),
        metadata_timeout_s=f.number("metadata_timeout_s", d.metadata_timeout_s),
        min_throughput_bps=f.integer("min_throughput_bps", d.min_throughput_bps, low=0),
        throughput_grace_s=f.number("throughput_grace_s", d.throughput_grace_s),
        retries=f.integer("retries", d.retries, low=0, high=100),
        backoff_initial_s=f.number("backoff_initial_s", d.backoff_initial_s),
        backoff_max_s=f.number("backoff_max_s", d.backoff_max_s),
    )
    f.done()
    cfg = RegistryConfig(
        url=url.rstrip("/") + "/",
        trust_root=trust_root,
        poll_interval_s=t.number("poll_interval_s", 30.0),
        poll_jitter_s=t.number("poll_jitter_s", 5.0, allow_zero=True),
        poll_backoff_max_s=t.number("poll_backoff_max_s", 300.0),
        fetch=fetch,
    )
    t.done()
    return cfg


def _health(t: _Table) -> HealthConfig:
    d = HealthConfig()
    cfg = HealthConfig(
        heartbeat_deadline_s=t.number("heartbeat_deadline_s", d.heartbeat_deadline_s),
        heartbeat_required=t.boolean("heartbeat_required", d.heartbeat_required),
        health_window_s=t.number("health_window_s", d.health_window_s, allow_zero=True),
        restart_backoff_initial_s=t.number(
            "restart_backoff_initial_s", d.restart_backoff_initial_s
        ),
        restart_backoff_max_s=t.number("restart_backoff_max_s", d.restart_backoff_max_s),
        crash_loop_restarts=t.integer("crash_loop_restarts", d.crash_loop_restarts, high=10000),
        crash_loop_window_s=t.number("crash_loop_window_s", d.crash_loop_window_s),
    )
    t.done()
    if cfg.restart_backoff_max_s < cfg.restart_backoff_initial_s:
        raise t.error(
            t.key("restart_backoff_max_s"),
            f"a number >= restart_backoff_initial_s ({cfg.restart_backoff_initial_s})",
            cfg.restart_backoff_max_s,
        )
    return cfg


def _serial(t: _Table, base_dir: str) -> SerialConfig:
    d = SerialConfig()
    ports = tuple(_path(p, base_dir) for p in t.strings("ports"))
    c = t.table("commands")
    modes: dict[str, CommandMode] = dict(STATEFUL_COMMANDS)
    for name in STATEFUL_COMMANDS:
        value = c.raw(name)
        if value is None:
            continue
        for mode in COMMAND_MODES:
            if value == mode:
                modes[name] = mode
                break
        else:
            raise c.error(c.key(name), "one of 'allowed', 'confirm', 'disabled'", value)
    c.done()
    cfg = SerialConfig(
        ports=ports,
        baudrate=t.integer("baudrate", d.baudrate, low=50, high=4_000_000),
        status_interval_s=t.number("status_interval_s", d.status_interval_s),
        commands=tuple(modes.items()),
    )
    t.done()
    return cfg


_DEVICE_PATTERN_RE = re.compile(r"[A-Za-z0-9_*?\[\]!.-]{1,64}")


def _fleet(t: _Table) -> FleetConfig | None:
    url = t.string("url", "")
    interval = t.number("interval_s", FleetConfig("").interval_s)
    t.done()
    if url == "":
        return None
    if not _URL_RE.fullmatch(url):
        raise t.error(t.key("url"), "an http:// or https:// URL (or '' to disable)", url)
    return FleetConfig(url=url, interval_s=interval)


def _hotplug(t: _Table, base_dir: str) -> HotplugConfig:
    d = HotplugConfig()
    mount_root = t.string("mount_root", "")
    cfg = HotplugConfig(
        enabled=t.boolean("enabled", d.enabled),
        serial=t.boolean("serial", d.serial),
        media=t.boolean("media", d.media),
        mount_root=_path(mount_root, base_dir) if mount_root else None,
        media_devices=t.strings("media_devices", _DEVICE_PATTERN_RE),
    )
    t.done()
    return cfg


_XEN_PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def _xen(t: _Table, base_dir: str) -> XenConfig:
    d = XenConfig()
    xl = t.string("xl", d.xl)
    if not xl:
        raise t.error(t.key("xl"), "a path or a program name", xl)
    cfg = XenConfig(
        xl=_path(xl, base_dir) if "/" in xl else xl,
        console_dir=_path(t.string("console_dir", d.console_dir), base_dir),
        tsc_mode=t.string("tsc_mode", d.tsc_mode),
        vcpus=t.integer("vcpus", d.vcpus, 1, 64),
        domain_prefix=t.string("domain_prefix", d.domain_prefix, _XEN_PREFIX_RE),
        poll_interval_s=t.number("poll_interval_s", d.poll_interval_s),
    )
    if cfg.tsc_mode not in XEN_TSC_MODES:
        raise t.error(t.key("tsc_mode"), f"one of {XEN_TSC_MODES}", cfg.tsc_mode)
    t.done()
    return cfg


_WINDOW_RE = re.compile(r"always|([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")


def _host_ota(t: _Table, base_dir: str) -> HostOtaConfig:
    d = HostOtaConfig()

    def opt_path(name: str) -> str | None:
        value = t.string(name, "")
        return _path(value, base_dir) if value else None

    cfg = HostOtaConfig(
        enabled=t.boolean("enabled", d.enabled),
        target=t.string("target", d.target, _ID_RE),
        reboot_window=t.string("reboot_window", d.reboot_window, _WINDOW_RE),
        health_window_s=t.number("health_window_s", d.health_window_s),
        boot_prefix=t.string("boot_prefix", d.boot_prefix, _ID_RE),
        slot_a=opt_path("slot_a"),
        slot_b=opt_path("slot_b"),
        esp=opt_path("esp"),
        esp_dir=opt_path("esp_dir"),
        checkpoint_mb=t.integer("checkpoint_mb", d.checkpoint_mb, 1, 4096),
    )
    t.done()
    if cfg.reboot_window != "always" and cfg.reboot_window[:5] == cfg.reboot_window[6:]:
        raise t.error(t.key("reboot_window"), "a window that is not empty", cfg.reboot_window)
    return cfg


def parse_config(data: bytes, source: str = "agent.toml", base_dir: str = "/") -> AgentConfig:
    """Parse and validate an agent config.

    Args:
        data: the file's bytes.
        source: the file's name, for error messages.
        base_dir: folder that relative paths are relative to (the config file's folder).

    Returns:
        The validated config.

    Raises:
        ConfigError: not UTF-8 TOML, an unknown key, a wrong type or value (names the key path).
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    top = _Table(source, "", doc)
    schema = top.integer("schema_version", SCHEMA_VERSION, low=SCHEMA_VERSION, high=SCHEMA_VERSION)

    dev = top.table("device")
    device = DeviceConfig(
        id=dev.string("id", DeviceConfig().id, _ID_RE), groups=dev.strings("groups", _ID_RE)
    )
    dev.done()

    reg = top.raw("registry")
    if reg is None:
        raise ConfigError(f"{source}: section [registry] is required (url and trust_root)")
    registry = _registry(_Table(source, "registry", reg), base_dir)

    p = top.table("paths")
    d_paths = PathsConfig()
    paths = PathsConfig(
        store=_path(p.string("store", d_paths.store), base_dir),
        state=_path(p.string("state", d_paths.state), base_dir),
    )
    p.done()
    if paths.store == paths.state:
        raise p.error(p.key("state"), "a folder different from paths.store", paths.state)

    r = top.table("runner")
    tender = r.string("tender", "")
    accel = r.string("accel", "auto")
    if accel not in ACCELS:
        raise r.error(r.key("accel"), f"one of {ACCELS}", accel)
    runner = RunnerConfig(
        tender=_path(tender, base_dir) if tender else None,
        qemu=r.string("qemu", RunnerConfig().qemu),
        accel=accel,
        stop_grace_s=r.number("stop_grace_s", RunnerConfig().stop_grace_s),
        hypervisor=r.string("hypervisor", "kvm"),
    )
    if runner.hypervisor not in HYPERVISORS:
        raise r.error(r.key("hypervisor"), f"one of {HYPERVISORS}", runner.hypervisor)
    r.done()
    xen = _xen(top.table("xen"), base_dir)

    health = _health(top.table("health"))

    lim = top.table("limits")
    d_lim = LimitsConfig()
    limits = LimitsConfig(
        max_concurrent_pulls=lim.integer("max_concurrent_pulls", d_lim.max_concurrent_pulls, 1, 64),
        max_workloads=lim.integer("max_workloads", d_lim.max_workloads, 1, 1024),
        max_mem_mb=lim.integer("max_mem_mb", d_lim.max_mem_mb, 1, 1 << 20),
    )
    lim.done()

    serial = _serial(top.table("serial"), base_dir)
    http = _listen(top.table("http"), ListenConfig("127.0.0.1", 8480))
    console_socket = _listen(top.table("console_socket"), None)
    fleet = _fleet(top.table("fleet"))
    hotplug = _hotplug(top.table("hotplug"), base_dir)
    host_ota = _host_ota(top.table("host_ota"), base_dir)
    top.done()
    return AgentConfig(
        source=source,
        registry=registry,
        device=device,
        paths=paths,
        runner=runner,
        xen=xen,
        health=health,
        limits=limits,
        serial=serial,
        http=http,
        console_socket=console_socket,
        fleet=fleet,
        hotplug=hotplug,
        host_ota=host_ota,
        schema_version=schema,
    )

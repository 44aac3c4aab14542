"""Host image recipe: ``host-os/recipe.toml`` bytes -> a validated, frozen `HostRecipe`. [pure]

The recipe names everything the host image is built from: the Debian suite and packages, the
pinned kernel package and the modules the initramfs loads, the pinned Python wheels, the agent
and tender versions, the baked-in registry, network and console, partition sizes and the size
budget of a slot image. Validation is strict: unknown keys, missing keys, wrong types and
out-of-range values raise `ConfigError` naming the file, the field and what was expected.

This module only looks at the bytes it is given: it does not check that files exist, does not
read environment variables (the build shell applies overrides with `with_overrides`) and does
not build anything.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass

from edgeagent.errors import ConfigError

SCHEMA_VERSION = 1

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~-]{0,63}")
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")
SUITE_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
MODULE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
WHEEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}==[0-9A-Za-z][0-9A-Za-z.+!-]{0,63}")
EXCLUDE_RE = re.compile(r"/[A-Za-z0-9_.*/+-]{1,200}")
CMDLINE_RE = re.compile(r"[A-Za-z0-9_.,:=/+ -]{0,1000}")
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TTY_RE = re.compile(r"tty[A-Za-z0-9]{1,16}")
URL_RE = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?")
RELPATH_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
BAUDRATES = (9600, 19200, 38400, 57600, 115200)
HYPERVISORS = ("kvm", "xen")
#: The UARTs Xen can own, by the Linux name the recipe's [console] device uses.
XEN_UARTS = {"ttyS0": "com1", "ttyS1": "com2"}
PARTITION_MB_MAX = 65536


@dataclass(frozen=True, slots=True)
class Debian:
    """Where the root filesystem comes from."""

    suite: str
    sources: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Kernel:
    """The pinned kernel package, its extra command line and the initramfs modules."""

    package: str
    cmdline: str
    modules: tuple[str, ...]
    fallback_modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Agent:
    """The agent as baked into the image."""

    version: str
    registry_url: str
    repository: str
    device_id: str
    poll_interval_s: float
    status_interval_s: float
    host_ota: bool


@dataclass(frozen=True, slots=True)
class Network:
    """Static configuration of eth0; an empty address leaves it down."""

    address: str
    gateway: str


@dataclass(frozen=True, slots=True)
class Partitions:
    """Partition sizes in MiB (GPT order esp | root-a | root-b | data)."""

    esp_mb: int
    root_mb: int
    data_mb: int


@dataclass(frozen=True, slots=True)
class Xen:
    """The Xen variant (``image.hypervisor = "xen"``): hypervisor package, its command line,
    the dom0 tools installed into the root filesystem and the dom0 modules."""

    package: str
    options: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostRecipe:
    """A validated host image recipe."""

    name: str
    version: str
    source_date_epoch: int
    slot_budget_mb: int
    debian: Debian
    kernel: Kernel
    wheels: tuple[str, ...]
    agent: Agent
    tender_version: str
    tender_path: str
    network: Network
    console_device: str
    console_baudrate: int
    partitions: Partitions
    hypervisor: str = "kvm"
    xen: Xen | None = None


class _Table:
    """One TOML table being read: every access is checked, leftovers are errors."""

    def __init__(self, source: str, prefix: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{prefix}]: expected a table, got {type(data).__name__}")
        self.source = source
        self.prefix = prefix
        self.data: dict[str, object] = dict(data)
        self.seen: set[str] = set()

    def _where(self, key: str) -> str:
        name = f"{self.prefix}.{key}" if self.prefix else key
        return f"{self.source}: field '{name}'"

    def has(self, key: str) -> bool:
        """Whether an optional field is present (it then counts as seen)."""
        self.seen.add(key)
        return key in self.data

    def raw(self, key: str) -> object:
        self.seen.add(key)
        if key not in self.data:
            raise ConfigError(f"{self._where(key)}: required field is missing")
        return self.data[key]

    def table(self, key: str) -> _Table:
        name = f"{self.prefix}.{key}" if self.prefix else key
        return _Table(self.source, name, self.raw(key))

    def string(self, key: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or pattern.fullmatch(value) is None:
            raise ConfigError(f"{self._where(key)}: expected {what}, got {value!r}")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                f"{self._where(key)}: expected an integer from {low} to {high}, got {value!r}"
            )
        return value

    def number(self, key: str, low: float, high: float) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._where(key)}: expected a number, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{self._where(key)}: expected {low} to {high}, got {value!r}")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where(key)}: expected true or false, got {value!r}")
        return value

    def strings(
        self, key: str, pattern: re.Pattern[str], what: str, *, allow_empty: bool = True
    ) -> tuple[str, ...]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise ConfigError(f"{self._where(key)}: expected a list of {what}, got {value!r}")
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or pattern.fullmatch(item) is None:
                raise ConfigError(f"{self._where(f'{key}[{i}]')}: expected {what}, got {item!r}")
            if item in out:
                raise ConfigError(f"{self._where(f'{key}[{i}]')}: duplicate entry {item!r}")
            out.append(item)
        if not out and not allow_empty:
            raise ConfigError(f"{self._where(key)}: expected at least one of {what}")
        return tuple(out)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            where = f"[{self.prefix}]" if self.prefix else "top level"
            raise ConfigError(
                f"{self.source}: unknown field {unknown[0]!r} in {where} "
                f"(allowed: {', '.join(sorted(self.seen))})"
            )


def _network(t: _Table) -> Network:
    address = t.raw("address")
    gateway = t.raw("gateway")
    if not isinstance(address, str):
        raise ConfigError(f"{t.source}: field 'network.address': expected a string")
    if not isinstance(gateway, str):
        raise ConfigError(f"{t.source}: field 'network.gateway': expected a string")
    iface: ipaddress.IPv4Interface | None = None
    if address:
        try:
            iface = ipaddress.IPv4Interface(address)
        except ValueError:
            raise ConfigError(
                f"{t.source}: field 'network.address': expected an IPv4 address with a prefix "
                f"length like '10.0.2.15/24' or '', got {address!r}"
            ) from None
        if "/" not in address:
            raise ConfigError(
                f"{t.source}: field 'network.address': expected a prefix length, got {address!r}"
            )
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise ConfigError(
                f"{t.source}: field 'network.gateway': expected an IPv4 address or '', "
                f"got {gateway!r}"
            ) from None
        if iface is None or gw not in iface.network:
            raise ConfigError(
                f"{t.source}: field 'network.gateway': {gateway} is not inside "
                f"network.address {address!r}"
            )
    return Network(address=address, gateway=gateway)


def parse_recipe(data: bytes, source: str) -> HostRecipe:
    """Parse and validate a host recipe.

    Args:
        data: the bytes of ``recipe.toml``.
        source: the file name used in error messages.

    Returns:
        The validated recipe.

    Raises:
        ConfigError: the TOML is malformed, or a field is unknown, missing, of the wrong type
            or out of range; the message names ``source`` and the field.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    top = _Table(source, "", doc)
    schema = top.integer("schema_version", 1, 1_000_000)
    if schema != SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: field 'schema_version': expected {SCHEMA_VERSION}, got {schema}"
        )

    image = top.table("image")
    name = image.string("name", NAME_RE, "a lower-case name like 'edgeos'")
    version = image.string("version", VERSION_RE, "a version like '1.2.0'")
    epoch = image.integer("source_date_epoch", 315532800, 4102444800)
    budget = image.integer("slot_budget_mb", 8, 4096)
    hypervisor = "kvm"
    if image.has("hypervisor"):
        hypervisor = image.string(
            "hypervisor", re.compile("|".join(HYPERVISORS)), f"one of {', '.join(HYPERVISORS)}"
        )
    image.finish()

    deb = top.table("debian")
    debian = Debian(
        suite=deb.string("suite", SUITE_RE, "a Debian suite like 'bookworm'"),
        sources=deb.string("sources", re.compile(r"/[A-Za-z0-9_./-]+"), "an absolute path"),
        packages=deb.strings("packages", PACKAGE_RE, "Debian package names", allow_empty=False),
        exclude=deb.strings("exclude", EXCLUDE_RE, "absolute path globs"),
    )
    deb.finish()

    kern = top.table("kernel")
    kernel = Kernel(
        package=kern.string(
            "package", re.compile(r"linux-image-[a-z0-9.+-]+"), "a versioned linux-image package"
        ),
        cmdline=kern.string("cmdline", CMDLINE_RE, "kernel parameters (no quotes)"),
        modules=kern.strings("modules", MODULE_RE, "kernel module names", allow_empty=False),
        fallback_modules=kern.strings("fallback_modules", MODULE_RE, "kernel module names"),
    )
    kern.finish()

    py = top.table("python")
    wheels = py.strings("wheels", WHEEL_RE, "pinned requirements like 'trio==0.35.0'")
    py.finish()

    ag = top.table("agent")
    agent = Agent(
        version=ag.string("version", VERSION_RE, "a version like '0.1.0'"),
        registry_url=ag.string("registry_url", URL_RE, "an http(s) URL"),
        repository=ag.string("repository", RELPATH_RE, "a relative path"),
        device_id=ag.string("device_id", DEVICE_ID_RE, "a device id"),
        poll_interval_s=ag.number("poll_interval_s", 0.1, 86400.0),
        status_interval_s=ag.number("status_interval_s", 0.1, 3600.0),
        host_ota=ag.boolean("host_ota"),
    )
    ag.finish()

    tnd = top.table("tender")
    tender_version = tnd.string("version", VERSION_RE, "a version like '0.1.0'")
    tender_path = tnd.string("path", RELPATH_RE, "a path relative to the recipe")
    tnd.finish()

    net = top.table("network")
    network = _network(net)
    net.finish()

    con = top.table("console")
    console_device = con.string("device", TTY_RE, "a tty name like 'ttyS0'")
    baud = con.integer("baudrate", 1, 4_000_000)
    if baud not in BAUDRATES:
        raise ConfigError(f"{source}: field 'console.baudrate': expected one of {BAUDRATES}")
    con.finish()

    xen: Xen | None = None
    if top.has("xen"):
        xt = top.table("xen")
        xen = Xen(
            package=xt.string(
                "package",
                re.compile(r"xen-hypervisor-[a-z0-9.+-]+"),
                "a versioned xen-hypervisor package",
            ),
            options=xt.string("options", CMDLINE_RE, "Xen command line options (no quotes)"),
            packages=xt.strings("packages", PACKAGE_RE, "Debian package names"),
            modules=xt.strings("modules", MODULE_RE, "kernel module names"),
        )
        xt.finish()
        if "console=" in xen.options:
            raise ConfigError(
                f"{source}: field 'xen.options': leave out console=: the build adds it from "
                "[console]"
            )
    if hypervisor == "xen":
        if xen is None:
            raise ConfigError(
                f"{source}: field 'image.hypervisor': \"xen\" needs a [xen] table (package, "
                "options, packages, modules)"
            )
        if console_device not in XEN_UARTS:
            raise ConfigError(
                f"{source}: field 'console.device': with image.hypervisor = \"xen\" the console "
                f"must be a UART Xen can own ({', '.join(XEN_UARTS)}), got {console_device!r}"
            )

    part = top.table("partitions")
    partitions = Partitions(
        esp_mb=part.integer("esp_mb", 33, PARTITION_MB_MAX),
        root_mb=part.integer("root_mb", 16, PARTITION_MB_MAX),
        data_mb=part.integer("data_mb", 16, PARTITION_MB_MAX),
    )
    part.finish()
    if budget > partitions.root_mb:
        raise ConfigError(
            f"{source}: field 'image.slot_budget_mb': {budget} MiB does not fit in "
            f"partitions.root_mb ({partitions.root_mb} MiB)"
        )
    top.finish()

    return HostRecipe(
        name=name,
        version=version,
        source_date_epoch=epoch,
        slot_budget_mb=budget,
        debian=debian,
        kernel=kernel,
        wheels=wheels,
        agent=agent,
        tender_version=tender_version,
        tender_path=tender_path,
        network=network,
        console_device=console_device,
        console_baudrate=baud,
        partitions=partitions,
        hypervisor=hypervisor,
        xen=xen,
    )


def with_overrides(
    recipe: HostRecipe, *, registry_url: str | None, repository: str | None, source: str
) -> HostRecipe:
    """Return ``recipe`` with the build-time registry overrides applied and validated.

    Raises:
        ConfigError: an override is malformed; the message names ``source`` (the variable).
    """
    agent = recipe.agent
    if registry_url is not None:
        if URL_RE.fullmatch(registry_url) is None:
            raise ConfigError(
                f"{source}: registry URL: expected an http(s) URL, got {registry_url!r}"
            )
        agent = dataclasses.replace(agent, registry_url=registry_url)
    if repository is not None:
        if not repository or "\n" in repository:
            raise ConfigError(f"{source}: repository: expected a folder path, got {repository!r}")
        agent = dataclasses.replace(agent, repository=repository)
    return dataclasses.replace(recipe, agent=agent)


def with_hypervisor(recipe: HostRecipe, hypervisor: str, *, source: str) -> HostRecipe:
    """Return ``recipe`` built for ``hypervisor`` (the build's ``--hypervisor`` option).

    Raises:
        ConfigError: unknown hypervisor, or "xen" without a [xen] table or a UART console.
    """
    if hypervisor not in HYPERVISORS:
        raise ConfigError(f"{source}: expected one of {', '.join(HYPERVISORS)}, got {hypervisor!r}")
    if hypervisor == "xen":
        if recipe.xen is None:
            raise ConfigError(f"{source}: xen: the recipe has no [xen] table")
        if recipe.console_device not in XEN_UARTS:
            raise ConfigError(
                f"{source}: xen: console.device must be one of {', '.join(XEN_UARTS)}"
            )
    return dataclasses.replace(recipe, hypervisor=hypervisor)

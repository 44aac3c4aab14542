"""Xen domains for the xen runner: config text, names, ``xl`` output, end and adoption. [pure]

The xen runner (`edgeagent.vmm.xen_runner`, ADR 0012) boots a PVH image as a Xen domain with
``xl create``. Every decision it makes lives here:

- `XenSpec` + `render_config`: the xl domain config (``type = "pvh"``, kernel, memory, vcpus,
  ``cmdline``, ``tsc_mode``, a uuid we choose, and ``on_poweroff``/``on_reboot``/``on_crash``/
  ``on_watchdog = "preserve"`` so that the domain stays, shut down, until the runner has read
  its shutdown reason and destroys it). Every string is quoted and escaped; values xl could
  misread (control characters, non-ASCII) are refused with a `ConfigError` naming the field.
- `domain_name`: the agent's naming scheme ``<prefix><workload>-<8 hex>``, the hex being a
  digest of the version key, so the two versions that overlap during an OTA update have
  different names and the name of a version is the same after an agent restart.
- `parse_list` (``xl list`` and ``xl list -v``), `parse_list_long` (``xl list -l``, JSON) and
  `parse_domid` (``xl domid``): garbage is a `VmError` naming the command, never a guess.
- `describe_domain_end` / `domain_result`: the shutdown reason (and the status the guest printed
  on its console) -> the same `ExitInfo` / `VmResult` shapes the other runners return.
- `DomainRecord` (the runner's ``domains.json``), `decide_start` and `decide_cleanup`: which
  domains are ours. A domain is ours only when our record names it *and* its uuid is the one
  we wrote into its config; any other domain, even one carrying our prefix, is never adopted,
  shut down or destroyed. A name collision with such a domain refuses the start.
- `plan_console_read`: how much of xenconsoled's guest log to read next (late file, truncation,
  rotation, and a flooding guest: the backlog is bounded and the oldest bytes are skipped).

What this module does not do: it runs nothing, reads no files and knows no clock; the shell
(`edgeagent.vmm.xen_runner`) runs ``xl``, tails the log and feeds the results back in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from edgeagent.errors import ConfigError, DomainCollisionError, VmError
from edgeagent.vmm.events import VmResult
from edgeagent.vmm.spec import GUEST_ABORT, TENDER_SETUP, TENDER_SIGNAL, ExitInfo

#: Xen domain names we create: lower-case letters, digits and '-', at most 63 characters.
DOMAIN_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: A workload name usable in a domain name.
WORKLOAD_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TSC_MODES = ("default", "always_emulate", "native", "native_paravirt")
DEFAULT_PREFIX = "edge-"
DEFAULT_TSC_MODE = "native"
MAX_MEM_MB = 4096
MAX_VCPUS = 64
#: Longest guest command line we write (xl and PVH have larger limits; ours are short).
MAX_CMDLINE = 2048

# Shutdown reason codes (xen/include/public/sched.h SHUTDOWN_*, libxl_shutdown_reason).
SHUTDOWN_POWEROFF = 0
SHUTDOWN_REBOOT = 1
SHUTDOWN_SUSPEND = 2
SHUTDOWN_CRASH = 3
SHUTDOWN_WATCHDOG = 4
SHUTDOWN_SOFT_RESET = 5
SHUTDOWN_NAMES = {
    SHUTDOWN_POWEROFF: "poweroff",
    SHUTDOWN_REBOOT: "reboot",
    SHUTDOWN_SUSPEND: "suspend",
    SHUTDOWN_CRASH: "crash",
    SHUTDOWN_WATCHDOG: "watchdog",
    SHUTDOWN_SOFT_RESET: "soft_reset",
}
#: The fifth state letter of ``xl list`` is the shutdown reason (xl_info.c: "-rscwS").
_REASON_LETTERS = "-rscwS"

#: The last line the xen platform of image-recipes prints before SCHEDOP_shutdown
#: (image-recipes/libos/xen, ADR 0011): ``EXIT status=<N> reason=<poweroff|crash>``.
EXIT_LINE_RE = re.compile(r"^EXIT status=(-?\d{1,10}) reason=(poweroff|crash)$")

#: Console bytes a poll may be behind; older bytes of a flooding guest are skipped.
MAX_CONSOLE_BACKLOG = 256 * 1024


@dataclass(frozen=True, slots=True)
class XenSpec:
    """What to boot as a Xen domain.

    Attributes:
        name: the domain name (`DOMAIN_NAME_RE`).
        kernel: path of the PVH ELF in dom0.
        mem_mb: guest memory in MiB.
        vcpus: virtual CPUs.
        args: the guest's arguments (joined by spaces into ``cmdline``).
        tsc_mode: xl's ``tsc_mode``; "native" under QEMU TCG (xen-notes.md).
    """

    name: str
    kernel: str
    mem_mb: int
    vcpus: int = 1
    args: tuple[str, ...] = ()
    tsc_mode: str = DEFAULT_TSC_MODE

    def __post_init__(self) -> None:
        where = f"xen domain {self.name!r}"
        check_domain_name(self.name)
        _check_text(where, "kernel", self.kernel)
        if not self.kernel.startswith("/"):
            raise ConfigError(
                f"{where}: field 'kernel': expected an absolute path, got {self.kernel!r}"
            )
        if not 1 <= self.mem_mb <= MAX_MEM_MB:
            raise ConfigError(
                f"{where}: field 'mem_mb': expected 1..{MAX_MEM_MB}, got {self.mem_mb}"
            )
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ConfigError(f"{where}: field 'vcpus': expected 1..{MAX_VCPUS}, got {self.vcpus}")
        if self.tsc_mode not in TSC_MODES:
            raise ConfigError(
                f"{where}: field 'tsc_mode': expected one of {TSC_MODES}, got {self.tsc_mode!r}"
            )
        for arg in self.args:
            _check_text(where, "args", arg)
        if len(self.cmdline) > MAX_CMDLINE:
            raise ConfigError(f"{where}: field 'args': longer than {MAX_CMDLINE} characters")

    @property
    def cmdline(self) -> str:
        """The guest command line."""
        return " ".join(self.args)


def check_domain_name(name: str) -> None:
    """Raise `ConfigError` unless ``name`` is a domain name we create."""
    if not DOMAIN_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"xen domain name {name!r}: expected 1-63 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        )


def _check_text(where: str, field: str, value: str) -> None:
    bad = next((c for c in value if not " " <= c <= "~"), None)
    if bad is not None:
        raise ConfigError(
            f"{where}: field '{field}': {value!r} contains {bad!r}; expected printable ASCII"
        )


def quote(value: str) -> str:
    """An xl config string literal: double quotes, with ``\\`` and ``"`` escaped.

    libxlu reads ``\\\\``, ``\\"`` and ``\\'`` back as the character; callers have already
    refused control characters and non-ASCII (`_check_text`).
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def domain_name(prefix: str, workload: str, key: tuple[str, str, str]) -> str:
    """The domain name of one version of a workload: ``<prefix><workload>-<8 hex>``.

    Args:
        prefix: the configured prefix (`PREFIX_RE`, e.g. "edge-").
        workload: the workload (target) name; must be `WORKLOAD_NAME_RE`.
        key: the version key (name, version, sha256).

    Raises:
        ConfigError: the workload name cannot be part of a domain name, or the result is too long.
    """
    if not PREFIX_RE.fullmatch(prefix):
        raise ConfigError(f"xen.domain_prefix {prefix!r}: expected {PREFIX_RE.pattern}")
    if not WORKLOAD_NAME_RE.fullmatch(workload):
        raise ConfigError(
            f"workload {workload!r}: xen workload names become domain names; expected "
            "a-z, 0-9 and '-' only (not starting or ending with '-')"
        )
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:8]
    name = f"{prefix}{workload}-{digest}"
    if not DOMAIN_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"workload {workload!r}: domain name {name!r} is longer than 63 characters"
        )
    return name


def render_config(spec: XenSpec, uuid: str) -> str:
    """The xl domain config text for ``spec`` (ADR 0012 §2).

    Args:
        spec: what to boot.
        uuid: the domain's uuid, chosen by the runner and recorded as proof of ownership.

    Raises:
        ConfigError: the uuid is malformed.
    """
    if not UUID_RE.fullmatch(uuid):
        raise ConfigError(f"xen domain {spec.name!r}: uuid {uuid!r}: expected 8-4-4-4-12 hex")
    lines = [
        "# Written by edgeagent (xen runner); do not edit: the agent rewrites it at each start.",
        f"name = {quote(spec.name)}",
        f"uuid = {quote(uuid)}",
        'type = "pvh"',
        f"kernel = {quote(spec.kernel)}",
        f"memory = {spec.mem_mb}",
        f"vcpus = {spec.vcpus}",
        f"tsc_mode = {quote(spec.tsc_mode)}",
        # "preserve": the domain stays (shut down) until the runner has read why it ended.
        'on_poweroff = "preserve"',
        'on_reboot = "preserve"',
        'on_crash = "preserve"',
        'on_watchdog = "preserve"',
        "vif = []",
        "disk = []",
    ]
    if spec.args:
        lines.append(f"cmdline = {quote(spec.cmdline)}")
    return "\n".join(lines) + "\n"


# xl output ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainRow:
    """One row of ``xl list`` (``-v`` adds uuid and reason).

    Attributes:
        name: the domain name.
        domid: its id.
        state: the six state letters, e.g. "-b----", "---s--" (poweroff), "---sc-" (crash).
        uuid: the uuid (``xl list -v`` only).
        reason: the shutdown reason code while shut down (``-v``), else from the state letter.
    """

    name: str
    domid: int
    state: str
    uuid: str | None = None
    reason: int | None = None

    @property
    def shut_down(self) -> bool:
        """The domain has shut down (it stays until destroyed: ``preserve``)."""
        return self.state[3] == "s"

    @property
    def dying(self) -> bool:
        """The domain is being destroyed."""
        return self.state[5] == "d"

    @property
    def running(self) -> bool:
        """Neither shut down nor dying (running, blocked or paused)."""
        return not self.shut_down and not self.dying

    @property
    def shutdown_reason(self) -> int | None:
        """The shutdown reason code, or None while not shut down."""
        if not self.shut_down:
            return None
        if self.reason is not None:
            return self.reason
        letter = self.state[4]
        return _REASON_LETTERS.index(letter) if letter in _REASON_LETTERS else None


_STATE_RE = re.compile(r"[r-][b-][p-][s-][-rscwS?][d-]")
_HEADER_START = "Name"


def parse_list(text: str) -> list[DomainRow]:
    """Parse ``xl list`` or ``xl list -v`` output.

    Names may contain spaces in domains we did not create, so each row is read from the
    fields after the name: ``ID Mem VCPUs State Time(s) [UUID Reason-Code Label]``.

    Raises:
        VmError: the header is missing or a row does not have the expected fields.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith(_HEADER_START) or "State" not in lines[0]:
        raise VmError(f"xl list: unexpected output (no header line): {text[:200]!r}")
    verbose = "UUID" in lines[0]
    return [_parse_row(line, verbose) for line in lines[1:]]


def _parse_row(line: str, verbose: bool) -> DomainRow:
    tokens = line.split()
    # Find the state column: the first token after at least one name token followed by
    # three integers (ID, Mem, VCPUs).
    for i in range(1, len(tokens) - 4 + 1):
        if (
            _STATE_RE.fullmatch(tokens[i + 3])
            and all(t.isdigit() for t in tokens[i : i + 3])
            and _is_float(tokens[i + 4] if i + 4 < len(tokens) else "")
        ):
            name = " ".join(tokens[:i])
            domid = int(tokens[i])
            state = tokens[i + 3]
            rest = tokens[i + 5 :]
            uuid: str | None = None
            reason: int | None = None
            if verbose:
                if not rest or not UUID_RE.fullmatch(rest[0]):
                    break
                uuid = rest[0]
                if len(rest) > 1 and rest[1] != "-":
                    try:
                        reason = int(rest[1], 16)
                    except ValueError:
                        break
            return DomainRow(name=name, domid=domid, state=state, uuid=uuid, reason=reason)
    raise VmError(f"xl list: cannot parse row {line[:200]!r}")


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def find_row(rows: Iterable[DomainRow], name: str) -> DomainRow | None:
    """The row of domain ``name`` (None when there is no such domain)."""
    return next((r for r in rows if r.name == name), None)


@dataclass(frozen=True, slots=True)
class DomainDetail:
    """What ``xl list -l`` says about a domain (the parts the runner checks)."""

    domid: int | None
    name: str
    uuid: str
    kernel: str | None
    type: str | None


def parse_list_long(text: str) -> list[DomainDetail]:
    """Parse ``xl list -l`` (a JSON array of ``{"domid": N, "config": {...}}``).

    Raises:
        VmError: not that JSON.
    """
    try:
        doc: object = json.loads(text)
    except ValueError as exc:
        raise VmError(f"xl list -l: not JSON: {exc}") from exc
    if isinstance(doc, dict):
        doc = [doc]  # `xl list -l NAME` of some versions prints one object.
    if not isinstance(doc, list):
        raise VmError("xl list -l: expected a JSON array of domains")
    out: list[DomainDetail] = []
    for item in doc:
        config = item.get("config") if isinstance(item, dict) else None
        c_info = config.get("c_info") if isinstance(config, dict) else None
        b_info = config.get("b_info") if isinstance(config, dict) else None
        if not isinstance(item, dict) or not isinstance(c_info, dict):
            raise VmError("xl list -l: a domain without config.c_info")
        domid = item.get("domid")
        name = c_info.get("name")
        uuid = c_info.get("uuid")
        if not isinstance(name, str) or not isinstance(uuid, str):
            raise VmError("xl list -l: a domain without c_info.name or c_info.uuid")
        kernel = b_info.get("kernel") if isinstance(b_info, dict) else None
        dom_type = c_info.get("type")
        out.append(
            DomainDetail(
                domid=domid if isinstance(domid, int) and not isinstance(domid, bool) else None,
                name=name,
                uuid=uuid.lower(),
                kernel=kernel if isinstance(kernel, str) else None,
                type=dom_type if isinstance(dom_type, str) else None,
            )
        )
    return out


def parse_domid(text: str) -> int:
    """Parse ``xl domid NAME`` output (one decimal number).

    Raises:
        VmError: anything else.
    """
    value = text.strip()
    if not value.isdigit() or len(value) > 6:
        raise VmError(f"xl domid: expected a domain id, got {text[:100]!r}")
    return int(value)


# The end of a domain --------------------------------------------------------------------------


def guest_exit_status(console_lines: Iterable[str]) -> int | None:
    """The exit status the guest printed last on its console (`EXIT_LINE_RE`), or None.

    A status outside 0..255 is reported as 255 (an abort), as the other runners do.
    """
    status: int | None = None
    for line in console_lines:
        m = EXIT_LINE_RE.match(line.strip())
        if m is not None:
            value = int(m.group(1))
            status = value if 0 <= value <= 255 else GUEST_ABORT
    return status


End = Literal["shutdown", "vanished", "stopped"]


def describe_domain_end(
    *,
    end: End,
    reason: int | None,
    printed_status: int | None,
    stop_step: str | None = None,
) -> ExitInfo:
    """Decode how a domain ended (ADR 0012 §3).

    Args:
        end: "shutdown" (the guest shut itself down; ``reason`` is set), "vanished" (the
            domain disappeared without us seeing it shut down: destroyed by someone else)
            or "stopped" (we stopped it).
        reason: the Xen shutdown reason code.
        printed_status: the exit status the guest printed on its console, if any.
        stop_step: for "stopped", how it went ("xl shutdown" or "xl destroy").

    Returns:
        poweroff -> the printed status or 0 ("halt"/"shutdown"); crash -> the printed
        non-zero status ("halt"), else an abort (255); reboot, suspend, watchdog and soft
        reset -> no guest status ("shutdown", "abort" for the watchdog); a vanished or stopped
        domain -> "signal" (244), like a VM we stopped.
    """
    if end == "stopped":
        how = f" ({stop_step})" if stop_step else ""
        return ExitInfo(None, "signal", f"stopped by edgeagent{how}", TENDER_SIGNAL)
    if end == "vanished":
        return ExitInfo(
            None,
            "signal",
            "the domain disappeared without shutting down (destroyed outside the agent)",
            TENDER_SIGNAL,
        )
    name = SHUTDOWN_NAMES.get(reason, f"unknown reason {reason}") if reason is not None else "?"
    if reason == SHUTDOWN_POWEROFF:
        if printed_status is not None and printed_status != 0:
            # A guest that printed a failure but powered off: trust the status it printed.
            return ExitInfo(
                printed_status,
                "halt",
                f"the guest exited with status {printed_status} (poweroff)",
                printed_status,
            )
        if printed_status == 0:
            return ExitInfo(0, "halt", "the guest exited with status 0 (poweroff)", 0)
        return ExitInfo(0, "shutdown", "the guest powered off", 0)
    if reason == SHUTDOWN_CRASH:
        if printed_status is not None and printed_status not in (0, GUEST_ABORT):
            return ExitInfo(
                printed_status,
                "halt",
                f"the guest exited with status {printed_status} (crash)",
                printed_status,
            )
        return ExitInfo(GUEST_ABORT, "abort", "the domain crashed", GUEST_ABORT)
    if reason == SHUTDOWN_WATCHDOG:
        return ExitInfo(GUEST_ABORT, "abort", "the domain's watchdog fired", GUEST_ABORT)
    if reason in (SHUTDOWN_REBOOT, SHUTDOWN_SUSPEND, SHUTDOWN_SOFT_RESET):
        return ExitInfo(
            None,
            "shutdown",
            f"the guest asked for {name}; the agent does not resume it",
            TENDER_SETUP,
        )
    return ExitInfo(None, "setup", f"the domain shut down with {name}", TENDER_SETUP)


def domain_result(
    info: ExitInfo,
    *,
    reason: int | None,
    first_output_s: float | None,
    console_tail: str,
    stderr_tail: str,
) -> VmResult:
    """The `VmResult` of a domain run (``runner`` "xen"; ``process_status`` is the Xen
    shutdown reason code, -1 when the domain did not shut down by itself)."""
    return VmResult(
        runner="xen",
        process_status=-1 if reason is None else reason,
        guest_status=info.guest_status,
        reason=info.reason,
        message=info.message,
        exit_status=info.exit_status,
        first_output_s=first_output_s,
        events=(),
        console_tail=console_tail,
        stderr_tail=stderr_tail,
    )


# Ownership: records, start and cleanup decisions ----------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainRecord:
    """A domain the runner created (``STATE/xen/domains.json``).

    Attributes:
        name: the domain name.
        uuid: the uuid written into its config: the proof that a live domain is ours.
        key: the version key it runs (workload, version, sha256).
        config: path of its xl config.
    """

    name: str
    uuid: str
    key: tuple[str, str, str]
    config: str

    def to_json(self) -> dict[str, object]:
        """The JSON form."""
        return {"name": self.name, "uuid": self.uuid, "key": list(self.key), "config": self.config}


RECORDS_SCHEMA = 1


def parse_records(data: bytes, source: str) -> dict[str, DomainRecord]:
    """Parse ``domains.json``.

    Raises:
        ConfigError: not the expected JSON (names the file and the field).
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != RECORDS_SCHEMA:
        raise ConfigError(f"{source}: field 'schema': expected {RECORDS_SCHEMA}")
    domains = doc.get("domains")
    if not isinstance(domains, list):
        raise ConfigError(f"{source}: field 'domains': expected a list")
    out: dict[str, DomainRecord] = {}
    for i, item in enumerate(domains):
        where = f"{source}: domains[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected an object")
        name, uuid, key, config = (item.get(k) for k in ("name", "uuid", "key", "config"))
        if not isinstance(name, str) or not DOMAIN_NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}.name: expected a domain name, got {name!r}")
        if not isinstance(uuid, str) or not UUID_RE.fullmatch(uuid):
            raise ConfigError(f"{where}.uuid: expected a uuid, got {uuid!r}")
        if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
            raise ConfigError(f"{where}.key: expected [workload, version, sha256]")
        if not isinstance(config, str):
            raise ConfigError(f"{where}.config: expected a path")
        out[name] = DomainRecord(name, uuid, (str(key[0]), str(key[1]), str(key[2])), config)
    return out


def render_records(records: Mapping[str, DomainRecord]) -> bytes:
    """The bytes of ``domains.json``."""
    doc = {
        "schema": RECORDS_SCHEMA,
        "domains": [records[name].to_json() for name in sorted(records)],
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def is_ours(row: DomainRow, record: DomainRecord | None) -> bool:
    """Whether a live domain is one we created: our record names it with its uuid."""
    return record is not None and row.uuid is not None and row.uuid == record.uuid


StartAction = Literal["create", "adopt", "replace"]


def decide_start(
    name: str,
    key: tuple[str, str, str],
    live: DomainRow | None,
    record: DomainRecord | None,
    *,
    allow_adopt: bool,
) -> StartAction:
    """Decide how to start domain ``name`` for version ``key``.

    Returns:
        "create": no such domain; "adopt": our domain of this version is running (the agent
        restarted): follow it; "replace": our domain is there but shut down, dying, of another
        version, or adoption is off: destroy it, then create.

    Raises:
        DomainCollisionError: a domain of that name exists that we did not create. It is left
            alone: never adopted, shut down or destroyed.
    """
    if live is None:
        return "create"
    if not is_ours(live, record):
        raise DomainCollisionError(
            f"xen domain {name} (id {live.domid}) already exists and was not created by "
            "edgeagent (no matching uuid in its records); refusing to start and leaving "
            "that domain alone"
        )
    assert record is not None
    if allow_adopt and live.running and record.key == key:
        return "adopt"
    return "replace"


CleanupAction = Literal["keep", "destroy", "forget"]


def decide_cleanup(
    records: Mapping[str, DomainRecord],
    rows: Iterable[DomainRow],
    keep: Iterable[tuple[str, str, str]],
) -> list[tuple[DomainRecord, CleanupAction]]:
    """At agent start: what to do with each domain our records name.

    Args:
        records: the domains we created (``domains.json``).
        rows: ``xl list -v`` now.
        keep: the version keys still desired (each workload's current version).

    Returns:
        Per record: "keep" (ours, running, still desired: the runner adopts it), "destroy"
        (ours but no longer desired, or shut down) or "forget" (no live domain with that name
        and uuid: drop the record). Live domains without a matching record do not appear:
        they are never touched.
    """
    wanted = set(keep)
    by_name = {r.name: r for r in rows}
    out: list[tuple[DomainRecord, CleanupAction]] = []
    for name in sorted(records):
        record = records[name]
        live = by_name.get(name)
        if live is None or not is_ours(live, record):
            out.append((record, "forget"))
        elif live.running and record.key in wanted:
            out.append((record, "keep"))
        else:
            out.append((record, "destroy"))
    return out


def foreign_domains(
    rows: Iterable[DomainRow], records: Mapping[str, DomainRecord], prefix: str
) -> list[DomainRow]:
    """Live domains that carry our prefix but are not ours (reported, never touched)."""
    return [r for r in rows if r.name.startswith(prefix) and not is_ours(r, records.get(r.name))]


# Console log ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What to read next from the guest log.

    Attributes:
        start: offset to read from.
        length: bytes to read.
        skipped: bytes of a flooding guest skipped (not read).
        restarted: the file was truncated or replaced; reading starts over at 0.
    """

    start: int
    length: int
    skipped: int = 0
    restarted: bool = False


def plan_console_read(
    offset: int,
    size: int,
    *,
    same_file: bool = True,
    max_backlog: int = MAX_CONSOLE_BACKLOG,
) -> ReadPlan:
    """Plan the next read of xenconsoled's guest log.

    Args:
        offset: where the last read ended.
        size: the file's size now.
        same_file: False when the path now names another file (rotated).
        max_backlog: at most this many bytes are read; a guest that wrote more since the last
            poll has its oldest bytes skipped (a flooding guest cannot make the agent read
            without bound).
    """
    restarted = False
    if not same_file or size < offset:
        offset, restarted = 0, True
    pending = size - offset
    skipped = 0
    if pending > max_backlog:
        skipped = pending - max_backlog
        offset += skipped
        pending = max_backlog
    return ReadPlan(start=offset, length=pending, skipped=skipped, restarted=restarted)

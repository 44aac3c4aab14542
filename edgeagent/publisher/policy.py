"""Signing policy and the publisher's pure decisions [pure].

What it does: parses and renders the keys folder's ``policy.toml`` (thresholds, key counts,
expiry periods, online/offline per top-level role), computes expiry dates and version bumps from
an explicit ``now``, decides when ``refresh`` must re-sign the snapshot, validates target and
delegated role names, and builds the target ``custom`` field (schema in ADR-0003).

What it does not do: no file I/O, no clock, no randomness, no signing. The caller passes bytes,
``now`` and metadata values in; ``edgeagent.publisher.repo`` does the I/O.

``policy.toml`` (schema_version 1; unknown keys are errors)::

    schema_version = 1
    [root]
    threshold = 1        # signatures needed
    keys = 1             # keys generated (>= threshold)
    expires_days = 365
    online = false       # documentation: offline keys should not live on the serving host
    [targets] ...   [snapshot] ...   [timestamp] ...
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from edgeagent.errors import ConfigError

POLICY_SCHEMA_VERSION = 1
TOP_LEVEL_ROLES: tuple[str, ...] = ("root", "targets", "snapshot", "timestamp")
ROLE_FIELDS: tuple[str, ...] = ("threshold", "keys", "expires_days", "online")

# A target or delegated role name: one path segment, a conservative charset, no leading dot
# (ADR-0003 §2). The name becomes part of a file name on the registry and in device stores.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
TARGET_KINDS: tuple[str, ...] = ("hvt", "qemu", "xen")
# Host OS artefacts (issue 5): a slot image for A/B host OTA, a whole disk image for flashing.
# They carry the same custom schema; the device agent does not run them as workloads.
HOST_KINDS: tuple[str, ...] = ("host-slot", "host-disk")
DEFAULT_MEM_MB = 64
CUSTOM_KEY = "edgeagent"
CUSTOM_SCHEMA_FIELDS: tuple[str, ...] = (
    "version",
    "kind",
    "mem_mb",
    "args",
    "devices",
    "groups",
    "device_ids",
)


@dataclass(frozen=True, slots=True)
class RolePolicy:
    """Keys, threshold and expiry period of one top-level role."""

    threshold: int
    keys: int
    expires_days: int
    online: bool


DEFAULT_ROLES: dict[str, RolePolicy] = {
    "root": RolePolicy(threshold=1, keys=1, expires_days=365, online=False),
    "targets": RolePolicy(threshold=1, keys=1, expires_days=90, online=False),
    "snapshot": RolePolicy(threshold=1, keys=1, expires_days=7, online=True),
    "timestamp": RolePolicy(threshold=1, keys=1, expires_days=1, online=True),
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole signing policy: one `RolePolicy` per top-level role."""

    root: RolePolicy
    targets: RolePolicy
    snapshot: RolePolicy
    timestamp: RolePolicy

    def role(self, name: str) -> RolePolicy:
        """Return the policy of top-level role ``name``; delegated roles follow ``targets``."""
        if name == "root":
            return self.root
        if name == "snapshot":
            return self.snapshot
        if name == "timestamp":
            return self.timestamp
        return self.targets

    def with_role(self, name: str, role: RolePolicy) -> Policy:
        """Return a copy with role ``name`` replaced."""
        if name not in TOP_LEVEL_ROLES:
            raise ValueError(f"unknown role {name!r}")
        return replace(self, **{name: role})


def default_policy(
    *,
    root_threshold: int = 1,
    root_keys: int = 1,
    expires_days: dict[str, int] | None = None,
    source: str = "command line",
) -> Policy:
    """Return the default policy with the given overrides, checked like a parsed file.

    Raises:
        ConfigError: a threshold, key count or expiry is out of range (names ``source``).
    """
    roles = dict(DEFAULT_ROLES)
    roles["root"] = replace(roles["root"], threshold=root_threshold, keys=root_keys)
    for name, days in (expires_days or {}).items():
        if name not in TOP_LEVEL_ROLES:
            raise ConfigError(f"{source}: unknown role {name!r}: expected one of {TOP_LEVEL_ROLES}")
        roles[name] = replace(roles[name], expires_days=days)
    for name, role in roles.items():
        _check_role(source, name, role)
    return Policy(**roles)


def _check_role(source: str, name: str, role: RolePolicy) -> None:
    if role.threshold < 1:
        raise ConfigError(
            f"{source}: field '{name}.threshold': expected a positive integer, got {role.threshold}"
        )
    if role.keys < role.threshold:
        raise ConfigError(
            f"{source}: field '{name}.keys': expected at least threshold ({role.threshold}) "
            f"keys, got {role.keys}"
        )
    if role.expires_days < 1:
        raise ConfigError(
            f"{source}: field '{name}.expires_days': expected a positive integer, "
            f"got {role.expires_days}"
        )


def _positive_int(source: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: field '{field}': expected a positive integer, got {value!r}")
    return value


def parse_policy(data: bytes, source: str) -> Policy:
    """Parse ``policy.toml`` bytes. ``source`` (the file name) is used in error messages.

    Raises:
        ConfigError: malformed TOML, unknown or missing keys, or values out of range.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not valid UTF-8 TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"schema_version", *TOP_LEVEL_ROLES})
    if unknown:
        raise ConfigError(f"{source}: unknown field '{unknown[0]}'")
    if doc.get("schema_version") != POLICY_SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: field 'schema_version': expected {POLICY_SCHEMA_VERSION}, "
            f"got {doc.get('schema_version')!r}"
        )
    roles: dict[str, RolePolicy] = {}
    for name in TOP_LEVEL_ROLES:
        table = doc.get(name)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: field '{name}': expected a table [{name}]")
        extra = sorted(set(table) - set(ROLE_FIELDS))
        if extra:
            raise ConfigError(f"{source}: unknown field '{name}.{extra[0]}'")
        missing = [f for f in ROLE_FIELDS if f not in table]
        if missing:
            raise ConfigError(f"{source}: missing field '{name}.{missing[0]}'")
        online = table["online"]
        if not isinstance(online, bool):
            raise ConfigError(
                f"{source}: field '{name}.online': expected true or false, got {online!r}"
            )
        role = RolePolicy(
            threshold=_positive_int(source, f"{name}.threshold", table["threshold"]),
            keys=_positive_int(source, f"{name}.keys", table["keys"]),
            expires_days=_positive_int(source, f"{name}.expires_days", table["expires_days"]),
            online=online,
        )
        _check_role(source, name, role)
        roles[name] = role
    return Policy(**roles)


def render_policy(policy: Policy) -> bytes:
    """Render ``policy`` as ``policy.toml`` text that `parse_policy` reads back unchanged."""
    lines = [
        "# edgeagent signing policy (see signing/README.md). Edit with care: thresholds and key",
        "# counts take effect at the next key rotation; expiry periods at the next signature.",
        f"schema_version = {POLICY_SCHEMA_VERSION}",
    ]
    for name in TOP_LEVEL_ROLES:
        role = policy.role(name)
        lines += [
            "",
            f"[{name}]",
            f"threshold = {role.threshold}",
            f"keys = {role.keys}",
            f"expires_days = {role.expires_days}",
            f"online = {'true' if role.online else 'false'}",
        ]
    return ("\n".join(lines) + "\n").encode()


def expiry(policy: Policy, role: str, now: datetime) -> datetime:
    """Return the expiry of ``role`` metadata signed at ``now`` (UTC, whole seconds)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    start = now.astimezone(UTC).replace(microsecond=0)
    return start + timedelta(days=policy.role(role).expires_days)


def next_version(current: int) -> int:
    """Return the version that follows ``current`` (TUF versions grow by one)."""
    if current < 1:
        raise ValueError(f"metadata version must be >= 1, got {current}")
    return current + 1


def snapshot_needs_refresh(policy: Policy, expires: datetime, now: datetime) -> bool:
    """Decide whether ``refresh`` must re-sign the snapshot.

    Rule: re-sign when less than half of the snapshot's expiry period is left (or it expired).
    """
    period = timedelta(days=policy.snapshot.expires_days)
    return expires - now < period / 2


def validate_name(name: str, what: str = "target name") -> str:
    """Check a target or delegated role name (ADR-0003 §2) and return it.

    Raises:
        ConfigError: path separators, ``..``, a leading dot or characters outside
            ``[A-Za-z0-9._+-]`` (128 at most).
    """
    if "/" in name or "\\" in name:
        raise ConfigError(f"{what} {name!r}: must not contain path separators ('/' or '\\')")
    if ".." in name:
        raise ConfigError(f"{what} {name!r}: must not contain '..'")
    if name.startswith("."):
        raise ConfigError(f"{what} {name!r}: must not start with '.'")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r}: expected 1-128 characters from [A-Za-z0-9._+-], "
            "starting with a letter, digit or '_'"
        )
    return name


def target_custom(
    *,
    version: str,
    kind: str = "hvt",
    mem_mb: int = DEFAULT_MEM_MB,
    args: list[str] | None = None,
    block: list[str] | None = None,
    net: list[str] | None = None,
    groups: list[str] | None = None,
    device_ids: list[str] | None = None,
) -> dict[str, object]:
    """Build the target ``custom`` field (ADR-0003 §3), every key present.

    Raises:
        ConfigError: empty version, unknown kind, non-positive memory, or a bad device name.
    """
    if not version or not version.strip():
        raise ConfigError("target field 'version': expected a non-empty string")
    if kind not in TARGET_KINDS + HOST_KINDS:
        raise ConfigError(
            f"target field 'kind': expected one of {TARGET_KINDS + HOST_KINDS}, got {kind!r}"
        )
    if isinstance(mem_mb, bool) or mem_mb < 1:
        raise ConfigError(f"target field 'mem_mb': expected a positive integer, got {mem_mb!r}")
    for field, names in (("devices.block", block), ("devices.net", net)):
        for dev in names or []:
            validate_name(dev, f"target field '{field}' entry")
    return {
        CUSTOM_KEY: {
            "version": version,
            "kind": kind,
            "mem_mb": mem_mb,
            "args": list(args or []),
            "devices": {"block": list(block or []), "net": list(net or [])},
            "groups": list(groups or []),
            "device_ids": list(device_ids or []),
        }
    }


def parse_expires_overrides(items: list[str]) -> dict[str, int]:
    """Parse ``--expires-days role=N`` arguments.

    Raises:
        ConfigError: not ``role=N``, unknown role, or N not a positive integer.
    """
    out: dict[str, int] = {}
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or role not in TOP_LEVEL_ROLES:
            raise ConfigError(
                f"--expires-days {item!r}: expected ROLE=DAYS with ROLE in {TOP_LEVEL_ROLES}"
            )
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--expires-days {item!r}: DAYS must be a positive integer")
        out[role] = int(value)
    return out

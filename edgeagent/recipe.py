"""Image recipes: ``recipe.toml`` bytes -> a validated, frozen `Recipe`. [pure]

A recipe describes one guest image built from our library OS (image-recipes/README.md
documents the schema). Validation is strict, in the style of Firecracker's
``deny_unknown_fields``: unknown keys, wrong types, missing required fields, bad names and
inconsistent combinations (a device on a platform that has no devices, a library part a
platform does not provide) are `RecipeError`s that name the file, the field and what was
expected.

This module only looks at the bytes it is given. It does not check that source files exist
(the build shell does, `edgeagent.build`), does not read files and does not build anything.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import TypeVar

from edgeagent.errors import RecipeError

PLATFORMS: tuple[str, ...] = ("hvt", "qemu", "xen")

# Library OS parts and the platforms that provide them. "core" is always linked.
LIBOS_PARTS: dict[str, frozenset[str]] = {
    "core": frozenset(PLATFORMS),
    "console": frozenset(PLATFORMS),
    "clock": frozenset(PLATFORMS),
    "heap": frozenset(PLATFORMS),
    "block": frozenset({"hvt"}),
    "net": frozenset({"hvt"}),
}

# Platforms whose images carry a device manifest (MFT1).
DEVICE_PLATFORMS: frozenset[str] = frozenset({"hvt"})

# Why a platform lacks devices, appended to the error (ADR 0002, ADR 0011).
_NO_DEVICES_WHY: dict[str, str] = {
    "qemu": "",
    "xen": "; the xen platform has no block or net front-ends (ADR 0011)",
}

MEMORY_MB_MIN = 2
MEMORY_MB_MAX = 4096
MAX_DEVICES = 63  # MFT_MAX_ENTRIES (64) minus the reserved entry 0.
MAX_CMDLINE = 8191  # HVT_CMDLINE_SIZE minus the NUL.

_REQUIRED = ("name", "version", "sources", "platforms", "memory_mb")
_OPTIONAL = ("description", "libos", "devices", "args", "cflags")
_DEVICE_KEYS = ("block", "net")

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~-]{0,63}")
SOURCE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.(c|S)")
DEVICE_RE = re.compile(r"[A-Za-z0-9]{1,67}")
ARG_RE = re.compile(r"[A-Za-z0-9_.,:=/+@%-]{1,256}")
CFLAG_RE = re.compile(r"-D[A-Za-z_][A-Za-z0-9_]*(=[A-Za-z0-9_.+-]*)?|-W[a-z0-9=-]+|-O[0-3s]")
DESCRIPTION_MAX = 200

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Devices:
    """Devices the image declares; they become MFT1 entries 1.. in this order."""

    block: tuple[str, ...] = ()
    net: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Recipe:
    """A validated image recipe."""

    name: str
    version: str
    description: str
    sources: tuple[str, ...]
    libos: tuple[str, ...]
    platforms: tuple[str, ...]
    memory_mb: int
    devices: Devices
    args: tuple[str, ...]
    cflags: tuple[str, ...]

    def manifest_entries(self) -> tuple[tuple[str, str], ...]:
        """Return (name, kind) for MFT1 entries 1.. (block devices first, then net)."""
        return tuple((n, "block") for n in self.devices.block) + tuple(
            (n, "net") for n in self.devices.net
        )


def _fail(filename: str, field: str, expected: str, got: object) -> RecipeError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return RecipeError(f"{filename}: field '{field}': expected {expected}, got {shown}")


def _typed(filename: str, field: str, value: object, kind: type[T], expected: str) -> T:
    # bool is an int subclass: never accept it where a number is expected.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(filename, field, expected, value)
    return value


def _str_list(
    filename: str, field: str, value: object, pattern: re.Pattern[str], what: str
) -> tuple[str, ...]:
    items = _typed(filename, field, value, list, f"a list of {what}")
    out: list[str] = []
    for i, item in enumerate(items):
        sub = f"{field}[{i}]"
        text = _typed(filename, sub, item, str, what)
        if not pattern.fullmatch(text):
            raise _fail(filename, sub, what, text)
        if text in out:
            raise _fail(filename, sub, f"{what} listed once", text)
        out.append(text)
    return tuple(out)


def _check_sources(filename: str, value: object) -> tuple[str, ...]:
    what = "a relative path to a .c or .S file inside the recipe folder"
    sources = _str_list(filename, "sources", value, SOURCE_RE, what)
    for i, src in enumerate(sources):
        if any(part in (".", "..") for part in src.split("/")):
            raise _fail(filename, f"sources[{i}]", what, src)
    if not sources:
        raise _fail(filename, "sources", "at least one source file", value)
    return sources


def _check_devices(filename: str, value: object) -> Devices:
    table = _typed(filename, "devices", value, dict, "a table with keys block and net")
    for key in table:
        if key not in _DEVICE_KEYS:
            raise RecipeError(
                f"{filename}: field 'devices.{key}': unknown key (expected one of "
                f"{', '.join(_DEVICE_KEYS)})"
            )
    what = "a device name of 1-67 letters or digits"
    block = _str_list(filename, "devices.block", table.get("block", []), DEVICE_RE, what)
    net = _str_list(filename, "devices.net", table.get("net", []), DEVICE_RE, what)
    for name in net:
        if name in block:
            raise _fail(filename, "devices.net", "names not already used in devices.block", name)
    if len(block) + len(net) > MAX_DEVICES:
        raise _fail(filename, "devices", f"at most {MAX_DEVICES} devices", len(block) + len(net))
    return Devices(block=block, net=net)


def parse_recipe(data: bytes, *, filename: str = "recipe.toml") -> Recipe:
    """Parse and validate recipe.toml bytes.

    Args:
        data: the file's bytes (UTF-8 TOML).
        filename: the name used in error messages.

    Returns:
        The validated recipe.

    Raises:
        RecipeError: the file is not valid TOML, or a field is missing, unknown, of the
            wrong type or inconsistent with another field.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{filename}: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{filename}: not valid TOML: {exc}") from exc

    for key in doc:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise RecipeError(
                f"{filename}: field '{key}': unknown key (expected one of "
                f"{', '.join(_REQUIRED + _OPTIONAL)})"
            )
    for key in _REQUIRED:
        if key not in doc:
            raise RecipeError(f"{filename}: field '{key}': missing (it is required)")

    name_what = "a name of lowercase letters, digits and '-' (at most 63, not starting with '-')"
    name = _typed(filename, "name", doc["name"], str, name_what)
    if not NAME_RE.fullmatch(name):
        raise _fail(filename, "name", name_what, name)

    version_what = 'a version string such as "1.0.0" (letters, digits, . + ~ -)'
    version = _typed(filename, "version", doc["version"], str, version_what)
    if not VERSION_RE.fullmatch(version):
        raise _fail(filename, "version", version_what, version)

    desc_what = f"printable text of at most {DESCRIPTION_MAX} characters"
    description = _typed(filename, "description", doc.get("description", ""), str, desc_what)
    if len(description) > DESCRIPTION_MAX or not description.isprintable():
        raise _fail(filename, "description", desc_what, description)

    sources = _check_sources(filename, doc["sources"])

    part_re = re.compile("|".join(sorted(LIBOS_PARTS)))
    part_what = f"a library part ({', '.join(sorted(LIBOS_PARTS))})"
    libos = _str_list(filename, "libos", doc.get("libos", []), part_re, part_what)

    plat_what = f"a platform ({', '.join(PLATFORMS)})"
    plat_re = re.compile("|".join(PLATFORMS))
    platforms = _str_list(filename, "platforms", doc["platforms"], plat_re, plat_what)
    if not platforms:
        raise _fail(filename, "platforms", f"at least one {plat_what}", doc["platforms"])

    mem_what = f"an even integer number of MiB from {MEMORY_MB_MIN} to {MEMORY_MB_MAX}"
    memory_mb = _typed(filename, "memory_mb", doc["memory_mb"], int, mem_what)
    if not MEMORY_MB_MIN <= memory_mb <= MEMORY_MB_MAX or memory_mb % 2 != 0:
        raise _fail(filename, "memory_mb", mem_what, memory_mb)

    devices = _check_devices(filename, doc.get("devices", {}))

    arg_what = "an argument of 1-256 characters from A-Z a-z 0-9 _ . , : = / + @ % -"
    args = _str_list_allow_dups(filename, "args", doc.get("args", []), ARG_RE, arg_what)
    if len(" ".join(args)) > MAX_CMDLINE:
        raise _fail(filename, "args", f"at most {MAX_CMDLINE} characters in all", len(args))

    cflag_what = "a compiler flag of the form -DNAME[=VALUE], -Wwarning or -O0..3/-Os"
    cflags = _str_list(filename, "cflags", doc.get("cflags", []), CFLAG_RE, cflag_what)

    for plat in platforms:
        for part in libos:
            if plat not in LIBOS_PARTS[part]:
                raise RecipeError(
                    f"{filename}: field 'libos': part '{part}' is not available on platform "
                    f"'{plat}' (it is on: {', '.join(sorted(LIBOS_PARTS[part]))})"
                    f"{_NO_DEVICES_WHY.get(plat, '') if part in _DEVICE_KEYS else ''}"
                )
        if (devices.block or devices.net) and plat not in DEVICE_PLATFORMS:
            raise RecipeError(
                f"{filename}: field 'platforms': platform '{plat}' has no devices, but "
                f"[devices] declares some (devices need: {', '.join(sorted(DEVICE_PLATFORMS))})"
                f"{_NO_DEVICES_WHY.get(plat, '')}"
            )

    return Recipe(
        name=name,
        version=version,
        description=description,
        sources=sources,
        libos=libos,
        platforms=platforms,
        memory_mb=memory_mb,
        devices=devices,
        args=args,
        cflags=cflags,
    )


def _str_list_allow_dups(
    filename: str, field: str, value: object, pattern: re.Pattern[str], what: str
) -> tuple[str, ...]:
    items = _typed(filename, field, value, list, f"a list of {what}")
    out: list[str] = []
    for i, item in enumerate(items):
        text = _typed(filename, f"{field}[{i}]", item, str, what)
        if not pattern.fullmatch(text):
            raise _fail(filename, f"{field}[{i}]", what, text)
        out.append(text)
    return tuple(out)

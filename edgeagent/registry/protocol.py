"""Registry protocol facts: URL layout, metadata size caps, target name rules (pure).

What it does: builds the URLs a client fetches from a TUF registry (``metadata/`` and
``targets/`` under the registry URL; versioned ``N.ROLE.json`` names with consistent snapshots;
hash-prefixed target names ``DIR/<sha256>.<BASENAME>``), gives the size cap for each metadata
role, and validates target names given to ``edgeagent pull`` and file names derived from them.

What it does not do: no network and no parsing of metadata (see `edgeagent.verify.trust`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

METADATA_DIR = "metadata/"
TARGETS_DIR = "targets/"

# Caps on metadata bodies; a server that sends more is cut off (TooLargeError). Root and targets
# may carry many keys and targets; timestamp is tiny by design. A snapshot with delegations
# lists one line per role.
MAX_ROOT_BYTES = 512 * 1024
MAX_TIMESTAMP_BYTES = 16 * 1024
MAX_SNAPSHOT_BYTES = 2 * 1024 * 1024
MAX_TARGETS_BYTES = 8 * 1024 * 1024

# Safety bound on a root chain walk and on the delegation search (spec 5.3.3, 5.6.7).
MAX_ROOT_ROTATIONS = 256
MAX_DELEGATIONS = 32

_FORBIDDEN_NAME_CHARS = frozenset("/\\\x00")


@dataclass(frozen=True, slots=True)
class RegistryLayout:
    """Where metadata and targets live, as URL prefixes ending in ``/``."""

    metadata_url: str
    targets_url: str

    @classmethod
    def from_registry(cls, registry_url: str) -> RegistryLayout:
        """Layout of an edgeagent registry: ``URL/metadata/`` and ``URL/targets/``."""
        base = _with_slash(registry_url)
        return cls(base + METADATA_DIR, base + TARGETS_DIR)

    @classmethod
    def from_urls(cls, metadata_url: str, targets_url: str) -> RegistryLayout:
        """Layout with explicit metadata and targets base URLs (tuf-client)."""
        return cls(_with_slash(metadata_url), _with_slash(targets_url))

    def metadata(self, role: str, version: int | None = None) -> str:
        """URL of ``ROLE.json`` or, with a version, ``VERSION.ROLE.json``."""
        name = f"{role}.json" if version is None else f"{version}.{role}.json"
        return self.metadata_url + quote(name, safe="")

    def target(self, path: str, sha256: str | None, *, consistent: bool) -> str:
        """URL of a target file: hash-prefixed basename when the repo uses consistent snapshots."""
        directory, sep, basename = path.rpartition("/")
        if consistent and sha256 is not None:
            basename = f"{sha256}.{basename}"
        return self.targets_url + quote(f"{directory}{sep}{basename}", safe="/")


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def max_metadata_bytes(role: str) -> int:
    """Size cap for a metadata role (delegated roles get the targets cap)."""
    return {
        "root": MAX_ROOT_BYTES,
        "timestamp": MAX_TIMESTAMP_BYTES,
        "snapshot": MAX_SNAPSHOT_BYTES,
    }.get(role, MAX_TARGETS_BYTES)


def validate_target_name(name: str) -> str:
    """Check a target name given to ``edgeagent pull``: one path component, no tricks.

    Returns:
        The name unchanged.

    Raises:
        ValueError: empty, ``.``/``..``, a path separator or NUL, a leading ``-``, control
            characters, or longer than 200 characters; the message names the rule.
    """
    if not name:
        raise ValueError("target name is empty")
    if name in {".", ".."}:
        raise ValueError(f"target name {name!r} is a relative path component")
    bad = _FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        raise ValueError(
            f"target name {name!r} contains a path separator or NUL ({sorted(bad)!r}); "
            "names are single path components"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"target name {name!r} contains control characters")
    if name.startswith("-"):
        raise ValueError(f"target name {name!r} starts with '-'")
    if len(name) > 200:
        raise ValueError(f"target name is {len(name)} characters long; the limit is 200")
    return name


def local_file_name(target_path: str) -> str:
    """A file name for a target path inside one folder: URL-quoted, so no separators remain.

    The same target path always maps to the same name (tuf-client caching relies on it).
    """
    name = quote(target_path, safe="")
    if name in {"", ".", ".."}:
        raise ValueError(f"target path {target_path!r} has no usable file name")
    return name

"""The content-addressed store's on-disk layout and its decisions (pure).

Layout (ADR-0006; relative to the store folder)::

    blobs/sha256/<64 hex>       verified blobs, named by their SHA-256; never rewritten
    tmp/<64 hex>.partial        a download in progress: the kept prefix of that blob
    index.json                  which target names point at which blobs (current, previous)
    metadata/                   the client's trusted TUF metadata (owned by the updater)
    state/                      the trusted clock floor and the lock file

What it does: names paths for a digest, parses and renders the index, updates it when a target
is pulled (keeping the current and the previous version of each name), and decides what a store
scan or GC deletes. What it does not do: touch files (`edgeagent.store.cas` does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgeagent.errors import StoreError

BLOBS_DIR = "blobs/sha256"
TMP_DIR = "tmp"
INDEX_FILE = "index.json"
METADATA_DIR = "metadata"
STATE_DIR = "state"
PARTIAL_SUFFIX = ".partial"
INDEX_SCHEMA = 1
KEEP_VERSIONS = 2  # Current and previous version of each target name.

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob as signed metadata describes it."""

    sha256: str
    length: int

    def __post_init__(self) -> None:
        if not is_digest(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.length < 0:
            raise ValueError(f"length {self.length} is negative")


@dataclass(frozen=True, slots=True)
class Entry:
    """One pulled version of a target name."""

    sha256: str
    length: int
    version: str


Index = Mapping[str, tuple[Entry, ...]]


def is_digest(text: str) -> bool:
    """True for 64 lowercase hex digits."""
    return _HEX64.fullmatch(text) is not None


def blob_relpath(sha256: str) -> str:
    """Relative path of the blob with this digest."""
    if not is_digest(sha256):
        raise ValueError(f"sha256 {sha256!r} is not 64 lowercase hex digits")
    return f"{BLOBS_DIR}/{sha256}"


def partial_relpath(sha256: str) -> str:
    """Relative path of the partial download of this digest."""
    if not is_digest(sha256):
        raise ValueError(f"sha256 {sha256!r} is not 64 lowercase hex digits")
    return f"{TMP_DIR}/{sha256}{PARTIAL_SUFFIX}"


def parse_index(data: bytes, source: str) -> dict[str, tuple[Entry, ...]]:
    """Parse ``index.json``.

    Raises:
        StoreError: not JSON, wrong schema, or a malformed entry (names ``source`` and field).
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != INDEX_SCHEMA:
        raise StoreError(f"{source}: field 'schema': expected {INDEX_SCHEMA}")
    targets = doc.get("targets")
    if not isinstance(targets, dict):
        raise StoreError(f"{source}: field 'targets': expected an object")
    out: dict[str, tuple[Entry, ...]] = {}
    for name, entries in targets.items():
        if not isinstance(entries, list):
            raise StoreError(f"{source}: field 'targets.{name}': expected a list")
        parsed: list[Entry] = []
        for i, item in enumerate(entries):
            where = f"{source}: field 'targets.{name}[{i}]'"
            if not isinstance(item, dict):
                raise StoreError(f"{where}: expected an object")
            sha, length, version = item.get("sha256"), item.get("length"), item.get("version")
            if not isinstance(sha, str) or not is_digest(sha):
                raise StoreError(f"{where}.sha256: expected 64 lowercase hex digits")
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise StoreError(f"{where}.length: expected a non-negative integer")
            if not isinstance(version, str):
                raise StoreError(f"{where}.version: expected a string")
            parsed.append(Entry(sha, length, version))
        out[name] = tuple(parsed)
    return out


def render_index(index: Index) -> bytes:
    """Serialise the index (sorted, stable)."""
    doc = {
        "schema": INDEX_SCHEMA,
        "targets": {
            name: [{"sha256": e.sha256, "length": e.length, "version": e.version} for e in entries]
            for name, entries in sorted(index.items())
        },
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def record_pull(index: Index, name: str, entry: Entry) -> dict[str, tuple[Entry, ...]]:
    """Return a new index where ``entry`` is the current version of ``name``.

    The former current version becomes the previous one; older ones drop out (GC reclaims them).
    Pulling the current version again changes nothing.
    """
    out = dict(index)
    old = [e for e in index.get(name, ()) if e.sha256 != entry.sha256]
    out[name] = (entry, *old)[:KEEP_VERSIONS]
    return out


def referenced(index: Index) -> frozenset[str]:
    """Digests some target name still points at."""
    return frozenset(e.sha256 for entries in index.values() for e in entries)


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """What a store scan deletes, as relative paths, with a reason each."""

    delete: tuple[tuple[str, str], ...]


def plan_scan(
    blob_names: Iterable[tuple[str, int]],
    tmp_names: Iterable[str],
    index: Index,
    *,
    gc: bool,
) -> ScanPlan:
    """Decide what to delete from ``blobs/sha256`` and ``tmp``.

    Args:
        blob_names: (file name, size) of each entry in ``blobs/sha256``; size -1 marks an
            entry that is not a regular file (folder, symlink).
        tmp_names: file names in ``tmp``.
        index: the current index.
        gc: also delete blobs no target name points at.

    Garbage is: a blob whose name is not a digest; a blob whose size differs from the length
    the index records for it (corrupted or truncated); any ``tmp`` entry that is not
    ``<digest>.partial``. Partial downloads with a proper name are kept, for resume.
    """
    sizes = {e.sha256: e.length for entries in index.values() for e in entries}
    keep = referenced(index)
    delete: list[tuple[str, str]] = []
    for name, size in blob_names:
        rel = f"{BLOBS_DIR}/{name}"
        if not is_digest(name):
            delete.append((rel, "not a sha256 blob name"))
        elif size < 0:
            delete.append((rel, "not a regular file"))
        elif name in sizes and sizes[name] != size:
            delete.append((rel, f"size {size} differs from the recorded {sizes[name]}"))
        elif gc and name not in keep:
            delete.append((rel, "no target points at it (gc)"))
    for name in tmp_names:
        stem = name.removesuffix(PARTIAL_SUFFIX)
        if stem == name or not is_digest(stem):
            delete.append((f"{TMP_DIR}/{name}", "not a partial download"))
    return ScanPlan(tuple(delete))

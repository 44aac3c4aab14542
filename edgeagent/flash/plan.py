"""Flash decisions [pure]: block maps, write plans, target safety, watch events, progress text.

What it does:

- parses bmaptool XML block maps (``parse_bmap``) and turns them, or SEEK_DATA/SEEK_HOLE results
  passed in by the caller, into a `WritePlan`: byte ranges aligned out to 4 KiB, merged, split into
  chunks of at most ``CHUNK_BYTES`` (ADR-0009 §2);
- decides whether a target may be written (`decide_target`) from facts gathered elsewhere
  (`TargetFacts`): every refusal is a `Reason` with a stable code and a message, and ``hard``
  reasons are never overridden by ``--force`` (ADR-0009 §3);
- parses ``/proc/self/mountinfo`` and ``/proc/swaps`` text and finds which mounts a set of device
  numbers backs (`usage_of`);
- cuts a plan into `Group`s checked by `Span`s (`range_spans`, `chunk_spans`, `group_plan`):
  every written byte is covered by a signed range's sha256, a chunk's sha256, or must be zero,
  and each group can be verified, then written, on its own (ADR-0009 §1);
- the watch-mode state machine (`WatchState`) and the progress line (`progress_line`).

What it does not do: no file, device, sysfs or udev access, no clock, no hashing. Offsets, sizes,
text and ``elapsed`` seconds come in as arguments.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgeagent.errors import ConfigError

ALIGN = 4096
CHUNK_BYTES = 4 * 1024 * 1024
MAX_BMAP_BYTES = 16 * 1024 * 1024
MiB = 1024 * 1024

# Mount points whose backing device holds the running system (ADR-0009 §3).
SYSTEM_MOUNTS: frozenset[str] = frozenset({"/", "/boot", "/boot/efi", "/efi", "/usr"})


# Block maps and write plans -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockMap:
    """A parsed bmaptool block map: image size, block size, mapped block ranges (inclusive).

    ``checksums`` holds each range's sha256 (hex) when the map has ``ChecksumType`` sha256 and
    every range carries one; otherwise it is empty.
    """

    image_size: int
    block_size: int
    ranges: tuple[tuple[int, int], ...]
    checksums: tuple[str, ...] = ()


def _bmap_int(root: ET.Element, tag: str, source: str) -> int:
    node = root.find(tag)
    text = (node.text or "").strip() if node is not None else ""
    if not text.isdigit():
        raise ConfigError(f"{source}: field '{tag}': expected a non-negative integer, got {text!r}")
    return int(text)


def parse_bmap(data: bytes, source: str) -> BlockMap:
    """Parse a bmaptool XML block map (format 1.x or 2.x).

    Args:
        data: the file's bytes (untrusted: at most ``MAX_BMAP_BYTES``, no DTD or entities).
        source: the file name, for error messages.

    Returns:
        The block map; ranges are sorted, non-overlapping and inside the image.

    Raises:
        ConfigError: not a bmap, unsupported version, or a malformed or out-of-range field.
    """
    if len(data) > MAX_BMAP_BYTES:
        raise ConfigError(f"{source}: block map larger than {MAX_BMAP_BYTES} bytes")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise ConfigError(f"{source}: block map must not contain a DTD or entities")
    try:
        # The attacks defusedxml guards against all need a DTD, refused just above.
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as exc:
        raise ConfigError(f"{source}: not valid XML: {exc}") from exc
    if root.tag != "bmap":
        raise ConfigError(f"{source}: root element: expected <bmap>, got <{root.tag}>")
    version = root.get("version", "")
    if version.split(".")[0] not in ("1", "2"):
        raise ConfigError(f"{source}: attribute 'version': expected 1.x or 2.x, got {version!r}")
    image_size = _bmap_int(root, "ImageSize", source)
    block_size = _bmap_int(root, "BlockSize", source)
    if block_size < 512 or block_size & (block_size - 1):
        raise ConfigError(
            f"{source}: field 'BlockSize': expected a power of two >= 512, got {block_size}"
        )
    blocks = (image_size + block_size - 1) // block_size
    node = root.find("BlockMap")
    if node is None:
        raise ConfigError(f"{source}: missing field 'BlockMap'")
    ranges: list[tuple[int, int]] = []
    sums: list[str] = []
    ctype = root.find("ChecksumType")
    sha256_map = ctype is not None and (ctype.text or "").strip() == "sha256"
    for rng in node.findall("Range"):
        chksum = rng.get("chksum", "").strip().lower()
        if len(chksum) == 64 and all(c in "0123456789abcdef" for c in chksum):
            sums.append(chksum)
        text = (rng.text or "").strip()
        first_s, sep, last_s = text.partition("-")
        if not sep:
            last_s = first_s
        first_s, last_s = first_s.strip(), last_s.strip()
        if not (first_s.isdigit() and last_s.isdigit()):
            raise ConfigError(f"{source}: field 'Range': expected 'FIRST-LAST', got {text!r}")
        first, last = int(first_s), int(last_s)
        if first > last or last >= blocks:
            raise ConfigError(
                f"{source}: field 'Range' {text!r}: expected FIRST <= LAST < {blocks} blocks"
            )
        if ranges and first <= ranges[-1][1]:
            raise ConfigError(f"{source}: field 'Range' {text!r}: ranges must be sorted, disjoint")
        ranges.append((first, last))
    checksums = tuple(sums) if sha256_map and len(sums) == len(ranges) else ()
    return BlockMap(image_size, block_size, tuple(ranges), checksums)


def extents_from_bmap(bmap: BlockMap) -> list[tuple[int, int]]:
    """Byte extents ``[start, end)`` of a block map's mapped ranges, clipped to the image."""
    return [
        (first * bmap.block_size, min((last + 1) * bmap.block_size, bmap.image_size))
        for first, last in bmap.ranges
    ]


def signed_ranges(bmap: BlockMap) -> list[tuple[int, int, str]] | None:
    """``(start, end, sha256)`` per mapped range, or None when the map has no sha256 sums."""
    if not bmap.checksums:
        return None
    return [(s, e, c) for (s, e), c in zip(extents_from_bmap(bmap), bmap.checksums, strict=True)]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One write: ``length`` bytes at ``offset`` (offset aligned to ``ALIGN``)."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What to write: chunks in ascending order, and the image they come from."""

    image_size: int
    chunks: tuple[Chunk, ...]

    @property
    def mapped_bytes(self) -> int:
        """Bytes that will be written (and read back)."""
        return sum(c.length for c in self.chunks)

    @property
    def mapped_end(self) -> int:
        """One past the last byte written (0 for an empty plan)."""
        return self.chunks[-1].end if self.chunks else 0

    def unwritten(self) -> list[tuple[int, int]]:
        """Extents of the image that the plan does not write (must be zeros, ADR-0009 §2)."""
        out: list[tuple[int, int]] = []
        pos = 0
        for c in self.chunks:
            if c.offset > pos:
                out.append((pos, c.offset))
            pos = c.end
        if pos < self.image_size:
            out.append((pos, self.image_size))
        return out


def build_plan(
    extents: Iterable[tuple[int, int]],
    image_size: int,
    *,
    align: int = ALIGN,
    chunk_bytes: int = CHUNK_BYTES,
) -> WritePlan:
    """Turn mapped byte extents into aligned, merged chunks.

    Args:
        extents: ``[start, end)`` byte ranges with data (any order, may overlap or be unaligned),
            from a block map or from SEEK_DATA/SEEK_HOLE.
        image_size: the image length in bytes.
        align: alignment of chunk offsets and lengths (the last chunk may end at ``image_size``).
        chunk_bytes: the largest write (a multiple of ``align``).

    Raises:
        ValueError: an extent outside the image, or bad alignment arguments.
    """
    if align < 1 or chunk_bytes < align or chunk_bytes % align:
        raise ValueError(f"chunk_bytes {chunk_bytes} must be a positive multiple of align {align}")
    if image_size < 0:
        raise ValueError(f"image size must be >= 0, got {image_size}")
    aligned: list[tuple[int, int]] = []
    for start, end in extents:
        if start < 0 or end > image_size or start > end:
            raise ValueError(f"extent [{start}, {end}) is outside the image of {image_size} bytes")
        if start == end:
            continue
        aligned.append((start // align * align, min(-(-end // align) * align, image_size)))
    aligned.sort()
    merged: list[tuple[int, int]] = []
    for start, end in aligned:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    chunks: list[Chunk] = []
    for start, end in merged:
        pos = start
        while pos < end:
            n = min(chunk_bytes, end - pos)
            chunks.append(Chunk(pos, n))
            pos += n
    return WritePlan(image_size, tuple(chunks))


def full_plan(image_size: int) -> WritePlan:
    """A plan that writes the whole image (no block map, no sparse information)."""
    return build_plan([(0, image_size)], image_size)


# Verification spans and write groups ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes ``[start, end)`` that must hash to ``sha256`` (raw digest), or be zero if it is b""."""

    start: int
    end: int
    sha256: bytes = b""


@dataclass(frozen=True, slots=True)
class Group:
    """Consecutive chunks that can only be checked together, and the spans that check them.

    No span crosses a group's edges, so a group's bytes can be verified on their own and written
    as soon as they are (ADR-0009 §1): a signed range longer than a chunk ties its chunks into
    one group.
    """

    chunks: tuple[Chunk, ...]
    spans: tuple[Span, ...]

    @property
    def offset(self) -> int:
        """The first byte."""
        return self.chunks[0].offset

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.chunks[-1].end

    @property
    def length(self) -> int:
        """Bytes written by the group (its chunks are contiguous: no span covers a gap)."""
        return sum(c.length for c in self.chunks)


def range_spans(plan: WritePlan, ranges: Sequence[tuple[int, int, str]]) -> list[Span]:
    """Spans checking every byte the plan writes against a signed block map.

    Each signed range becomes a span with its sha256; the bytes a chunk writes outside every
    range (alignment padding of a map with blocks smaller than 4 KiB) become zero spans, split at
    chunk edges. Together the spans tile the written bytes exactly.

    Args:
        plan: the write plan built from the same block map.
        ranges: ``(start, end, sha256hex)`` per range, sorted and disjoint (`signed_ranges`).

    Raises:
        ValueError: a range is not entirely written by the plan, or the ranges overlap.
    """
    runs: list[tuple[int, int]] = []
    for c in plan.chunks:
        if runs and runs[-1][1] == c.offset:
            runs[-1] = (runs[-1][0], c.end)
        else:
            runs.append((c.offset, c.end))
    signed: list[Span] = []
    ri = 0
    for start, end, sha in ranges:
        if signed and start < signed[-1].end:
            raise ValueError(f"range [{start}, {end}) overlaps the previous range")
        while ri < len(runs) and runs[ri][1] <= start:
            ri += 1
        if start >= end or ri >= len(runs) or not (runs[ri][0] <= start and end <= runs[ri][1]):
            raise ValueError(f"range [{start}, {end}) is not written by the plan")
        signed.append(Span(start, end, bytes.fromhex(sha)))
    zeros: list[Span] = []
    si = 0
    for c in plan.chunks:
        pos = c.offset
        while si < len(signed) and signed[si].end <= pos:
            si += 1
        k = si
        while pos < c.end:
            if k < len(signed) and signed[k].start <= pos:
                pos = min(signed[k].end, c.end)
                k += 1
                continue
            stop = min(signed[k].start, c.end) if k < len(signed) else c.end
            zeros.append(Span(pos, stop))
            pos = stop
    return sorted(signed + zeros, key=lambda s: s.start)


def chunk_spans(plan: WritePlan, digests: Sequence[bytes]) -> list[Span]:
    """One span per chunk, with the chunk's sha256 (taken by a whole-image verification pass)."""
    return [Span(c.offset, c.end, d) for c, d in zip(plan.chunks, digests, strict=True)]


def group_plan(plan: WritePlan, spans: Sequence[Span]) -> tuple[Group, ...]:
    """Split the plan into the smallest groups that no span crosses.

    Args:
        plan: the write plan.
        spans: sorted spans tiling the plan's written bytes (`range_spans`, `chunk_spans`).
    """
    groups: list[Group] = []
    chunks: list[Chunk] = []
    in_group: list[Span] = []
    reach = 0
    si = 0
    for c in plan.chunks:
        if chunks and c.offset >= reach:
            groups.append(Group(tuple(chunks), tuple(in_group)))
            chunks, in_group = [], []
        chunks.append(c)
        reach = max(reach, c.end)
        while si < len(spans) and spans[si].start < c.end:
            in_group.append(spans[si])
            reach = max(reach, spans[si].end)
            si += 1
    if chunks:
        groups.append(Group(tuple(chunks), tuple(in_group)))
    return tuple(groups)


# Target safety ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: device number ``MAJ:MIN``, mount point and source."""

    devnum: str
    mountpoint: str
    source: str


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out: list[str] = []
    i = 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/self/mountinfo`` (malformed lines are skipped)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) < 10 or "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        if sep + 2 >= len(parts):
            continue
        mounts.append(Mount(parts[2], _unescape(parts[4]), _unescape(parts[sep + 2])))
    return mounts


def parse_swaps(text: str) -> list[str]:
    """Return the device paths listed in ``/proc/swaps`` (header skipped)."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a target disk (with its partitions and holders) is used for right now."""

    mounted: tuple[str, ...] = ()
    system: tuple[str, ...] = ()


def usage_of(
    devnums: Iterable[str],
    devpaths: Iterable[str],
    mounts: Sequence[Mount],
    swaps: Sequence[str],
) -> Usage:
    """Find the mounts and swaps backed by a disk.

    Args:
        devnums: ``MAJ:MIN`` of the disk, its partitions and its holders (dm, md).
        devpaths: ``/dev`` paths of the same devices (swaps are listed by path).
        mounts: parsed mountinfo.
        swaps: parsed swaps.

    Returns:
        Mount points (and ``swap:PATH``) on the disk; ``system`` lists the ones that hold the
        running system (``SYSTEM_MOUNTS`` and swap).
    """
    nums = set(devnums)
    paths = set(devpaths)
    # By device number, or by source path (btrfs and some others report anonymous numbers).
    mounted = sorted({m.mountpoint for m in mounts if m.devnum in nums or m.source in paths})
    swap = [f"swap:{s}" for s in swaps if s in paths]
    system = [m for m in mounted if m in SYSTEM_MOUNTS] + swap
    return Usage(tuple(mounted + swap), tuple(system))


@dataclass(frozen=True, slots=True)
class TargetFacts:
    """Facts about a flash target, gathered by `edgeagent.flash.devices` (or a test)."""

    path: str
    is_block: bool
    size: int
    removable: bool = False
    usb: bool = False
    read_only: bool = False
    is_partition: bool = False
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    serial: str = ""


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a target is refused: a stable ``code``, a message, and whether ``--force`` overrides."""

    code: str
    message: str
    hard: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """The safety verdict: ``allowed``; ``refusals`` that apply; ``overridden`` by ``--force``."""

    allowed: bool
    refusals: tuple[Reason, ...]
    overridden: tuple[Reason, ...]


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def target_reasons(facts: TargetFacts, plan: WritePlan) -> list[Reason]:
    """Every safety rule the target breaks (ADR-0009 §3), hard ones first."""
    p = facts.path
    reasons: list[Reason] = []
    if facts.usage.system:
        reasons.append(
            Reason(
                "system",
                f"{p} holds the running system ({', '.join(facts.usage.system)}); "
                "never flashed, even with --force",
                True,
            )
        )
    if facts.read_only:
        reasons.append(Reason("read-only", f"{p} is read-only (write-protect switch?)", True))
    if facts.is_block and plan.mapped_end > facts.size:
        reasons.append(
            Reason(
                "too-small",
                f"{p} is too small: {_mib(facts.size)}, the image's data ends at "
                f"{_mib(plan.mapped_end)}",
                True,
            )
        )
    if not facts.is_block:
        return reasons
    if facts.usage.mounted:
        reasons.append(
            Reason(
                "mounted",
                f"{p} is mounted ({', '.join(facts.usage.mounted)}); unmount it first",
                False,
            )
        )
    if plan.mapped_end <= facts.size < plan.image_size:
        reasons.append(
            Reason(
                "smaller-than-image",
                f"{p} ({_mib(facts.size)}) is smaller than the image ({_mib(plan.image_size)})",
                False,
            )
        )
    if not (facts.removable or facts.usb):
        reasons.append(
            Reason("not-removable", f"{p} is neither a removable nor a USB device", False)
        )
    if facts.is_partition:
        reasons.append(Reason("partition", f"{p} is a partition, not a whole disk", False))
    return reasons


def decide_target(facts: TargetFacts, plan: WritePlan, *, force: bool) -> Decision:
    """Decide whether ``plan`` may be written to the target. Hard reasons always refuse."""
    reasons = target_reasons(facts, plan)
    refusals = tuple(r for r in reasons if r.hard or not force)
    overridden = tuple(r for r in reasons if not r.hard and force)
    return Decision(not refusals, refusals, overridden)


def is_candidate(facts: TargetFacts, plan: WritePlan | None = None) -> bool:
    """A target worth listing or flashing unattended: no reason to refuse at all."""
    probe = plan or WritePlan(0, ())
    return facts.is_block and facts.size > 0 and not target_reasons(facts, probe)


# Watch mode -----------------------------------------------------------------------------


@dataclass(slots=True)
class WatchState:
    """Which targets are present, so each inserted medium is flashed once.

    Rules: a candidate device that shows a non-zero size, and was not present before, is to be
    flashed (``add``, or ``change`` from size 0: card readers and loop devices report media that
    way). ``remove``, or a size of 0, forgets it, so the next medium in the same slot is flashed.
    """

    present: set[str] = field(default_factory=set)

    def seed(self, names: Iterable[str]) -> None:
        """Mark devices already present at start (they are not flashed)."""
        self.present.update(names)

    def on_event(self, action: str, name: str, size: int, candidate: bool) -> bool:
        """Feed one uevent; return True when ``name`` should be flashed now."""
        if action == "remove" or size == 0:
            self.present.discard(name)
            return False
        if action not in ("add", "change") or name in self.present:
            return False
        if not candidate:
            return False
        self.present.add(name)
        return True


# Progress -------------------------------------------------------------------------------


def progress_line(phase: str, done: int, total: int, elapsed_s: float) -> str:
    """``write  42% 84.0/200.0 MiB 120.3 MiB/s ETA 1s`` for ``done`` of ``total`` bytes."""
    pct = 100 if total <= 0 else done * 100 // total
    rate = done / elapsed_s / MiB if elapsed_s > 0 else 0.0
    eta = f"ETA {max(0, round((total - done) / MiB / rate))}s" if rate > 0 else "ETA ?"
    return f"{phase:<9}{pct:3d}% {done / MiB:.1f}/{total / MiB:.1f} MiB {rate:.1f} MiB/s {eta}"

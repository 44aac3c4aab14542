"""Flash an image onto a target: verify, write the mapped chunks, read everything back.

What it does (ADR-0009), each step as blocking I/O in ``trio.to_thread.run_sync`` with a
per-flash `trio.CapacityLimiter` (one thread per target, so a station can flash several targets
at once) and ``abandon_on_cancel=False`` for anything that writes:

1. `image_extents`: mapped ranges of the image by SEEK_DATA/SEEK_HOLE (when there is no block map).
2. `verify_image`: one pass over the whole image: its sha256 (holes hashed as zeros without being
   read), the sha256 of every planned chunk, and a check that every byte the plan skips is zero.
   The caller's ``check`` (TUF target or signed manifest) runs on the result before the target is
   even opened.
3. `write_image`: large aligned writes, through O_DIRECT when the target supports it (otherwise
   buffered with an fsync every ``FSYNC_EVERY`` bytes), then a final fsync. Block devices are opened
   with O_EXCL (the kernel refuses while mounted) unless forced. A regular file target is recreated
   sparse at the image's size, so it ends byte-identical to the image.
4. `read_back`: every written chunk is read back (O_DIRECT, or after ``POSIX_FADV_DONTNEED``) and
   its sha256 compared with the digest from step 2.

An I/O error while the target is in use (ENODEV, ENXIO, EIO, ENOSPC ...) becomes a `FlashError`
naming the target, the offset and "disappeared or failed". Progress (rate, ETA) goes to a text
stream (stderr).

What it does not do: decide whether a target is safe (`edgeagent.flash.plan`), find targets
(`edgeagent.flash.devices`), or know about TUF (the caller passes ``check``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import trio

from edgeagent.errors import DigestMismatchError, FlashError, VerificationError
from edgeagent.flash.plan import CHUNK_BYTES, Chunk, WritePlan, progress_line

log = logging.getLogger(__name__)

FSYNC_EVERY = 64 * 1024 * 1024
BATCH_BYTES = 32 * 1024 * 1024  # work handed to a thread at once (cancellation granularity)
DIRECT_ALIGN = 4096
_ZEROS = bytes(CHUNK_BYTES)
_GONE = {errno.ENODEV, errno.ENXIO, errno.EIO, errno.ENOSPC, errno.ENOMEDIUM, errno.ESHUTDOWN}

Check = Callable[[int, str], None]


class Progress:
    """Progress of one phase on a text stream: a rewritten line on a terminal, else 10% steps."""

    def __init__(self, stream: TextIO | None, label: str = "") -> None:
        self.stream = stream
        self.label = label
        self._tty = bool(stream is not None and stream.isatty())
        self._phase = ""
        self._total = 0
        self._start = 0.0
        self._last_print = 0.0
        self._last_step = -1
        self.done = 0
        self._lock = threading.Lock()

    def start(self, phase: str, total: int) -> None:
        """Begin a phase of ``total`` bytes."""
        self._phase, self._total, self.done = phase, total, 0
        self._start = time.monotonic()
        self._last_step = -1
        self.advance(0)

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes; print when due (thread-safe: writer and reader share it)."""
        with self._lock:
            self._advance(n)

    def _advance(self, n: int) -> None:
        self.done += n
        if self.stream is None:
            return
        now = time.monotonic()
        line = self.label + progress_line(self._phase, self.done, self._total, now - self._start)
        if self._tty:
            if now - self._last_print >= 0.25 or self.done >= self._total:
                self._last_print = now
                end = "\n" if self.done >= self._total else ""
                self.stream.write("\r" + line + end)
                self.stream.flush()
            return
        step = 10 if self._total <= 0 else self.done * 10 // self._total
        if step != self._last_step:
            self._last_step = step
            self.stream.write(line + "\n")
            self.stream.flush()


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """Result of `verify_image`: whole-image length and sha256, and one sha256 per chunk."""

    length: int
    sha256: str
    chunk_digests: tuple[bytes, ...]


@dataclass(slots=True)
class FlashResult:
    """What a successful flash did, for the pass line and the benchmark."""

    target: str
    image_sha256: str
    written: int
    direct: bool
    seconds: dict[str, float] = field(default_factory=dict)


def _aligned_buffer(size: int = CHUNK_BYTES) -> mmap.mmap:
    # Anonymous mmaps are page aligned: usable for O_DIRECT. Freed by the garbage collector
    # (views of it may still be referenced by a traceback when a phase fails).
    return mmap.mmap(-1, size)


def _pread_exact(fd: int, view: memoryview, offset: int, what: str) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise FlashError(f"{what}: unexpected end of file at offset {offset + got}")
        got += n


# Image side ------------------------------------------------------------------------------


def image_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """Data extents ``[start, end)`` of an open file by SEEK_DATA/SEEK_HOLE (all if unsupported)."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # No data after pos.
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)] if size else []
    return out


def _segments(plan: WritePlan, data: list[tuple[int, int]]) -> list[tuple[int, int, int, bool]]:
    """Cover the image with ``(start, end, chunk index or -1, read)`` in order.

    Planned chunks are always read. Unwritten gaps are read (to prove they are zero) only where
    the file has data; holes are known zeros.
    """
    segs: list[tuple[int, int, int, bool]] = []

    def gap(start: int, end: int) -> None:
        pos = start
        for ds, de in data:
            if de <= pos or ds >= end:
                continue
            if ds > pos:
                segs.append((pos, ds, -1, False))
            s, e = max(ds, pos), min(de, end)
            segs.append((s, e, -1, True))
            pos = e
        if pos < end:
            segs.append((pos, end, -1, False))

    pos = 0
    for i, c in enumerate(plan.chunks):
        if c.offset > pos:
            gap(pos, c.offset)
        segs.append((c.offset, c.end, i, True))
        pos = c.end
    if pos < plan.image_size:
        gap(pos, plan.image_size)
    return segs


def _split_batches(
    segs: list[tuple[int, int, int, bool]],
) -> list[list[tuple[int, int, int, bool]]]:
    batches: list[list[tuple[int, int, int, bool]]] = [[]]
    size = 0
    for seg in segs:
        if size >= BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(seg)
        size += seg[1] - seg[0]
    return [b for b in batches if b]


class _RangeSums:
    """Running sha256 of each signed block map range over pieces fed in ascending order."""

    def __init__(
        self, ranges: Sequence[tuple[int, int, str]], mismatch: Callable[[int, int], Exception]
    ):
        self.ranges = list(ranges)
        self.mismatch = mismatch
        self.at = 0
        self.hash: hashlib._Hash | None = None

    def update(self, pos: int, piece: memoryview) -> None:
        """Feed ``piece`` found at offset ``pos``; raise ``mismatch`` when a range is wrong."""
        while piece:
            while self.at < len(self.ranges) and self.ranges[self.at][1] <= pos:
                self.at += 1
            if self.at >= len(self.ranges):
                return
            start, end, sha = self.ranges[self.at]
            if pos < start:
                skip = min(start - pos, len(piece))
                pos, piece = pos + skip, piece[skip:]
                continue
            n = min(end - pos, len(piece))
            if self.hash is None:
                self.hash = hashlib.sha256()
            self.hash.update(piece[:n])
            pos, piece = pos + n, piece[n:]
            if pos == end:
                digest, self.hash = self.hash.hexdigest(), None
                self.at += 1
                if digest != sha:
                    raise self.mismatch(start, end)

    def finish(self) -> None:
        """Raise ``mismatch`` if a range was not fed completely."""
        if self.at < len(self.ranges):
            start, end, _ = self.ranges[self.at]
            raise self.mismatch(start, end)


async def verify_image(
    fd: int,
    plan: WritePlan,
    image: str,
    limiter: trio.CapacityLimiter,
    progress: Progress,
    ranges: Sequence[tuple[int, int, str]] | None = None,
) -> VerifiedImage:
    """Hash the image and each planned chunk; prove skipped bytes are zero.

    Args:
        fd: the open image.
        plan: the write plan.
        image: the image's name, for messages.
        limiter: the flash's thread limiter.
        progress: progress sink.
        ranges: ``(start, end, sha256hex)`` of a *signed* block map (ADR-0009 §1): each range is
            checked here, and the whole-image sha256 is not computed (``sha256`` is "").

    Raises:
        DigestMismatchError: a signed block map range does not match.
        VerificationError: a byte the plan would skip is not zero (the block map omits data).
        FlashError: the image cannot be read.
    """
    data = await trio.to_thread.run_sync(image_extents, fd, plan.image_size, limiter=limiter)
    whole = hashlib.sha256() if ranges is None else None
    digests: list[bytes] = [b""] * len(plan.chunks)
    running: dict[int, hashlib._Hash] = {}

    def tampered(start: int, end: int) -> Exception:
        return DigestMismatchError(
            f"{image}: bytes {start}-{end - 1} do not match the sha256 in the signed block map "
            "(tampered or wrong image)"
        )

    sums = _RangeSums(ranges, tampered) if ranges is not None else None
    buf = _aligned_buffer()
    view = memoryview(buf)

    def run(batch: list[tuple[int, int, int, bool]]) -> None:
        for start, end, index, read in batch:
            pos = start
            while pos < end:
                n = min(CHUNK_BYTES, end - pos)
                piece = view[:n]
                if read:
                    _pread_exact(fd, piece, pos, image)
                    if index < 0 and piece.tobytes() != _ZEROS[:n]:
                        raise VerificationError(
                            f"{image}: the block map omits data between offsets {pos} and "
                            f"{pos + n} (unmapped bytes must be zero); refusing to flash"
                        )
                elif whole is not None:
                    piece = memoryview(_ZEROS)[:n]
                else:
                    pos += n  # A hole, not hashed: its bytes are zeros by definition.
                    progress.advance(n)
                    continue
                if whole is not None:
                    whole.update(piece)
                if sums is not None:
                    sums.update(pos, piece)
                elif index >= 0:
                    chunk_hash = running.setdefault(index, hashlib.sha256())
                    chunk_hash.update(piece)
                    if pos + n == plan.chunks[index].end:
                        digests[index] = running.pop(index).digest()
                pos += n
                progress.advance(n)

    segs = _segments(plan, data)
    progress.start("verify", plan.image_size)
    try:
        for batch in _split_batches(segs):
            await trio.to_thread.run_sync(run, batch, limiter=limiter)
    except OSError as exc:
        raise FlashError(f"{image}: cannot read image: {exc.strerror}") from exc
    if sums is not None:
        sums.finish()
    return VerifiedImage(plan.image_size, whole.hexdigest() if whole else "", tuple(digests))


# Target side -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    path: str
    fd: int
    direct: bool
    is_block: bool
    buffered_fd: int = -1  # For unaligned tails next to an O_DIRECT fd.

    def tail_fd(self) -> int:
        if not self.direct:
            return self.fd
        if self.buffered_fd < 0:
            self.buffered_fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        return self.buffered_fd

    def close(self) -> None:
        for fd in (self.buffered_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.buffered_fd = -1


def _gone(target: str, offset: int, exc: OSError, phase: str) -> FlashError:
    if exc.errno in _GONE:
        return FlashError(
            f"{target}: target disappeared or failed during {phase} at offset {offset} "
            f"({exc.strerror}); the target is incomplete, do not use it"
        )
    return FlashError(f"{target}: {phase} failed at offset {offset}: {exc.strerror}")


def open_target(path: str, image_size: int, *, exclusive: bool, direct: bool = True) -> _Target:
    """Open a block device or regular file for writing (see the module docstring).

    Raises:
        FlashError: busy (mounted, O_EXCL), missing or not writable.
    """
    try:
        st = os.stat(path)
        is_block = stat.S_ISBLK(st.st_mode)
    except FileNotFoundError:
        is_block = False
    flags = os.O_RDWR | os.O_CLOEXEC
    if is_block and exclusive:
        flags |= os.O_EXCL
    if not is_block:
        flags |= os.O_CREAT
    try:
        fd = -1
        if direct:
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.info("%s: O_DIRECT not supported; buffered writes with periodic fsync", path)
        use_direct = fd >= 0
        if fd < 0:
            fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FlashError(f"{path}: busy (mounted or opened exclusively elsewhere)") from exc
        raise FlashError(f"{path}: cannot open for writing: {exc.strerror}") from exc
    if not is_block:
        try:
            # A file target is recreated sparse so that skipped ranges read as zeros.
            os.ftruncate(fd, 0)
            os.ftruncate(fd, image_size)
        except OSError as exc:
            os.close(fd)
            raise FlashError(f"{path}: cannot size the file: {exc.strerror}") from exc
    return _Target(path, fd, use_direct, is_block)


def _aligned(c: Chunk) -> bool:
    return c.offset % DIRECT_ALIGN == 0 and c.length % DIRECT_ALIGN == 0


async def write_image(
    src_fd: int,
    target: _Target,
    plan: WritePlan,
    limiter: trio.CapacityLimiter,
    progress: Progress,
) -> None:
    """Write every planned chunk from the image to the target, then fsync.

    Raises:
        FlashError: a read of the image or a write to the target failed.
    """
    buf = _aligned_buffer()
    view = memoryview(buf)
    since_sync = 0

    def run(chunks: list[Chunk]) -> None:
        nonlocal since_sync
        for c in chunks:
            piece = view[: c.length]
            try:
                _pread_exact(src_fd, piece, c.offset, "image")
            except OSError as exc:
                raise FlashError(f"image: read failed at offset {c.offset}: {exc}") from exc
            fd = target.fd if _aligned(c) else target.tail_fd()
            done = 0
            try:
                while done < c.length:
                    n = os.pwrite(fd, piece[done:], c.offset + done)
                    if n == 0:
                        raise OSError(errno.ENOSPC, "no space left on target")
                    done += n
                if not target.direct:
                    since_sync += c.length
                    if since_sync >= FSYNC_EVERY:
                        os.fsync(fd)
                        since_sync = 0
            except OSError as exc:
                raise _gone(target.path, c.offset + done, exc, "write") from exc
            progress.advance(c.length)

    def sync() -> None:
        for fd in (target.fd, target.buffered_fd):
            if fd >= 0:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    raise _gone(target.path, plan.mapped_end, exc, "final fsync") from exc

    progress.start("write", plan.mapped_bytes)
    for batch in _chunk_batches(plan):
        await trio.to_thread.run_sync(run, batch, limiter=limiter, abandon_on_cancel=False)
    await trio.to_thread.run_sync(sync, limiter=limiter, abandon_on_cancel=False)


def _chunk_batches(plan: WritePlan) -> list[list[Chunk]]:
    batches: list[list[Chunk]] = []
    size = BATCH_BYTES
    for c in plan.chunks:
        if size >= BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(c)
        size += c.length
    return batches


async def read_back(
    target: _Target,
    plan: WritePlan,
    verified: VerifiedImage,
    limiter: trio.CapacityLimiter,
    progress: Progress,
    ranges: Sequence[tuple[int, int, str]] | None = None,
) -> None:
    """Read every written chunk back from the target and compare sha256 digests.

    The digests are those of each chunk from `verify_image`, or with ``ranges`` (a signed
    block map) the signed sha256 of each range: then the target is checked against the signed
    values directly.

    Raises:
        FlashError: a chunk or range differs (names the bytes) or cannot be read.
    """
    buf = _aligned_buffer()
    view = memoryview(buf)

    def mismatch(start: int, end: int) -> Exception:
        return FlashError(
            f"{target.path}: read-back mismatch in bytes {start}-{end - 1}: the target did not "
            "store what was written (failing medium, or the image changed after verification)"
        )

    sums = _RangeSums(ranges, mismatch) if ranges is not None else None

    def drop_cache() -> None:
        # Best effort: make buffered read-back come from the device, not the page cache.
        for fd in (target.fd, target.buffered_fd):
            if fd >= 0:
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError as exc:
                    log.debug("%s: fadvise failed: %s", target.path, exc)

    index = 0

    def run(chunks: list[Chunk]) -> None:
        nonlocal index
        for c in chunks:
            piece = view[: c.length]
            fd = target.fd if _aligned(c) else target.tail_fd()
            try:
                _pread_exact(fd, piece, c.offset, target.path)
            except OSError as exc:
                raise _gone(target.path, c.offset, exc, "read-back") from exc
            if sums is not None:
                sums.update(c.offset, piece)
            elif hashlib.sha256(piece).digest() != verified.chunk_digests[index]:
                raise mismatch(c.offset, c.end)
            index += 1
            progress.advance(c.length)

    progress.start("readback", plan.mapped_bytes)
    if not target.direct or target.buffered_fd >= 0:
        await trio.to_thread.run_sync(drop_cache, limiter=limiter)
    for batch in _chunk_batches(plan):
        await trio.to_thread.run_sync(run, batch, limiter=limiter)
    if sums is not None:
        sums.finish()


async def flash_image(
    src_fd: int,
    image: str,
    target_path: str,
    plan: WritePlan,
    check: Check,
    *,
    exclusive: bool = True,
    progress: Progress | None = None,
    ranges: Sequence[tuple[int, int, str]] | None = None,
    direct: bool = True,
) -> FlashResult:
    """Verify the image (``check(length, sha256)`` must not raise), write it, read it back.

    Args:
        src_fd: the open image (kept open from verification to write).
        image: the image's name, for messages.
        target_path: the block device or file to write.
        plan: the chunks to write (from `edgeagent.flash.plan`).
        check: the trust check; raises `VerificationError` to stop before the target is opened.
        exclusive: open a block device with O_EXCL (False only with ``--force`` on a mounted one).
        progress: where progress lines go (None: nowhere).
        ranges: the per-range sha256 of a signed block map (see `verify_image`); ``check`` is
            then called with an empty sha256.
        direct: try O_DIRECT (False: buffered writes with periodic fsync, for tests).

    Raises:
        VerificationError: the image does not match what is trusted.
        FlashError: the write or read-back failed, or the target disappeared.
    """
    progress = progress or Progress(None)
    limiter = trio.CapacityLimiter(1)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    verified = await verify_image(src_fd, plan, image, limiter, progress, ranges)
    check(verified.length, verified.sha256)
    t1 = time.monotonic()
    times["verify"] = t1 - t0
    target = await trio.to_thread.run_sync(
        lambda: open_target(target_path, plan.image_size, exclusive=exclusive, direct=direct),
        limiter=limiter,
    )
    try:
        # Read-back starts after the final fsync. Overlapping it with the writes was measured
        # (bench/bench_flash.py setup): no gain on 2 cores, and weaker (reads before the flush).
        await write_image(src_fd, target, plan, limiter, progress)
        t2 = time.monotonic()
        times["write"] = t2 - t1
        await read_back(target, plan, verified, limiter, progress, ranges)
        times["readback"] = time.monotonic() - t2
    finally:
        target.close()
    return FlashResult(target_path, verified.sha256, plan.mapped_bytes, target.direct, times)

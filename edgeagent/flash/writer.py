"""Flash an image onto a target: verify, write the mapped chunks, read everything back.

What it does (ADR-0009 §1), as blocking code (`flash_blocking`, run directly by the CLI for one
target, or in a thread by `flash_image` under trio for the watch mode) with a few helper
threads that hash while the calling thread writes:

1. Trust check, before the target is opened:

   - **signed block map** (``ranges`` given): the image length is checked first (``check``),
     then every byte the plan skips must be zero (holes found by SEEK_HOLE are not read);
   - **whole image** (no signed block map): one pass over the whole image computes its sha256
     (holes hashed as zeros without being read) and the sha256 of every planned chunk, checks
     that skipped bytes are zero, and ``check(length, sha256)`` runs on the result.

2. Write. The plan is cut into groups (`edgeagent.flash.plan.group_plan`), each checked by the
   spans it holds. With a signed block map, helper threads read each group from the image and
   hash it (`RangeChecks`). By default every group must match before the first write, so a bad
   image leaves the target untouched; the writer then re-reads the image (the read-back in
   step 3 catches a change in between). With ``stream``, each group is written as soon as it
   matches, from the very buffers that were hashed when it fits ``HOLD_BYTES`` (else re-read):
   no byte is written before the signed hash covering it has matched, and a range that does not
   match stops the flash there (`DigestMismatchError`; the target may hold the verified ranges
   before it, the message says how much). The checks may be started by the caller before the
   trust check, to overlap hashing with it; nothing is written before ``flash_blocking`` has run
   ``check``. Without a signed block map, the whole-image pass of step 1 comes first and the
   writer re-reads the image.
   Writes are large and aligned, through O_DIRECT when the target supports it (otherwise
   buffered with an fsync every ``FSYNC_EVERY`` bytes), then a final fsync. Block devices are
   opened with O_EXCL (the kernel refuses while mounted) unless forced. A regular file target is
   recreated sparse at the image's size, so it ends byte-identical to the image.

3. Read-back, after the final fsync of all writes (so a fake-capacity medium that wraps its
   addresses is caught): every group is read back (O_DIRECT, or after ``POSIX_FADV_DONTNEED``)
   by the helper threads and checked against the same spans: the signed range sums, or the
   chunk sums of the whole-image pass.

An I/O error while the target is in use (ENODEV, ENXIO, EIO, ENOSPC ...) becomes a `FlashError`
naming the target, the offset and "disappeared or failed". Progress (rate, ETA) goes to a text
stream (stderr).

What it does not do: decide whether a target is safe (`edgeagent.flash.plan`), find targets
(`edgeagent.flash.devices`), or know about TUF (the caller passes ``check``). It imports trio only
inside `flash_image`, so a single flash from the command line does not pay for it.
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
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

from edgeagent.errors import DigestMismatchError, FlashError, VerificationError
from edgeagent.flash.pipeline import (
    WORKERS,
    Ordered,
    Poll,
    Pool,
    SpanCheck,
    aligned_buffer,
    is_zero,
    zero_chunk,
)
from edgeagent.flash.plan import (
    CHUNK_BYTES,
    Chunk,
    Group,
    MiB,
    Span,
    WritePlan,
    chunk_spans,
    group_plan,
    progress_line,
    range_spans,
)

log = logging.getLogger(__name__)

FSYNC_EVERY = 64 * 1024 * 1024
DIRECT_ALIGN = 4096
# A group up to this size is read once into memory, hashed, and written from that memory.
HOLD_BYTES = 32 * 1024 * 1024
_GONE = {errno.ENODEV, errno.ENXIO, errno.EIO, errno.ENOSPC, errno.ENOMEDIUM, errno.ESHUTDOWN}

Check = Callable[[int, str], None]


def _no_poll() -> None:
    return None


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
        """Count ``n`` more bytes; print when due (thread-safe: helper threads share it)."""
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
    """Result of `verify_whole`: whole-image length and sha256, and one sha256 per chunk."""

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


def _omits_data(image: str, pos: int, n: int) -> VerificationError:
    return VerificationError(
        f"{image}: the block map omits data between offsets {pos} and {pos + n} "
        "(unmapped bytes must be zero); refusing to flash"
    )


def verify_whole(
    fd: int, plan: WritePlan, image: str, progress: Progress, poll: Poll = _no_poll
) -> VerifiedImage:
    """Hash the whole image and each planned chunk; prove skipped bytes are zero.

    Raises:
        VerificationError: a byte the plan would skip is not zero (the block map omits data).
        FlashError: the image cannot be read.
    """
    whole = hashlib.sha256()
    digests: list[bytes] = [b""] * len(plan.chunks)
    running: dict[int, hashlib._Hash] = {}
    view = memoryview(aligned_buffer())
    zeros = memoryview(zero_chunk())
    progress.start("verify", plan.image_size)
    try:
        segs = _segments(plan, image_extents(fd, plan.image_size))
        for start, end, index, read in segs:
            pos = start
            while pos < end:
                poll()
                n = min(CHUNK_BYTES, end - pos)
                piece = view[:n]
                if read:
                    _pread_exact(fd, piece, pos, image)
                    if index < 0 and not is_zero(piece):
                        raise _omits_data(image, pos, n)
                else:
                    piece = zeros[:n]
                whole.update(piece)
                if index >= 0:
                    chunk_hash = running.setdefault(index, hashlib.sha256())
                    chunk_hash.update(piece)
                    if pos + n == plan.chunks[index].end:
                        digests[index] = running.pop(index).digest()
                pos += n
                progress.advance(n)
    except OSError as exc:
        raise FlashError(f"{image}: cannot read image: {exc.strerror}") from exc
    return VerifiedImage(plan.image_size, whole.hexdigest(), tuple(digests))


def check_gaps(fd: int, plan: WritePlan, image: str, poll: Poll = _no_poll) -> None:
    """Prove that every byte the plan skips is zero (holes are; data in gaps is read).

    Raises:
        VerificationError: a skipped byte is not zero (the block map omits data).
        FlashError: the image cannot be read.
    """
    view = memoryview(aligned_buffer())
    try:
        segs = _segments(plan, image_extents(fd, plan.image_size))
        for start, end, index, read in segs:
            if index >= 0 or not read:
                continue
            for pos in range(start, end, CHUNK_BYTES):
                poll()
                piece = view[: min(CHUNK_BYTES, end - pos)]
                _pread_exact(fd, piece, pos, image)
                if not is_zero(piece):
                    raise _omits_data(image, pos, len(piece))
    except OSError as exc:
        raise FlashError(f"{image}: cannot read image: {exc.strerror}") from exc


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

    def fd_for(self, c: Chunk) -> int:
        return self.fd if _aligned(c) else self.tail_fd()

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


# The flash --------------------------------------------------------------------------------


class _ImageReader:
    """Reads the image for one flash: per-thread scratch buffers, and group checks."""

    def __init__(self, src_fd: int, image: str) -> None:
        self.src_fd = src_fd
        self.image = image
        self._scratch = threading.local()

    def buffer(self) -> memoryview:
        """This thread's own 4 MiB buffer (reused: fresh pages cost a fault each)."""
        view: memoryview | None = getattr(self._scratch, "view", None)
        if view is None:
            view = memoryview(aligned_buffer())
            self._scratch.view = view
        return view

    def read(self, view: memoryview, offset: int) -> None:
        try:
            _pread_exact(self.src_fd, view, offset, self.image)
        except OSError as exc:
            raise FlashError(f"{self.image}: read failed at offset {offset}: {exc}") from exc

    def tampered(self, span: Span) -> Exception:
        what = (
            "do not match the sha256 in the signed block map"
            if span.sha256
            else "must be zero (written, but outside the signed block map's ranges)"
        )
        return DigestMismatchError(
            f"{self.image}: bytes {span.start}-{span.end - 1} {what} (tampered or wrong image)"
        )

    def check_group(
        self, group: Group, buffers: Sequence[mmap.mmap] | None, poll: Poll = _no_poll
    ) -> None:
        """Read a group from the image (into ``buffers`` or a scratch buffer) and check it.

        ``poll`` runs before each chunk and may raise to stop (a long range is many chunks).
        """
        check = SpanCheck(group.spans, self.tampered)
        for k, c in enumerate(group.chunks):
            poll()
            view = memoryview(buffers[k])[: c.length] if buffers else self.buffer()[: c.length]
            self.read(view, c.offset)
            check.feed(c.offset, view)
        check.finish()


class RangeChecks:
    """The groups of a signed block map, read from the image and checked by helper threads.

    Each group is read and checked against its spans. With ``stream``, a group of at most
    ``HOLD_BYTES`` keeps the checked bytes in pool buffers until `take` hands them to the writer
    (a bigger one is re-read by the writer), and at most a pool's worth of checked data waits
    for the writer; without it nothing is kept and the writer re-reads every group.

    It may be started (``with``) before the block map is known to be signed, to overlap the
    hashing with the trust check: nothing is written from it until `flash_blocking` runs, and
    a caller that finds the map unsigned just leaves the context (ADR-0009 §1).
    """

    def __init__(
        self,
        src_fd: int,
        image: str,
        plan: WritePlan,
        ranges: Sequence[tuple[int, int, str]],
        *,
        stream: bool,
    ) -> None:
        self.plan = plan
        self.ranges = list(ranges)
        self.stream = stream
        self.groups = group_plan(plan, range_spans(plan, self.ranges))
        self.reader = _ImageReader(src_fd, image)
        self._hold = HOLD_BYTES // CHUNK_BYTES if stream else 0
        self._runner: Ordered[list[mmap.mmap]] = Ordered(self._job, len(self.groups))
        self._pool = Pool(self._hold * (WORKERS + 1), self._runner.stopping)

    def _job(self, i: int) -> list[mmap.mmap]:
        group = self.groups[i]
        held = len(group.chunks) <= self._hold
        buffers = self._pool.take(i, len(group.chunks) if held else 0)
        self.reader.check_group(group, buffers, self._runner.check_stop)
        return buffers

    def __enter__(self) -> RangeChecks:
        self._runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._runner.__exit__()

    def take(self, i: int, poll: Poll) -> list[mmap.mmap]:
        """Wait until group ``i`` is checked; its buffers ([] when it must be re-read).

        Raises:
            DigestMismatchError: group ``i``, or an earlier one, does not match.
        """
        return self._runner.result(i, poll)

    def give(self, buffers: Sequence[mmap.mmap]) -> None:
        """Return a written group's buffers to the pool."""
        self._pool.give(buffers)


@dataclass(slots=True)
class _Flash:
    """One flash in progress: the inputs, the open target, and what was written so far."""

    reader: _ImageReader
    target_path: str
    plan: WritePlan
    progress: Progress
    poll: Poll
    exclusive: bool
    direct: bool
    target: _Target | None = None
    written: int = 0
    since_sync: int = 0

    def open(self) -> _Target:
        if self.target is None:
            self.target = open_target(
                self.target_path,
                self.plan.image_size,
                exclusive=self.exclusive,
                direct=self.direct,
            )
        return self.target

    def write_chunk(self, c: Chunk, view: memoryview) -> None:
        target = self.open()
        fd = target.fd_for(c)
        done = 0
        try:
            while done < c.length:
                n = os.pwrite(fd, view[done:], c.offset + done)
                if n == 0:
                    raise OSError(errno.ENOSPC, "no space left on target")
                done += n
            if not target.direct:
                self.since_sync += c.length
                if self.since_sync >= FSYNC_EVERY:
                    os.fsync(fd)
                    self.since_sync = 0
        except OSError as exc:
            raise _gone(target.path, c.offset + done, exc, "write") from exc
        self.written += c.length
        self.progress.advance(c.length)

    def write_group(self, group: Group, buffers: Sequence[mmap.mmap] | None) -> None:
        for k, c in enumerate(group.chunks):
            self.poll()
            if buffers:
                view = memoryview(buffers[k])[: c.length]
            else:
                view = self.reader.buffer()[: c.length]
                self.reader.read(view, c.offset)
            self.write_chunk(c, view)

    def stream(self, checks: RangeChecks) -> None:
        """Write every group, each only once `checks` has found it matching."""
        for i, group in enumerate(checks.groups):
            try:
                buffers = checks.take(i, self.poll)
            except VerificationError as exc:
                raise type(exc)(f"{exc}; {self.state()}") from exc
            self.write_group(group, buffers)
            checks.give(buffers)

    def state(self) -> str:
        """What a failure in the middle of writing left on the target."""
        if not self.written:
            return f"nothing was written to {self.target_path}"
        return (
            f"the {self.written / MiB:.1f} MiB of verified data before it were written to "
            f"{self.target_path}: the target is incomplete, do not use it"
        )

    def _fsync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _gone(self.target_path, self.plan.mapped_end, exc, "final fsync") from exc

    def sync_and_read_back(self, groups: Sequence[Group]) -> None:
        """Final fsync, then read every group back.

        Every write has completed (and been flushed) before the first read-back, so a medium
        that wraps addresses beyond its real capacity is caught. Running the flush of an
        O_DIRECT target alongside the read-back was measured: no gain (a loop device, like a
        USB stick's single queue, serves the reads after the flush).
        """
        target = self.open()
        for fd in (target.buffered_fd, target.fd):
            if fd >= 0:
                self._fsync(fd)
        self.read_back(groups)

    def read_back(self, groups: Sequence[Group]) -> None:
        """Read every group back from the target and check it against its spans."""
        target = self.open()
        if any(not _aligned(c) for c in self.plan.chunks):
            target.tail_fd()  # Opened here, not by two helper threads at once.
        if not target.direct or target.buffered_fd >= 0:
            # Best effort: make buffered read-back come from the device, not the page cache.
            for fd in (target.fd, target.buffered_fd):
                if fd >= 0:
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    except OSError as exc:
                        log.debug("%s: fadvise failed: %s", target.path, exc)

        def mismatch(span: Span) -> Exception:
            return FlashError(
                f"{target.path}: read-back mismatch in bytes {span.start}-{span.end - 1}: the "
                "target did not store what was written (failing medium, or the image changed "
                "after verification)"
            )

        def job(i: int) -> bool:
            group = groups[i]
            check = SpanCheck(group.spans, mismatch)
            view = self.reader.buffer()
            for c in group.chunks:
                runner.check_stop()
                piece = view[: c.length]
                try:
                    _pread_exact(target.fd_for(c), piece, c.offset, target.path)
                except OSError as exc:
                    raise _gone(target.path, c.offset, exc, "read-back") from exc
                check.feed(c.offset, piece)
                self.progress.advance(c.length)
            check.finish()
            return True

        runner = Ordered(job, len(groups))
        with runner:
            for i in range(len(groups)):
                runner.result(i, self.poll)

    def close(self) -> None:
        if self.target is not None:
            self.target.close()


def flash_blocking(
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
    stream: bool = False,
    poll: Poll | None = None,
    checks: RangeChecks | None = None,
) -> FlashResult:
    """Verify the image (``check(length, sha256)`` must not raise), write it, read it back.

    Blocking; `flash_image` runs it from trio.

    Args:
        src_fd: the open image (kept open from verification to write).
        image: the image's name, for messages.
        target_path: the block device or file to write.
        plan: the chunks to write (from `edgeagent.flash.plan`).
        check: the trust check; raises `VerificationError` to stop before the target is opened.
        exclusive: open a block device with O_EXCL (False only with ``--force`` on a mounted one).
        progress: where progress lines go (None: nowhere).
        ranges: ``(start, end, sha256hex)`` of a *signed* block map: every range is checked
            against its sha256 before the first write (or, with ``stream``, before its own
            bytes are written), and again on read-back; ``check`` is then called with an
            empty sha256 (only the length is known).
        direct: try O_DIRECT (False: buffered writes with periodic fsync, for tests).
        stream: with ``ranges``, check each range as it is read for writing, and write it from
            the memory that was hashed (the image is read once).
        poll: called between chunks; may raise to stop (trio's ``check_cancelled``).
        checks: the range checks of ``plan`` and ``ranges``, already started by the caller
            (entered, and left by the caller) to overlap them with the trust check; without
            it they start after ``check``.

    Raises:
        ValueError: ``checks`` do not belong to ``plan`` and ``ranges``.
        VerificationError: the image does not match what is trusted (with ``stream``,
            possibly after earlier verified ranges were written: the message says so).
        FlashError: the write or read-back failed, or the target disappeared.
    """
    if checks is not None and (
        ranges is None
        or checks.plan is not plan
        or checks.ranges != list(ranges)
        or checks.stream != stream
    ):
        raise ValueError("checks must come from this plan and ranges, in the same mode")
    progress = progress or Progress(None)
    poll = poll or _no_poll
    times: dict[str, float] = {}
    reader = checks.reader if checks is not None else _ImageReader(src_fd, image)
    job = _Flash(reader, target_path, plan, progress, poll, exclusive, direct)
    t0 = time.monotonic()
    sha256 = ""
    with ExitStack() as cleanup:
        cleanup.callback(job.close)
        if ranges is None:
            verified = verify_whole(src_fd, plan, image, progress, poll)
            check(verified.length, verified.sha256)
            sha256 = verified.sha256
            groups = group_plan(plan, chunk_spans(plan, verified.chunk_digests))
        else:
            check(os.fstat(src_fd).st_size, "")
            check_gaps(src_fd, plan, image, poll)
            if checks is None:
                checks = cleanup.enter_context(
                    RangeChecks(src_fd, image, plan, ranges, stream=stream)
                )
            groups = checks.groups
            if not stream:
                progress.start("verify", plan.mapped_bytes)
                for i, group in enumerate(groups):
                    try:
                        checks.take(i, poll)
                    except VerificationError as exc:
                        raise type(exc)(f"{exc}; {job.state()}") from exc
                    progress.advance(group.length)
        t1 = time.monotonic()
        if ranges is None or not stream:
            times["verify"] = t1 - t0
        progress.start("write", plan.mapped_bytes)
        if checks is not None and stream:
            job.stream(checks)
        else:
            for group in groups:
                job.write_group(group, None)
        t2 = time.monotonic()
        times["write"] = t2 - t1
        progress.start("readback", plan.mapped_bytes)
        job.sync_and_read_back(groups)
        times["readback"] = time.monotonic() - t2
        direct_used = job.open().direct
    return FlashResult(target_path, sha256, plan.mapped_bytes, direct_used, times)


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
    stream: bool = False,
) -> FlashResult:
    """`flash_blocking` in a trio worker thread; cancellation stops it between chunks.

    The thread is never abandoned while it may write (``abandon_on_cancel=False``); it polls
    ``trio.from_thread.check_cancelled`` and unwinds (closing the target) when cancelled.
    """
    import trio  # Only here: the watch mode and tests run the flash under trio.

    run = partial(
        flash_blocking,
        src_fd,
        image,
        target_path,
        plan,
        check,
        exclusive=exclusive,
        progress=progress,
        ranges=ranges,
        direct=direct,
        stream=stream,
        poll=trio.from_thread.check_cancelled,
    )
    return await trio.to_thread.run_sync(run, abandon_on_cancel=False)

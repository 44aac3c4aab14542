"""Host OTA: stream a signed host-slot target into the inactive slot, then read it back.

What it does (the trio shell of the writing steps of ``edgeagent.ota.slots``):

- `write_slot` streams the target from the registry (``Fetcher.fetch_into`` with Range resume)
  straight into the slot partition: a block device, or in tests a plain file or a partition of a
  disk image file at an offset. It hashes while writing and fsyncs every ``checkpoint`` bytes,
  then reports the durable prefix length (the caller persists it). hashlib objects cannot be
  serialized, so a resumed write (after an agent restart or a reboot) re-hashes the persisted
  prefix from the slot itself, as the pull resume does with its partial file. A wrong digest
  or more bytes than signed raise `DigestMismatchError` / `TooLargeError` (never staged).
- `read_back` drops the slot's pages from the page cache and reads the written length back
  from the device, returning its sha256 (verifies what the next boot will actually read).
- `slot_device` finds a slot partition by GPT name (``root-a``/``root-b``) and its size.

What it does not do: decide anything (slots), touch the ESP (bootctl), or run TUF (the caller
passes the target URL and the signed `Candidate` from ``Updater.get_target_info``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeagent.errors import DigestMismatchError, OtaError
from edgeagent.ota import bootctl
from edgeagent.ota.slots import Candidate
from edgeagent.registry.fetch import Fetcher

log = logging.getLogger(__name__)

CHECKPOINT_BYTES = 8 * 1024 * 1024
READ_BYTES = 4 * 1024 * 1024
# One writer thread at a time: the slot is a single device, ordering matters.
_IO_LIMITER = trio.CapacityLimiter(1)

OnProgress = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SlotDevice:
    """Where a slot lives: ``path`` (block device or image file), byte ``offset``, ``size``."""

    path: Path
    size: int
    offset: int = 0


def slot_device(partname: str, sysfs: Path = Path("/sys/class/block")) -> SlotDevice:
    """The partition whose GPT name is ``partname``, with its size from sysfs.

    Raises:
        OtaError: no such partition.
    """
    dev = bootctl.find_partition(partname, sysfs)
    if dev is None:
        raise OtaError(f"no partition named {partname!r} (PARTNAME in {sysfs}/*/uevent)")
    try:
        sectors = int((sysfs / dev.name / "size").read_text())
    except (OSError, ValueError) as exc:
        raise OtaError(f"{sysfs / dev.name / 'size'}: cannot read the partition size") from exc
    return SlotDevice(dev, sectors * 512)


def _hash_range(fd: int, start: int, length: int, hasher: hashlib._Hash) -> None:
    pos = 0
    while pos < length:
        data = os.pread(fd, min(READ_BYTES, length - pos), start + pos)
        if not data:
            raise OtaError(f"slot ended after {pos} of {length} bytes")
        hasher.update(data)
        pos += len(data)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _SlotSink:
    """A `ChunkSink` writing into the slot: hash, pwrite, fsync at checkpoints."""

    def __init__(
        self, fd: int, dev: SlotDevice, start: int, hasher: hashlib._Hash, checkpoint: int
    ) -> None:
        self.fd = fd
        self.dev = dev
        self.hasher = hasher
        self.checkpoint = checkpoint
        self._held = start
        self._synced = start
        self.on_progress: OnProgress | None = None

    @property
    def held(self) -> int:
        return self._held

    async def write(self, chunk: bytes) -> None:
        offset = self.dev.offset + self._held

        def work() -> None:
            self.hasher.update(chunk)
            _pwrite_all(self.fd, chunk, offset)

        await trio.to_thread.run_sync(work, limiter=_IO_LIMITER, abandon_on_cancel=False)
        self._held += len(chunk)
        if self._held - self._synced >= self.checkpoint:
            await self.sync()

    async def sync(self) -> None:
        await trio.to_thread.run_sync(os.fsync, self.fd, limiter=_IO_LIMITER)
        self._synced = self._held
        if self.on_progress is not None:
            await self.on_progress(self._held)


async def write_slot(
    fetcher: Fetcher,
    url: str,
    dev: SlotDevice,
    cand: Candidate,
    *,
    start: int,
    on_progress: OnProgress,
    checkpoint: int = CHECKPOINT_BYTES,
) -> None:
    """Stream ``cand`` from ``url`` into ``dev``, resuming after ``start`` durable bytes.

    ``on_progress(n)`` is awaited after each fsync with the durable length (persist it, then a
    resume may start from it). Returns once all bytes are durable and the hash matched.

    Raises:
        OtaError: the slot is too small or cannot be opened/written.
        DigestMismatchError: the streamed bytes do not hash to the signed sha256.
        TooLargeError: the server sent more than the signed length.
        FetchError: the network failed (the durable prefix is kept for a resume).
    """
    if cand.length > dev.size:
        raise OtaError(f"{dev.path}: slot of {dev.size} bytes is smaller than {cand.length}")
    if not 0 <= start <= cand.length:
        raise RuntimeError(f"resume offset {start} outside 0..{cand.length}")
    try:
        fd = os.open(dev.path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise OtaError(f"{dev.path}: cannot open the slot for writing: {exc}") from exc
    try:
        hasher = hashlib.sha256()
        if start:
            log.info("host-ota: re-hashing %d written bytes of %s to resume", start, dev.path)
            await trio.to_thread.run_sync(
                _hash_range, fd, dev.offset, start, hasher, limiter=_IO_LIMITER
            )
        sink = _SlotSink(fd, dev, start, hasher, checkpoint)
        sink.on_progress = on_progress
        try:
            await fetcher.fetch_into(url, sink, cand.length)
        except OSError as exc:
            raise OtaError(f"{dev.path}: write failed: {exc}") from exc
        await sink.sync()
        digest = hasher.hexdigest()
        if digest != cand.sha256:
            raise DigestMismatchError(
                f"host-slot {cand.version}: {url} streamed sha256:{digest}, signed {cand.sha256}"
            )
    finally:
        os.close(fd)


def _read_back(dev: SlotDevice, length: int) -> str:
    fd = os.open(dev.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Read what the disk holds, not what the page cache remembers we wrote.
        os.posix_fadvise(fd, dev.offset, length, os.POSIX_FADV_DONTNEED)
        hasher = hashlib.sha256()
        _hash_range(fd, dev.offset, length, hasher)
        return hasher.hexdigest()
    finally:
        os.close(fd)


async def read_back(dev: SlotDevice, length: int) -> str:
    """The sha256 of the slot's first ``length`` bytes, read from the device.

    Raises:
        OtaError: the slot cannot be read.
    """
    try:
        return await trio.to_thread.run_sync(_read_back, dev, length, limiter=_IO_LIMITER)
    except OSError as exc:
        raise OtaError(f"{dev.path}: read-back failed: {exc}") from exc

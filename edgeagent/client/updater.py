"""The device's TUF client: the one implementation of the client workflow (spec section 5).

What it does: joins the pure trusted set (`edgeagent.verify.trust`), the network
(`edgeagent.registry.fetch`), the content-addressed store (`edgeagent.store.cas`) and the trusted
clock (`edgeagent.verify.clock`):

- `Updater.refresh`: root chain (``N+1.root.json`` until 404), ``timestamp.json``, the versioned
  snapshot and top-level targets, each verified before it is persisted (exact server bytes, under
  non-versioned names, in the metadata folder); locally stored metadata is loaded first so that
  rollback is caught across restarts, and metadata that no longer verifies after a key rotation is
  simply not loaded (fast-forward recovery). The clock floor is raised after a full success.
- `Updater.get_target_info`: finds a target path, searching delegations depth-first (pre-order),
  honouring path patterns, terminating delegations and a bound on visited roles.
- `Updater.download_target`: streams the target into the store, hashing while downloading (two
  worker threads hash and write each batch at once), resuming a kept partial with Range; returns
  the blob's path only when length and SHA-256 match the signed values.

Used by ``edgeagent pull`` (registry URL layout, trusted clock) and ``edgeagent tuf-client``
(explicit URLs, system clock). What it does not do: no argument parsing, no output, no policy about
which target to run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import TargetFile, Targets  # type: ignore[attr-defined]

from edgeagent.errors import (
    EdgeAgentError,
    FetchError,
    StoreError,
    TooLargeError,
    VerificationError,
)
from edgeagent.registry import protocol
from edgeagent.registry.fetch import Fetcher
from edgeagent.registry.protocol import RegistryLayout
from edgeagent.store.cas import Partial, Store
from edgeagent.store.layout import BlobRef
from edgeagent.verify import trust
from edgeagent.verify.clock import Clock, write_atomic
from edgeagent.verify.trust import TrustedSet

log = logging.getLogger(__name__)

# Bytes handed to the hashing/writing threads at once, and batches queued between the network
# task and them: few thread hops, bounded memory (ADR-0006: 4 MiB batches were ~40% faster than
# 2 MiB; a queue of 2 keeps a 1 GiB pull near 67 MiB peak RSS, a queue of 4 went past 80 MiB).
WRITE_BATCH_BYTES = 4 * 1024 * 1024
WRITE_QUEUE_DEPTH = 2

Progress = Callable[[int, int], None]


class MetadataDir:
    """Trusted metadata on disk: ``ROLE.json`` (non-versioned), exactly the bytes the server sent.

    Only metadata that passed verification is written here (verify, then persist).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, role: str) -> Path:
        return self.path / f"{protocol.local_file_name(role)}.json"

    def load(self, role: str) -> bytes | None:
        """Return the stored bytes of ``role``, or None."""
        try:
            return self._file(role).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self._file(role)}: cannot read trusted metadata: {exc}") from exc

    def save(self, role: str, data: bytes) -> None:
        """Persist verified bytes of ``role`` atomically."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(self._file(role), data)
        except OSError as exc:
            raise StoreError(f"{self._file(role)}: cannot write trusted metadata: {exc}") from exc


@dataclass(frozen=True, slots=True)
class UpdaterConfig:
    """Bounds of the workflow (spec 5.3.3 and 5.6.7)."""

    max_root_rotations: int = protocol.MAX_ROOT_ROTATIONS
    max_delegations: int = protocol.MAX_DELEGATIONS


class _BatchSink:
    """`ChunkSink` that batches chunks for the writer task (one thread hop per batch)."""

    def __init__(
        self, send: trio.MemorySendChannel[list[bytes]], held: int, length: int, progress: Progress
    ) -> None:
        self._send = send
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._held = held
        self._length = length
        self._progress = progress

    @property
    def held(self) -> int:
        return self._held

    async def write(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        self._held += len(chunk)
        if self._batch_bytes >= WRITE_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            await self._send.send(batch)
            self._progress(self._held, self._length)


class _Pipeline:
    """Network task -> bounded channel -> hashing/writing task; first expected error wins."""

    def __init__(self, partial: Partial) -> None:
        self.partial = partial
        self.error: EdgeAgentError | None = None

    def fail(self, exc: EdgeAgentError, scope: trio.CancelScope) -> None:
        if self.error is None:
            self.error = exc
        scope.cancel(reason=f"download of {self.partial.label} failed")

    async def write_batches(
        self, recv: trio.MemoryReceiveChannel[list[bytes]], scope: trio.CancelScope
    ) -> None:
        async with recv:
            try:
                async for batch in recv:
                    await self._append(batch)
            except EdgeAgentError as exc:
                self.fail(exc, scope)
            except OSError as exc:
                self.fail(StoreError(f"{self.partial.path}: write failed: {exc}"), scope)

    async def _append(self, batch: list[bytes]) -> None:
        # Hash and write the same batch in two worker threads at once: both release the GIL,
        # so on a multi-core device hashing overlaps the disk writes (ADR-0006 §1).
        part = self.partial
        part.check_room(batch)
        errors: list[EdgeAgentError] = []

        def write() -> None:
            try:
                part.write_chunks(batch)
            except EdgeAgentError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, write)
            await trio.to_thread.run_sync(part.hash_chunks, batch)
        if errors:
            raise errors[0]
        part.commit_chunks(batch)


def _no_progress(_held: int, _length: int) -> None:
    return None


class Updater:
    """A TUF client session over one metadata folder, one registry and one store.

    Args:
        metadata: the trusted metadata folder (must hold ``root.json``, see `bootstrap`).
        layout: where the registry's metadata and targets are.
        fetcher: the network.
        store: where target blobs go.
        clock: trusted time for expiry checks.
        config: workflow bounds.
    """

    def __init__(
        self,
        metadata: MetadataDir,
        layout: RegistryLayout,
        fetcher: Fetcher,
        store: Store,
        clock: Clock,
        config: UpdaterConfig | None = None,
    ) -> None:
        self.metadata = metadata
        self.layout = layout
        self.fetcher = fetcher
        self.store = store
        self.clock = clock
        self.config = config or UpdaterConfig()
        root = metadata.load(trust.ROOT)
        if root is None:
            raise StoreError(f"{metadata.path}: no trusted root.json; initialise with a root first")
        self._trusted = TrustedSet(root)
        self._refreshed = False

    @staticmethod
    def bootstrap(metadata: MetadataDir, root_data: bytes) -> None:
        """Store an initial trusted root if the folder has none (checked: self-signed)."""
        if metadata.load(trust.ROOT) is None:
            TrustedSet(root_data)
            metadata.save(trust.ROOT, root_data)

    @property
    def trusted(self) -> TrustedSet:
        """The trusted set (read-only use)."""
        return self._trusted

    # Refresh ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Run the top-level part of the client workflow (5.3 - 5.6).

        Raises:
            VerificationError (and subclasses), FetchError, StoreError.
        """
        self._trusted = TrustedSet(self._load_root())
        await self._update_root()
        await self._update_timestamp()
        await self._update_snapshot()
        await self._load_targets(trust.TARGETS, trust.ROOT)
        self._refreshed = True
        self.clock.commit()

    def _load_root(self) -> bytes:
        data = self.metadata.load(trust.ROOT)
        if data is None:
            raise StoreError(f"{self.metadata.path}: no trusted root.json")
        return data

    async def _fetch_metadata(self, role: str, version: int | None) -> bytes:
        url = self.layout.metadata(role, version)
        return await self.fetcher.fetch_bytes(url, protocol.max_metadata_bytes(role))

    async def _update_root(self) -> None:
        # 5.3.3 - 5.3.9: walk N+1.root.json until the server has none.
        start = self._trusted.root.version
        for version in range(start + 1, start + 1 + self.config.max_root_rotations):
            try:
                data = await self._fetch_metadata(trust.ROOT, version)
            except FetchError as exc:
                if exc.status in (403, 404):
                    break
                raise
            self._trusted.update_root(data)
            self.metadata.save(trust.ROOT, data)
            log.info("trusted root is now v%d", version)

    async def _update_timestamp(self) -> None:
        now = self.clock.now()
        local = self.metadata.load(trust.TIMESTAMP)
        if local is not None:
            try:
                self._trusted.update_timestamp(local, now)
            except VerificationError as exc:
                log.info("local timestamp not used: %s", exc)
        data = await self._fetch_metadata(trust.TIMESTAMP, None)
        self._trusted.update_timestamp(data, now)
        if data != local:  # Nothing new: skip the fsyncs (the common case on a timer).
            self.metadata.save(trust.TIMESTAMP, data)

    async def _update_snapshot(self) -> None:
        now = self.clock.now()
        local = self.metadata.load(trust.SNAPSHOT)
        if local is not None:
            try:
                self._trusted.update_snapshot(local, now, local=True)
            except VerificationError as exc:
                log.info("local snapshot not used: %s", exc)
            else:
                return
        ts = self._trusted.timestamp
        assert ts is not None
        version = ts.snapshot_meta.version if self._trusted.root.consistent_snapshot else None
        data = await self._fetch_metadata(trust.SNAPSHOT, version)
        self._trusted.update_snapshot(data, now)
        self.metadata.save(trust.SNAPSHOT, data)

    async def _load_targets(self, role: str, delegator: str) -> Targets:
        loaded = self._trusted.get_targets_role(role)
        if loaded is not None:
            return loaded
        now = self.clock.now()
        local = self.metadata.load(role)
        if local is not None:
            try:
                return self._trusted.update_delegated_targets(local, role, delegator, now)
            except VerificationError as exc:
                log.info("local %s not used: %s", role, exc)
        snap = self._trusted.snapshot
        assert snap is not None
        meta = snap.meta.get(f"{role}.json")
        if meta is None:
            raise VerificationError(f"{role}: not listed in snapshot v{snap.version}")
        version = meta.version if self._trusted.root.consistent_snapshot else None
        data = await self._fetch_metadata(role, version)
        targets = self._trusted.update_delegated_targets(data, role, delegator, now)
        self.metadata.save(role, data)
        return targets

    # Targets ----------------------------------------------------------------------------

    async def get_target_info(self, path: str) -> TargetFile | None:
        """Find the signed description of target ``path`` (refreshing first if needed).

        Delegations are searched depth-first in listed order (5.6.7); a terminating delegation
        that matches ends the search of its siblings; at most ``max_delegations`` roles visited.

        Returns:
            The target, or None when no trusted role lists it.
        """
        if not self._refreshed:
            await self.refresh()
        to_visit: list[tuple[str, str]] = [(trust.TARGETS, trust.ROOT)]
        visited: set[str] = set()
        while to_visit and len(visited) <= self.config.max_delegations:
            role, delegator = to_visit.pop()
            if role in visited:
                continue
            targets = await self._load_targets(role, delegator)
            found = targets.targets.get(path)
            if found is not None:
                return found
            visited.add(role)
            if targets.delegations is None:
                continue
            children: list[tuple[str, str]] = []
            for child, terminating in targets.delegations.get_roles_for_target(path):
                children.append((child, role))
                if terminating:
                    to_visit.clear()
                    break
            to_visit.extend(reversed(children))
        if to_visit:
            log.warning("target %s: stopped after %d delegated roles", path, len(visited))
        return None

    def blob_ref(self, info: TargetFile) -> BlobRef:
        """The store reference of a signed target (its sha256 and length).

        Raises:
            VerificationError: the signed target has no usable sha256.
        """
        sha = info.hashes.get("sha256")
        try:
            return BlobRef(sha or "", info.length)
        except ValueError as exc:
            raise VerificationError(
                f"target {info.path}: signed metadata has no usable sha256 hash: {exc}"
            ) from exc

    async def cached_target(self, info: TargetFile) -> Path | None:
        """Return the verified blob for ``info`` if the store has it (re-hashed now)."""
        return await trio.to_thread.run_sync(self.store.verified_blob, self.blob_ref(info))

    async def download_target(self, info: TargetFile, progress: Progress | None = None) -> Path:
        """Fetch target ``info`` into the store and return the verified blob's path.

        A blob already in the store is re-hashed and reused. A partial download is resumed with
        Range after re-hashing its kept prefix. On a trust failure (digest, endless data) the
        partial is deleted; on a network failure it is kept for the next attempt.

        Raises:
            DigestMismatchError, TooLargeError, SlowRetrievalError, FetchError, StoreError.
        """
        ref = self.blob_ref(info)
        cached = await self.cached_target(info)
        if cached is not None:
            return cached
        label = info.path
        partial = await trio.to_thread.run_sync(self.store.open_partial, ref, label)
        if partial.kept:
            log.info("target %s: resuming after %d of %d bytes", label, partial.kept, ref.length)
        consistent = bool(self._trusted.root.consistent_snapshot)
        url = self.layout.target(info.path, ref.sha256, consistent=consistent)
        pipe = _Pipeline(partial)
        try:
            send, recv = trio.open_memory_channel[list[bytes]](WRITE_QUEUE_DEPTH)
            sink = _BatchSink(send, partial.held, ref.length, progress or _no_progress)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe.write_batches, recv, nursery.cancel_scope)
                async with send:
                    try:
                        await self.fetcher.fetch_into(url, sink, ref.length)
                        await sink.flush()
                    except FetchError as exc:
                        named = type(exc)(f"target {label}: {exc}", url=exc.url, status=exc.status)
                        named.__cause__ = exc
                        pipe.fail(named, nursery.cancel_scope)
                    except EdgeAgentError as exc:
                        pipe.fail(exc, nursery.cancel_scope)
            if pipe.error is not None:
                raise pipe.error
        except (TooLargeError, VerificationError):
            partial.discard()
            raise
        except BaseException:
            partial.close()
            raise
        return await trio.to_thread.run_sync(partial.finish)

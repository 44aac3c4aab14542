"""The content-addressed store on disk (layout in `edgeagent.store.layout`, ADR-0006).

What it does: opens the store (creating folders, taking an exclusive ``flock`` so that two pulls
never write the same store at once, and scanning away garbage: misnamed blobs, blobs whose size
differs from the index, stray files in ``tmp/``), keeps partial downloads under
``tmp/<sha256>.partial`` so they can resume (re-hashing the kept prefix), and publishes a blob
only after its length and SHA-256 match what the signed metadata says: fsync, rename into
``blobs/sha256/``, fsync the folder. A published blob is never rewritten. The index of which
target names point at which blobs is written atomically, and GC deletes blobs no name points at.

What it does not do: no network and no trust decisions beyond "these bytes have this digest";
which digest is right comes from `edgeagent.verify.trust` via the updater. The blocking methods
(hashing, writing) are meant to run in a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from edgeagent.errors import DigestMismatchError, StoreError
from edgeagent.store import layout
from edgeagent.store.layout import BlobRef, Entry
from edgeagent.verify.clock import write_atomic

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
SYNC_EVERY = 64 * 1024 * 1024
_IOV_MAX = 512


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: Path, limit: int | None = None) -> tuple[hashlib._Hash, int]:
    """SHA-256 of a file's first ``limit`` bytes (all by default), read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as f:
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        while limit is None or size < limit:
            want = READ_CHUNK if limit is None else min(READ_CHUNK, limit - size)
            n = f.readinto(view[:want])
            if not n:
                break
            h.update(view[:n])
            size += n
    return h, size


class Partial:
    """A download in progress: ``tmp/<sha256>.partial``, hashed as it grows.

    Created by `Store.open_partial`; blocking methods, one writer at a time.
    """

    def __init__(self, store: Store, ref: BlobRef, label: str) -> None:
        self.store = store
        self.ref = ref
        self.label = label
        self.path = store.root / layout.partial_relpath(ref.sha256)
        self._hash, kept = (hashlib.sha256(), 0)
        if self.path.exists():
            size = self.path.stat().st_size
            if size > ref.length:
                log.warning("%s: partial is longer than the signed length; restarting", self.path)
                self.path.unlink()
            else:
                # Resume: re-hash the kept prefix so the final digest covers every byte.
                self._hash, kept = hash_file(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.held = kept
        self.kept = kept
        self._unsynced = 0

    def append(self, chunks: Sequence[bytes]) -> None:
        """Hash and write ``chunks`` (in order) at the end of the partial file."""
        self.check_room(chunks)
        self.hash_chunks(chunks)
        self.write_chunks(chunks)
        self.commit_chunks(chunks)

    # The three steps of `append`, for callers that hash and write the same batch in two
    # threads at once (hashlib and os.writev both release the GIL): check_room first, then
    # hash_chunks and write_chunks concurrently, then commit_chunks.

    def check_room(self, chunks: Sequence[bytes]) -> None:
        """Refuse a batch that would go past the signed length."""
        total = sum(len(c) for c in chunks)
        if self.held + total > self.ref.length:
            raise StoreError(f"{self.label}: write past the signed length of {self.ref.length}")

    def hash_chunks(self, chunks: Sequence[bytes]) -> None:
        """Feed ``chunks`` to the running SHA-256."""
        for c in chunks:
            self._hash.update(c)

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks`` to the file; every ``SYNC_EVERY`` bytes, start write-back early.

        Raises:
            StoreError: the write failed (disk full, I/O error).
        """
        views = [memoryview(c) for c in chunks]
        while views:
            try:
                n = os.writev(self._fd, views[:_IOV_MAX])
            except OSError as exc:
                raise StoreError(f"{self.path}: write failed: {exc}") from exc
            self._unsynced += n
            while n:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0
            while views and not len(views[0]):
                views.pop(0)
        if self._unsynced >= SYNC_EVERY:
            # Flushing as we go keeps the final fsync short and dirty memory bounded.
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise StoreError(f"{self.path}: fdatasync failed: {exc}") from exc
            self._unsynced = 0

    def commit_chunks(self, chunks: Sequence[bytes]) -> None:
        """Count a hashed and written batch as held."""
        self.held += sum(len(c) for c in chunks)

    def finish(self) -> Path:
        """Verify length and SHA-256, then publish the blob (fsync, rename, fsync dir).

        Raises:
            DigestMismatchError: the bytes do not match; the partial is deleted.
        """
        try:
            if self.held != self.ref.length:
                raise DigestMismatchError(
                    f"target {self.label}: length check failed: got {self.held} bytes, "
                    f"signed length is {self.ref.length}"
                )
            digest = self._hash.hexdigest()
            if digest != self.ref.sha256:
                raise DigestMismatchError(
                    f"target {self.label}: sha256 check failed: got {digest}, signed "
                    f"{self.ref.sha256} (tampered target?)"
                )
            os.fsync(self._fd)
        except BaseException:
            self.discard()
            raise
        self.close()
        dest = self.store.blob_path(self.ref.sha256)
        os.replace(self.path, dest)
        _fsync_dir(dest.parent)
        return dest

    def close(self) -> None:
        """Close the file, keeping it for a later resume."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close and delete the partial file."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Store:
    """A content-addressed store folder. Use `Store.open`; then `close` (or ``with``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_fd = -1

    @classmethod
    def open(cls, root: Path, *, scan: bool = True) -> Store:
        """Create the folders if needed, lock the store, and scan away garbage.

        Raises:
            StoreError: the folder cannot be created, or another process holds the lock.
        """
        store = cls(root)
        try:
            for sub in (layout.BLOBS_DIR, layout.TMP_DIR, layout.METADATA_DIR, layout.STATE_DIR):
                (root / sub).mkdir(parents=True, exist_ok=True)
            store._lock_fd = os.open(
                root / layout.STATE_DIR / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise StoreError(f"{root}: cannot open store: {exc}") from exc
        try:
            fcntl.flock(store._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            store.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"{root}: store is in use by another edgeagent process") from exc
            raise StoreError(f"{root}: cannot lock store: {exc}") from exc
        if scan:
            store.scan(gc=False)
        return store

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Paths ------------------------------------------------------------------------------

    @property
    def metadata_dir(self) -> Path:
        """Where the updater keeps trusted metadata."""
        return self.root / layout.METADATA_DIR

    @property
    def state_dir(self) -> Path:
        """Where the clock floor and the lock live."""
        return self.root / layout.STATE_DIR

    def blob_path(self, sha256: str) -> Path:
        """Path of the blob with this digest (it may not exist)."""
        return self.root / layout.blob_relpath(sha256)

    # Index ------------------------------------------------------------------------------

    def index(self) -> dict[str, tuple[Entry, ...]]:
        """Read the index (empty when missing)."""
        path = self.root / layout.INDEX_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc}") from exc
        return layout.parse_index(data, str(path))

    def record(self, name: str, entry: Entry) -> None:
        """Make ``entry`` the current version of ``name`` (atomic index write)."""
        new = layout.record_pull(self.index(), name, entry)
        write_atomic(self.root / layout.INDEX_FILE, layout.render_index(new))

    # Blobs ------------------------------------------------------------------------------

    def verified_blob(self, ref: BlobRef) -> Path | None:
        """Return the blob's path if present and its bytes match ``ref`` (re-hashed now).

        A blob with the right name but wrong bytes (corrupted on disk) is deleted.
        """
        path = self.blob_path(ref.sha256)
        if not path.exists():
            return None
        h, size = hash_file(path)
        if size == ref.length and h.hexdigest() == ref.sha256:
            return path
        log.warning("%s: stored blob does not match its name; deleting it", path)
        path.unlink()
        return None

    def open_partial(self, ref: BlobRef, label: str) -> Partial:
        """Open (or resume) the partial download of ``ref``; re-hashes any kept prefix."""
        try:
            return Partial(self, ref, label)
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot open partial download: {exc}") from exc

    # Housekeeping -----------------------------------------------------------------------

    def scan(self, *, gc: bool) -> list[str]:
        """Delete garbage (and, with ``gc``, unreferenced blobs); return what was deleted."""
        blobs_dir = self.root / layout.BLOBS_DIR
        tmp_dir = self.root / layout.TMP_DIR
        try:
            blobs = [(p.name, _size(p)) for p in blobs_dir.iterdir()]
            tmps = [p.name for p in tmp_dir.iterdir()]
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot scan store: {exc}") from exc
        plan = layout.plan_scan(blobs, tmps, self.index(), gc=gc)
        deleted = []
        for rel, reason in plan.delete:
            path = self.root / rel
            log.info("store: deleting %s: %s", path, reason)
            _remove(path)
            deleted.append(rel)
        return deleted


def _size(path: Path) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return -1
    return st.st_size if path.is_file() and not path.is_symlink() else -1


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

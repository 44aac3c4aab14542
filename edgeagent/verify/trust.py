"""The trusted metadata set: TUF 1.0 client workflow rules (spec section 5), as a pure core.

What it does: holds the metadata the device currently trusts (root, timestamp, snapshot, targets
and delegated targets roles) and decides whether new metadata bytes may replace or extend it:
signature thresholds from the delegating role, root chain links verified by the old AND the new
root, version rollback, expiry against a `now` passed in by the caller, and the length/hash/version
links timestamp -> snapshot -> targets (mix-and-match). Every ``update_*`` method either returns the
verified object or raises `VerificationError` (or a subclass) naming the role and the check.

What it does not do: no network, no files, no clock (``now`` is an argument) and no search for a
target through delegations (the updater walks the delegation tree and feeds roles in here).

Rules / theory of operation (spec 5.3 - 5.6):

- The set starts from a trusted root (``TrustedSet(root_bytes)``). That root must be signed by a
  threshold of its own root keys; it is trusted by the caller, so it is not checked for expiry yet.
- ``update_root`` accepts version N+1 only, signed by a threshold of the keys of root N and of root
  N+1 itself (5.3.4, 5.3.5). It may only be called before the first timestamp is loaded.
- ``update_timestamp`` first checks that the final root has not expired (5.3.10), then the
  timestamp signatures (root's timestamp role), then rollback of the timestamp version and of the
  snapshot version it lists (5.4.3), then expiry (5.4.4). An expired timestamp is still kept as
  trusted (for rollback protection) but the call raises and the caller stops.
- ``update_snapshot`` checks length/hashes against the timestamp (unless loaded from local
  storage), signatures, that no role listed in the previously trusted snapshot disappears or rolls
  back (5.5.5), then expiry and that the version equals the timestamp's (5.5.6 / mix-and-match).
- ``update_targets``/``update_delegated_targets`` check length/hashes/version against the snapshot
  (5.6.2, 5.6.4), signatures from the delegator (root for ``targets``) and expiry (5.6.5).
- Calling an update out of order (snapshot before timestamp, root after timestamp, ...) is a
  programming error: ``RuntimeError``.
- Fast-forward recovery (5.3.11) falls out of the caller's use: after a root rotation, locally
  stored timestamp/snapshot signed by rotated-out keys no longer verify, so they are not loaded
  and cannot block the newer (lower-numbered) metadata of the rotated role.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from tuf.api import exceptions as tuf_exceptions

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from edgeagent.errors import (
    DigestMismatchError,
    ExpiredError,
    RollbackError,
    SignatureError,
    VerificationError,
)

ROOT = Root.type
TIMESTAMP = Timestamp.type
SNAPSHOT = Snapshot.type
TARGETS = Targets.type
TOP_LEVEL_ROLES = (ROOT, TIMESTAMP, SNAPSHOT, TARGETS)


def parse_metadata(role: str, data: bytes, expected: type[Signed]) -> Metadata[Any]:
    """Parse unverified metadata bytes and check the ``_type`` field.

    Args:
        role: the role name the bytes claim to be, for error messages.
        data: the exact bytes received.
        expected: the Signed subclass the role must have.

    Returns:
        The parsed (still unverified) metadata.

    Raises:
        VerificationError: malformed or truncated JSON, a bad field, or the wrong ``_type``.
    """
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise VerificationError(
            f"{role}: malformed metadata ({len(data)} bytes): not valid TUF JSON: {cause}"
        ) from exc
    if not isinstance(md.signed, expected):
        raise VerificationError(
            f"{role}: wrong metadata type: expected _type {expected.type!r}, got {md.signed.type!r}"
        )
    return md


def _check_threshold(
    delegator: Root | Targets, delegator_name: str, role: str, md: Metadata[Any]
) -> None:
    try:
        result = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
    except ValueError as exc:
        raise SignatureError(f"{role}: {delegator_name} does not delegate to this role") from exc
    if not result:
        raise SignatureError(
            f"{role}: signature threshold not met: {len(result.signed)} of {result.threshold} "
            f"required valid signatures from keys trusted by {delegator_name}"
        )


def _check_expiry(role: str, signed: Signed, now: datetime) -> None:
    if signed.is_expired(now):
        raise ExpiredError(
            f"{role}: expired: version {signed.version} expired at "
            f"{signed.expires.isoformat()}, trusted time is {now.isoformat()} (freeze attack?)"
        )


def _check_meta(role: str, meta: MetaFile, data: bytes, listed_by: str) -> None:
    try:
        meta.verify_length_and_hashes(data)
    except tuf_exceptions.LengthOrHashMismatchError as exc:
        raise DigestMismatchError(
            f"{role}: length or hash does not match what {listed_by} lists: {exc}"
        ) from exc


class TrustedSet:
    """The metadata the client trusts right now, updated only through the TUF rules.

    Args:
        root_data: bytes of a root the caller already trusts (initial or stored).

    Raises:
        VerificationError: the root is malformed or not signed by a threshold of its own keys.
    """

    def __init__(self, root_data: bytes) -> None:
        md = parse_metadata(ROOT, root_data, Root)
        _check_threshold(md.signed, f"root v{md.signed.version}", ROOT, md)
        self._root: Metadata[Root] = md
        self._timestamp: Metadata[Timestamp] | None = None
        self._snapshot: Metadata[Snapshot] | None = None
        self._snapshot_final = False
        self._targets: dict[str, Metadata[Targets]] = {}

    # Read access -------------------------------------------------------------------------

    @property
    def root(self) -> Root:
        """The trusted root."""
        return self._root.signed

    @property
    def timestamp(self) -> Timestamp | None:
        """The trusted timestamp, if loaded."""
        return self._timestamp.signed if self._timestamp else None

    @property
    def snapshot(self) -> Snapshot | None:
        """The trusted snapshot, if loaded."""
        return self._snapshot.signed if self._snapshot else None

    @property
    def targets(self) -> Targets | None:
        """The trusted top-level targets, if loaded."""
        md = self._targets.get(TARGETS)
        return md.signed if md else None

    def get_targets_role(self, role: str) -> Targets | None:
        """Return the trusted (delegated or top-level) targets role ``role``, if loaded."""
        md = self._targets.get(role)
        return md.signed if md else None

    def __iter__(self) -> Iterator[str]:
        yield ROOT
        if self._timestamp:
            yield TIMESTAMP
        if self._snapshot:
            yield SNAPSHOT
        yield from self._targets

    # Root (5.3) --------------------------------------------------------------------------

    def update_root(self, data: bytes) -> Root:
        """Verify root version N+1 against trusted root N and make it the trusted root.

        Root expiry is not checked here: intermediate roots in a chain may be expired
        (5.3.10 checks only the final root, in `update_timestamp`).

        Raises:
            RuntimeError: a timestamp is already loaded.
            SignatureError: not signed by a threshold of old or of new root keys.
            RollbackError: the version is not greater than the trusted root's.
            VerificationError: malformed, or the version skips (not N+1).
        """
        if self._timestamp is not None:
            raise RuntimeError("update_root after update_timestamp: root chain must come first")
        old = self._root.signed
        new: Metadata[Root] = parse_metadata(ROOT, data, Root)
        # 5.3.4: signed by a threshold of the keys of the trusted root...
        _check_threshold(old, f"trusted root v{old.version}", ROOT, new)
        # 5.3.5: ...and by a threshold of the new root's own keys.
        _check_threshold(new.signed, f"new root v{new.signed.version}", ROOT, new)
        # 5.3.5: version is exactly N+1.
        if new.signed.version <= old.version:
            raise RollbackError(
                f"root: version rollback: got v{new.signed.version}, trusted root is v{old.version}"
            )
        if new.signed.version != old.version + 1:
            raise VerificationError(
                f"root: bad root chain link: expected v{old.version + 1}, got v{new.signed.version}"
            )
        self._root = new
        return new.signed

    # Timestamp (5.4) ---------------------------------------------------------------------

    def update_timestamp(self, data: bytes, now: datetime) -> Timestamp:
        """Verify a timestamp against the trusted root and make it the trusted timestamp.

        Raises:
            RuntimeError: a snapshot is already loaded.
            ExpiredError: the final root, or the new timestamp, has expired at ``now``. An expired
                timestamp that passed every other check is kept (for rollback protection).
            SignatureError, RollbackError, VerificationError: see the module rules.
        """
        if self._snapshot is not None:
            raise RuntimeError("update_timestamp after update_snapshot")
        # 5.3.10: the final root must not be expired.
        _check_expiry(f"root (v{self.root.version})", self.root, now)
        new: Metadata[Timestamp] = parse_metadata(TIMESTAMP, data, Timestamp)
        _check_threshold(self.root, "root", TIMESTAMP, new)
        if self._timestamp is not None:
            old = self._timestamp.signed
            if new.signed.version < old.version:
                raise RollbackError(
                    f"timestamp: version rollback: got v{new.signed.version}, "
                    f"trusted is v{old.version}"
                )
            new_snap = new.signed.snapshot_meta.version
            if new_snap < old.snapshot_meta.version:
                raise RollbackError(
                    f"timestamp: snapshot version rollback: timestamp lists snapshot v{new_snap}, "
                    f"trusted timestamp listed v{old.snapshot_meta.version}"
                )
        self._timestamp = new
        _check_expiry(TIMESTAMP, new.signed, now)
        return new.signed

    # Snapshot (5.5) ----------------------------------------------------------------------

    def update_snapshot(self, data: bytes, now: datetime, *, local: bool = False) -> Snapshot:
        """Verify a snapshot and make it the trusted snapshot.

        Args:
            data: the snapshot bytes.
            now: trusted time.
            local: the bytes come from local trusted storage, not the network: skip the
                length/hash check against the timestamp (a newer timestamp may list a newer
                snapshot). The final checks (expiry, version equals the timestamp's) still run and
                raise, but a local snapshot that fails only those is kept for rollback checks.

        Raises:
            RuntimeError: no timestamp loaded, or targets already loaded.
            ExpiredError, DigestMismatchError, SignatureError, RollbackError, VerificationError.
        """
        if self._timestamp is None:
            raise RuntimeError("update_snapshot before update_timestamp")
        if self._targets:
            raise RuntimeError("update_snapshot after update_targets")
        ts = self._timestamp.signed
        # A remote snapshot is only fetched with a valid (unexpired) timestamp.
        _check_expiry(TIMESTAMP, ts, now)
        if not local:
            _check_meta(SNAPSHOT, ts.snapshot_meta, data, f"timestamp v{ts.version}")
        new: Metadata[Snapshot] = parse_metadata(SNAPSHOT, data, Snapshot)
        _check_threshold(self.root, "root", SNAPSHOT, new)
        if self._snapshot is not None:
            # 5.5.5: no role listed before may disappear or roll back.
            for name, old_meta in self._snapshot.signed.meta.items():
                new_meta = new.signed.meta.get(name)
                if new_meta is None:
                    raise RollbackError(f"snapshot: {name} is missing from new snapshot")
                if new_meta.version < old_meta.version:
                    raise RollbackError(
                        f"snapshot: {name} version rollback: v{new_meta.version} < "
                        f"trusted v{old_meta.version}"
                    )
        self._snapshot = new
        self._snapshot_final = False
        self._check_final_snapshot(now)
        self._snapshot_final = True
        return new.signed

    def _check_final_snapshot(self, now: datetime) -> None:
        assert self._snapshot is not None
        assert self._timestamp is not None
        snap = self._snapshot.signed
        _check_expiry(SNAPSHOT, snap, now)
        want = self._timestamp.signed.snapshot_meta.version
        if snap.version != want:
            raise VerificationError(
                f"snapshot: version mismatch (mix-and-match?): got v{snap.version}, "
                f"timestamp lists v{want}"
            )

    # Targets (5.6) -----------------------------------------------------------------------

    def update_targets(self, data: bytes, now: datetime) -> Targets:
        """Verify top-level targets (signed by root's targets keys) and trust it."""
        return self.update_delegated_targets(data, TARGETS, ROOT, now)

    def update_delegated_targets(
        self, data: bytes, role: str, delegator: str, now: datetime
    ) -> Targets:
        """Verify targets role ``role`` delegated by ``delegator`` and trust it.

        Args:
            data: the metadata bytes.
            role: the role name (``targets`` or a delegated role).
            delegator: ``root`` for ``targets``, else the name of a trusted targets role.
            now: trusted time.

        Raises:
            RuntimeError: no final snapshot, or the delegator is not loaded yet.
            ExpiredError, DigestMismatchError, SignatureError, RollbackError, VerificationError.
        """
        if self._snapshot is None or self._timestamp is None:
            raise RuntimeError(f"update of {role} before update_snapshot")
        if not self._snapshot_final:
            # The snapshot came from local storage and failed its final checks.
            self._check_final_snapshot(now)
            self._snapshot_final = True
        delegator_role: Root | Targets
        if delegator == ROOT:
            if role != TARGETS:
                raise RuntimeError(f"root delegates only to targets, not {role}")
            delegator_role = self.root
        else:
            found = self.get_targets_role(delegator)
            if found is None:
                raise RuntimeError(f"update of {role} before its delegator {delegator}")
            delegator_role = found
        snap = self._snapshot.signed
        meta = snap.meta.get(f"{role}.json")
        if meta is None:
            raise VerificationError(f"{role}: not listed in snapshot v{snap.version}")
        _check_meta(role, meta, data, f"snapshot v{snap.version}")
        new: Metadata[Targets] = parse_metadata(role, data, Targets)
        _check_threshold(delegator_role, delegator, role, new)
        if new.signed.version < meta.version:
            raise RollbackError(
                f"{role}: version rollback (mix-and-match?): got v{new.signed.version}, "
                f"snapshot lists v{meta.version}"
            )
        if new.signed.version != meta.version:
            raise VerificationError(
                f"{role}: version mismatch (mix-and-match?): got v{new.signed.version}, "
                f"snapshot v{snap.version} lists v{meta.version}"
            )
        _check_expiry(role, new.signed, now)
        self._targets[role] = new
        return new.signed

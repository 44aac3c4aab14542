"""The publisher's repository: create, sign and update a TUF repository folder.

What it does: ``Repository`` owns ``DIR/metadata/``, ``DIR/targets/`` and (by default)
``DIR/keys/`` (layout in ADR-0003 and the package docstring). Every change is first signed in
memory (a missing key changes nothing on disk), then written in the same publish order, so a
client reading concurrently never sees a timestamp that names missing files: target blobs, then
delegated targets, then targets, then snapshot, then timestamp last; a new root is written
before any of them. Published versioned files are never rewritten. Files are written
atomically (temporary file in the same folder, fsync, rename, fsync the folder). A mutating
call takes an exclusive ``flock`` on ``DIR/.publisher.lock`` and reloads the metadata from disk
first, so a timer's ``refresh`` and an operator's ``add`` do not overwrite each other.

Stable interface (other parts and tests rely on it):

- ``Repository.init(path, *, root_threshold=1, root_keys=1, keys_dir=None, now=None,
  expires_days=None)`` and ``Repository.open(path, keys_dir=None)``;
- ``add_target(file, name, custom, *, now=None) -> TargetFile``;
- ``rotate_key(role, *, now=None)`` for root, targets, snapshot, timestamp or a delegated role;
- ``refresh(*, snapshot=False, now=None)``;
- ``add_delegation(name, paths, *, terminating=False, threshold=1, now=None)`` and
  ``add_delegated_target(role, file, name, custom, *, now=None) -> TargetFile``;
- ``sign_manifest(entries, *, now=None) -> bytes``: an offline, targets-format manifest of local
  files signed by the targets keys (ADR-0009 §1; nothing in the repository changes);
- ``root_path`` (``DIR/metadata/1.root.json``, the device's ``--trust``), ``metadata_dir``,
  ``targets_dir``, ``keys_dir``, and the loaded ``root``/``targets``/``snapshot``/``timestamp``/
  ``delegated`` metadata.

``now`` is a timezone-aware UTC datetime (default: the system clock); passing a past ``now``
produces metadata that is already expired, for freeze tests.

What it does not do: it does not serve files (``edgeagent.registry.server``), verify
repositories as a client would, garbage-collect old target blobs or metadata versions (old
consistent snapshots stay readable for clients mid-update), or support succinct hash-bin
delegations. Decisions (versions, expiry, names, custom schema) live in ``policy`` [pure].
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]
from tuf.api.exceptions import UnsignedMetadataError

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgeagent.errors import ConfigError, SigningKeyError
from edgeagent.publisher import keys as keystore
from edgeagent.publisher.policy import (
    TOP_LEVEL_ROLES,
    Policy,
    default_policy,
    expiry,
    next_version,
    parse_policy,
    render_policy,
    snapshot_needs_refresh,
    validate_name,
)

log = logging.getLogger(__name__)

__all__ = ["CHUNK_SIZE", "Repository", "SigningKeyError", "copy_blob"]

CHUNK_SIZE = 1 << 20
LOCK_FILE = ".publisher.lock"
_ROOT_RE = re.compile(r"([1-9][0-9]*)\.root\.json")
_SERIALIZER = JSONSerializer(compact=False)

T = TypeVar("T", Root, Targets, Snapshot, Timestamp)


def _utcnow(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _load(path: Path, cls: type[T]) -> Metadata[T]:
    try:
        md = Metadata[T].from_file(str(path))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: missing (is this an edgeagent repository?)") from exc
    except (DeserializationError, OSError) as exc:
        raise ConfigError(f"{path}: cannot read {cls.type} metadata: {exc}") from exc
    if not isinstance(md.signed, cls):
        raise ConfigError(f"{path}: field 'signed._type': expected {cls.type!r}")
    return md


def copy_blob(src: Path, targets_dir: Path, name: str) -> tuple[int, str, Path]:
    """Stream ``src`` into ``targets_dir/<sha256>.<name>`` and return (length, sha256, path).

    The file is read once in ``CHUNK_SIZE`` chunks (never whole in memory), hashed while it is
    copied to a hidden temporary file, fsynced and renamed into place.

    Raises:
        ConfigError: ``src`` cannot be read (names the file).
    """
    digest = hashlib.sha256()
    length = 0
    fd, tmp = tempfile.mkstemp(dir=targets_dir, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                f = src.open("rb")
            except OSError as exc:
                raise ConfigError(f"{src}: cannot read target file: {exc.strerror}") from exc
            with f:
                while chunk := f.read(CHUNK_SIZE):
                    digest.update(chunk)
                    out.write(chunk)
                    length += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        final = targets_dir / f"{sha}.{name}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(targets_dir)
    return length, sha, final


class Repository:
    """A TUF repository folder and the keys that sign it (see the module docstring)."""

    def __init__(self, path: Path, keys_dir: Path, policy: Policy) -> None:
        """Use `init` or `open`; this only records paths and policy."""
        self.path = path
        self.keys_dir = keys_dir
        self.policy = policy
        self.root: Metadata[Root]
        self.targets: Metadata[Targets]
        self.snapshot: Metadata[Snapshot]
        self.timestamp: Metadata[Timestamp]
        self.delegated: dict[str, Metadata[Targets]] = {}
        self._keys: dict[str, keystore.KeyPair | None] = {}
        self._published: dict[str, int] = {}

    # -- paths -------------------------------------------------------------------------------

    @property
    def metadata_dir(self) -> Path:
        """``DIR/metadata``: the metadata exactly as served."""
        return self.path / "metadata"

    @property
    def targets_dir(self) -> Path:
        """``DIR/targets``: content-addressed target files."""
        return self.path / "targets"

    @property
    def root_path(self) -> Path:
        """``DIR/metadata/1.root.json``: the trusted root a device is given (``--trust``)."""
        return self.metadata_dir / "1.root.json"

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path,
        *,
        root_threshold: int = 1,
        root_keys: int = 1,
        keys_dir: Path | None = None,
        now: datetime | None = None,
        expires_days: dict[str, int] | None = None,
    ) -> Repository:
        """Create a new repository at ``path`` with fresh keys and version-1 metadata.

        Raises:
            ConfigError: ``path`` already holds metadata, or the policy values are invalid.
        """
        now = _utcnow(now)
        path = Path(path)
        policy = default_policy(
            root_threshold=root_threshold, root_keys=root_keys, expires_days=expires_days
        )
        keys_dir = Path(keys_dir) if keys_dir is not None else path / "keys"
        if (path / "metadata").exists() and any((path / "metadata").iterdir()):
            raise ConfigError(f"{path / 'metadata'}: already exists and is not empty")
        if (keys_dir / keystore.POLICY_FILE).exists():
            raise ConfigError(f"{keys_dir / keystore.POLICY_FILE}: already exists")
        for sub in ("metadata", "targets"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _atomic_write(keys_dir / keystore.POLICY_FILE, render_policy(policy))

        repo = cls(path, keys_dir, policy)
        root = Root(expires=expiry(policy, "root", now), consistent_snapshot=True)
        for role in TOP_LEVEL_ROLES:
            rp = policy.role(role)
            root.roles[role].threshold = rp.threshold
            for _ in range(rp.keys):
                root.add_key(repo._new_key(role, now), role)
        repo.root = Metadata(root)
        repo.targets = Metadata(Targets(expires=expiry(policy, "targets", now)))
        repo.snapshot = Metadata(Snapshot(expires=expiry(policy, "snapshot", now)))
        repo.timestamp = Metadata(Timestamp(expires=expiry(policy, "timestamp", now)))
        with repo._locked():
            repo._publish(new_root=True, targets_changed=True, now=now, bump=False)
        log.info("initialised repository %s (keys in %s)", path, keys_dir)
        return repo

    @classmethod
    def open(cls, path: Path, keys_dir: Path | None = None) -> Repository:
        """Load an existing repository (keys are loaded lazily, when a role is signed).

        Raises:
            ConfigError: a metadata file or ``policy.toml`` is missing or malformed.
        """
        path = Path(path)
        keys_dir = Path(keys_dir) if keys_dir is not None else path / "keys"
        policy_file = keys_dir / keystore.POLICY_FILE
        try:
            policy = parse_policy(policy_file.read_bytes(), str(policy_file))
        except FileNotFoundError:
            log.info("%s: absent, using the default policy", policy_file)
            policy = default_policy()
        repo = cls(path, keys_dir, policy)
        repo._reload()
        return repo

    def _reload(self) -> None:
        md_dir = self.metadata_dir
        try:
            names = os.listdir(md_dir)
        except OSError as exc:
            raise ConfigError(f"{md_dir}: cannot list metadata: {exc.strerror}") from exc
        versions = [int(m.group(1)) for n in names if (m := _ROOT_RE.fullmatch(n))]
        if not versions:
            raise ConfigError(f"{md_dir}: no N.root.json (is this an edgeagent repository?)")
        self.root = _load(md_dir / f"{max(versions)}.root.json", Root)
        self.timestamp = _load(md_dir / "timestamp.json", Timestamp)
        snap_v = self.timestamp.signed.snapshot_meta.version
        self.snapshot = _load(md_dir / f"{snap_v}.snapshot.json", Snapshot)
        loaded: dict[str, Metadata[Targets]] = {}
        for fname, meta in self.snapshot.signed.meta.items():
            role = fname.removesuffix(".json")
            loaded[role] = _load(md_dir / f"{meta.version}.{role}.json", Targets)
        if "targets" not in loaded:
            raise ConfigError(
                f"{md_dir}/{snap_v}.snapshot.json: field 'meta': expected 'targets.json'"
            )
        self.targets = loaded.pop("targets")
        self.delegated = loaded
        self._published = self._referenced_versions()

    def _referenced_versions(self) -> dict[str, int]:
        """Versions of each role that the current timestamp (transitively) names."""
        versions = {"root": self.root.signed.version, "snapshot": self.snapshot.signed.version}
        for fname, meta in self.snapshot.signed.meta.items():
            versions[fname.removesuffix(".json")] = meta.version
        return versions

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- keys and signing --------------------------------------------------------------------

    def _new_key(self, role: str, now: datetime) -> SSlibKey:
        pair = keystore.generate()
        keystore.write_key(self.keys_dir, pair, role, now)
        self._keys[pair.key.keyid] = pair
        return pair.key

    def _key(self, keyid: str) -> keystore.KeyPair | None:
        if keyid not in self._keys:
            self._keys[keyid] = keystore.load_key(self.keys_dir, keyid)
        return self._keys[keyid]

    def _role_keys(self, role: str) -> tuple[list[str], int]:
        """Return (keyids, threshold) of ``role`` as its delegator currently states them."""
        if role in TOP_LEVEL_ROLES:
            r: Role = self.root.signed.roles[role]
            return list(r.keyids), r.threshold
        delegations = self.targets.signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise ConfigError(f"role {role!r}: not a top-level role nor a delegation of targets")
        d = delegations.roles[role]
        return list(d.keyids), d.threshold

    def _sign(self, md: Metadata[Any], role: str, keyids: list[str], threshold: int) -> None:
        md.signatures.clear()
        missing = []
        for keyid in keyids:
            pair = self._key(keyid)
            if pair is None:
                missing.append(keyid)
                continue
            md.sign(pair.signer, append=True)
        if len(md.signatures) < threshold:
            raise SigningKeyError(
                f"role {role!r}: {len(md.signatures)} of threshold {threshold} keys available in "
                f"{self.keys_dir}; missing key files: "
                + ", ".join(f"{k}{keystore.KEY_SUFFIX}" for k in missing)
            )

    def _serialize(self, md: Metadata[Any], role: str) -> tuple[str, bytes]:
        """Return (file name, bytes) of signed ``md``; refuse to replace published versions."""
        version = md.signed.version
        fname = "timestamp.json" if role == "timestamp" else f"{version}.{role}.json"
        path = self.metadata_dir / fname
        if role != "timestamp" and path.exists():
            if role == "root" or version <= self._published.get(role, 0):
                # Consistent snapshots are immutable once published (clients may read them).
                raise RuntimeError(f"{path}: refusing to overwrite published metadata")
            log.warning("%s: replacing a leftover of an interrupted publish", path)
        return fname, md.to_bytes(_SERIALIZER)

    def _sign_root(self, root: Metadata[Root], previous: Metadata[Root] | None) -> None:
        """Sign root by its own keys and those of ``previous``; check both thresholds."""
        keyids, threshold = (
            list(root.signed.roles["root"].keyids),
            root.signed.roles["root"].threshold,
        )
        if previous is not None:
            old = [k for k in previous.signed.roles["root"].keyids if k not in keyids]
            keyids += old
        self._sign(root, "root", keyids, threshold)
        try:
            root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
            if previous is not None:
                previous.signed.verify_delegate("root", root.signed_bytes, root.signatures)
        except UnsignedMetadataError as exc:
            raise SigningKeyError(
                f"root v{root.signed.version}: threshold of old and new root keys not met: {exc}"
            ) from exc

    @staticmethod
    def _metafile(data: bytes, version: int) -> MetaFile:
        return MetaFile(
            version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}
        )

    def _bump(self, md: Metadata[Any], role: str, now: datetime) -> None:
        md.signed.version = next_version(md.signed.version)
        md.signed.expires = expiry(self.policy, role, now)

    def _publish(
        self,
        *,
        now: datetime,
        new_root: bool = False,
        previous_root: Metadata[Root] | None = None,
        targets_changed: bool = False,
        delegated_changed: tuple[str, ...] = (),
        snapshot: bool = True,
        bump: bool = True,
    ) -> None:
        """Sign everything in memory, then write in publish order.

        Order: root (when ``new_root``; signed also by ``previous_root``'s keys), delegated
        roles, targets, snapshot, timestamp. Every signature is made before the first write, so
        a missing key leaves the repository untouched. ``bump=False`` is only for `init`,
        whose metadata is already at version 1.
        """
        writes: list[tuple[str, bytes]] = []
        if new_root:
            self._sign_root(self.root, previous_root)
            fname, data = self._serialize(self.root, "root")
            writes += [(fname, data), ("root.json", data)]
        snap = self.snapshot.signed
        for role in delegated_changed:
            md = self.delegated[role]
            if bump and f"{role}.json" in snap.meta:
                self._bump(md, role, now)
            self._sign(md, role, *self._role_keys(role))
            writes.append(self._serialize(md, role))
            snap.meta[f"{role}.json"] = self._metafile(writes[-1][1], md.signed.version)
        if targets_changed:
            if bump:
                self._bump(self.targets, "targets", now)
            self._sign(self.targets, "targets", *self._role_keys("targets"))
            writes.append(self._serialize(self.targets, "targets"))
            snap.meta["targets.json"] = self._metafile(writes[-1][1], self.targets.signed.version)
        if snapshot or targets_changed or delegated_changed:
            if bump:
                self._bump(self.snapshot, "snapshot", now)
            self._sign(self.snapshot, "snapshot", *self._role_keys("snapshot"))
            writes.append(self._serialize(self.snapshot, "snapshot"))
            self.timestamp.signed.snapshot_meta = self._metafile(writes[-1][1], snap.version)
        if bump:
            self._bump(self.timestamp, "timestamp", now)
        self._sign(self.timestamp, "timestamp", *self._role_keys("timestamp"))
        writes.append(self._serialize(self.timestamp, "timestamp"))
        for fname, data in writes:
            _atomic_write(self.metadata_dir / fname, data)
        self._published = self._referenced_versions()

    # -- operations --------------------------------------------------------------------------

    def add_target(
        self, file: Path, name: str, custom: dict[str, Any], *, now: datetime | None = None
    ) -> TargetFile:
        """Add or replace top-level target ``name`` with the bytes of ``file``.

        Returns:
            The signed `TargetFile` (length, sha256, custom).

        Raises:
            ConfigError: bad name or unreadable file. SigningKeyError: keys missing.
        """
        now = _utcnow(now)
        validate_name(name)
        with self._locked():
            self._reload()
            length, sha, path = copy_blob(Path(file), self.targets_dir, name)
            target = TargetFile(length, {"sha256": sha}, name, {"custom": custom})
            self.targets.signed.targets[name] = target
            self._publish(targets_changed=True, now=now)
        log.info("added target %s (%d bytes, sha256 %s) as %s", name, length, sha, path.name)
        return target

    def add_delegation(
        self,
        name: str,
        paths: list[str],
        *,
        terminating: bool = False,
        threshold: int = 1,
        now: datetime | None = None,
    ) -> None:
        """Delegate target names matching ``paths`` (fnmatch patterns) to a new role ``name``.

        ``threshold`` fresh keys are generated for the role. Targets, the new role (version 1),
        snapshot and timestamp are signed.

        Raises:
            ConfigError: bad or existing role name, no paths, threshold below 1.
        """
        now = _utcnow(now)
        validate_name(name, "delegated role name")
        if name in TOP_LEVEL_ROLES:
            raise ConfigError(f"delegated role name {name!r}: clashes with a top-level role")
        if not paths:
            raise ConfigError(f"delegated role {name!r}: expected at least one path pattern")
        if threshold < 1:
            raise ConfigError(f"delegated role {name!r}: threshold must be >= 1, got {threshold}")
        with self._locked():
            self._reload()
            signed = self.targets.signed
            if signed.delegations is None:
                signed.delegations = Delegations(keys={}, roles={})
            roles = signed.delegations.roles
            assert roles is not None  # We never create succinct delegations.
            if name in roles:
                raise ConfigError(f"delegated role {name!r}: already exists")
            keyids = []
            for _ in range(threshold):
                key = self._new_key(name, now)
                signed.delegations.keys[key.keyid] = key
                keyids.append(key.keyid)
            roles[name] = DelegatedRole(name, keyids, threshold, terminating, list(paths))
            self.delegated[name] = Metadata(Targets(expires=expiry(self.policy, name, now)))
            self._publish(targets_changed=True, delegated_changed=(name,), now=now)
        log.info("delegated %s to role %s", paths, name)

    def add_delegated_target(
        self,
        role: str,
        file: Path,
        name: str,
        custom: dict[str, Any],
        *,
        now: datetime | None = None,
    ) -> TargetFile:
        """Add or replace target ``name`` in delegated role ``role``.

        Raises:
            ConfigError: unknown role, bad name, or ``name`` outside the role's path patterns.
        """
        now = _utcnow(now)
        validate_name(name)
        with self._locked():
            self._reload()
            delegations = self.targets.signed.delegations
            drole = (delegations.roles or {}).get(role) if delegations else None
            if drole is None or role not in self.delegated:
                raise ConfigError(f"delegated role {role!r}: does not exist")
            if not drole.is_delegated_path(name):
                raise ConfigError(
                    f"target name {name!r}: not within the paths {drole.paths} of role {role!r}"
                )
            length, sha, _ = copy_blob(Path(file), self.targets_dir, name)
            target = TargetFile(length, {"sha256": sha}, name, {"custom": custom})
            self.delegated[role].signed.targets[name] = target
            self._publish(delegated_changed=(role,), now=now)
        log.info("added target %s to role %s (%d bytes)", name, role, length)
        return target

    def rotate_key(self, role: str, *, now: datetime | None = None) -> None:
        """Replace the keys of ``role`` with fresh ones (count and threshold from the policy).

        Top-level roles: a new root version is signed by the old and the new root keys (both
        thresholds must be met), then the role is re-signed with its new keys, and snapshot and
        timestamp follow. Delegated roles: targets lists the new keys and the role is re-signed.
        Retired key files are deleted after everything is written.

        Raises:
            ConfigError: unknown role. SigningKeyError: old keys missing (offline).
        """
        now = _utcnow(now)
        with self._locked():
            self._reload()
            old_keyids, _ = self._role_keys(role)
            if role in TOP_LEVEL_ROLES:
                retired = self._rotate_top_level(role, now)
            else:
                retired = self._rotate_delegated(role, now)
        for keyid in retired:
            keystore.delete_key(self.keys_dir, keyid)
            self._keys.pop(keyid, None)
        log.info("rotated %s keys: %s -> %s", role, old_keyids, self._role_keys(role)[0])

    def _rotate_top_level(self, role: str, now: datetime) -> list[str]:
        previous = Metadata[Root].from_bytes(self.root.to_bytes())
        root = self.root.signed
        rp = self.policy.role(role)
        old = list(root.roles[role].keyids)
        for keyid in old:
            root.revoke_key(keyid, role)
        for _ in range(rp.keys):
            root.add_key(self._new_key(role, now), role)
        root.roles[role].threshold = rp.threshold
        self._bump(self.root, "root", now)
        self._publish(
            new_root=True, previous_root=previous, targets_changed=role == "targets", now=now
        )
        return [k for k in old if k not in root.keys]

    def _rotate_delegated(self, role: str, now: datetime) -> list[str]:
        delegations = self.targets.signed.delegations
        assert delegations is not None
        assert delegations.roles is not None
        drole = delegations.roles[role]
        old = list(drole.keyids)
        drole.keyids = []
        for _ in range(max(len(old), drole.threshold)):
            key = self._new_key(role, now)
            delegations.keys[key.keyid] = key
            drole.keyids.append(key.keyid)
        still_used = {k for r in delegations.roles.values() for k in r.keyids}
        retired = [k for k in old if k not in still_used]
        for keyid in retired:
            delegations.keys.pop(keyid, None)
        self._publish(targets_changed=True, delegated_changed=(role,), now=now)
        return retired

    def refresh(self, *, snapshot: bool = False, now: datetime | None = None) -> bool:
        """Re-sign timestamp, and snapshot when asked or when its expiry is near (policy rule).

        Returns:
            Whether the snapshot was re-signed.
        """
        now = _utcnow(now)
        with self._locked():
            self._reload()
            resign = snapshot or snapshot_needs_refresh(
                self.policy, self.snapshot.signed.expires, now
            )
            self._publish(snapshot=resign, now=now)
        log.info(
            "refreshed timestamp v%d (snapshot re-signed: %s)",
            self.timestamp.signed.version,
            resign,
        )
        return resign

    def sign_manifest(
        self,
        entries: list[tuple[str, Path, dict[str, Any]]],
        *,
        now: datetime | None = None,
    ) -> bytes:
        """Sign an offline manifest of local files with the targets role keys (ADR-0009 §1).

        The manifest is a targets-format metadata document (version 1, expiry from the policy's
        targets period) listing each ``(name, file, custom)`` with its length and sha256. A device
        or ``edgeagent flash --manifest`` verifies it against the root's targets keys. The
        repository itself is not changed and the files are not copied.

        Returns:
            The signed manifest bytes (JSON).

        Raises:
            ConfigError: a bad name or an unreadable file. SigningKeyError: keys missing.
        """
        now = _utcnow(now)
        manifest = Metadata(Targets(expires=expiry(self.policy, "targets", now)))
        for name, file, custom in entries:
            validate_name(name)
            digest = hashlib.sha256()
            length = 0
            try:
                with Path(file).open("rb") as f:
                    while chunk := f.read(CHUNK_SIZE):
                        digest.update(chunk)
                        length += len(chunk)
            except OSError as exc:
                raise ConfigError(f"{file}: cannot read manifest entry: {exc.strerror}") from exc
            manifest.signed.targets[name] = TargetFile(
                length, {"sha256": digest.hexdigest()}, name, {"custom": custom}
            )
        self._sign(manifest, "targets", *self._role_keys("targets"))
        return manifest.to_bytes(_SERIALIZER)

    def target_roles(self) -> dict[str, Metadata[Targets]]:
        """Return every targets role by name: ``targets`` first, then delegated roles."""
        return {"targets": self.targets, **self.delegated}

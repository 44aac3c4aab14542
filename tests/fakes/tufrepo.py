"""A small TUF repository simulator for crafting attacks (test double, not the publisher).

It writes a repository folder in the registry layout (``metadata/N.ROLE.json``,
``metadata/timestamp.json``, ``targets/<sha256>.<name>``) with python-tuf's ``tuf.api.metadata``,
and exposes the raw `Metadata` objects and signers so a test can break exactly one rule: expire a
role, sign with a wrong key, drop below a threshold, skip a root version, serve an older version,
list a targets version the snapshot does not match. Keys are generated per instance, in memory.

It deliberately shares no code with ``edgeagent.publisher`` so that attacks do not depend on the
publisher's internals.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer  # type: ignore[attr-defined]

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

TOP = ("root", "timestamp", "snapshot", "targets")


def in_days(days: float, now: datetime | None = None) -> datetime:
    base = now or datetime.now(UTC)
    return (base + timedelta(days=days)).replace(microsecond=0)


class TufRepo:
    """Repository state + signers; `publish()` writes what changed to ``base``."""

    def __init__(
        self,
        base: Path,
        *,
        root_threshold: int = 1,
        root_keys: int = 1,
        consistent: bool = True,
    ) -> None:
        self.consistent = consistent
        self.base = base
        (base / "metadata").mkdir(parents=True, exist_ok=True)
        (base / "targets").mkdir(parents=True, exist_ok=True)
        self.signers: dict[str, list[Signer]] = {r: [] for r in TOP}
        exp = in_days(365)
        self.root: Metadata[Root] = Metadata(Root(expires=exp, consistent_snapshot=consistent))
        self.timestamp: Metadata[Timestamp] = Metadata(Timestamp(expires=in_days(1)))
        self.snapshot: Metadata[Snapshot] = Metadata(Snapshot(expires=in_days(7)))
        self.targets: Metadata[Targets] = Metadata(Targets(expires=in_days(30)))
        self.delegated: dict[str, Metadata[Targets]] = {}
        self.delegated_parent: dict[str, str] = {}
        for role in TOP:
            n = root_keys if role == "root" else 1
            for _ in range(n):
                self.add_key(role)
        self.root.signed.roles["root"].threshold = root_threshold
        self.write_root()
        self.publish()

    # Keys -------------------------------------------------------------------------------

    def add_key(self, role: str, signer: Signer | None = None) -> Signer:
        signer = signer or CryptoSigner.generate_ed25519()
        if role in TOP:
            self.root.signed.add_key(signer.public_key, role)
        else:
            parent = self.targets_md(self.delegated_parent[role]).signed
            parent.add_key(signer.public_key, role)
        self.signers.setdefault(role, []).append(signer)
        return signer

    def replace_keys(self, role: str) -> Signer:
        """Rotate: revoke every key of ``role`` and add one new key."""
        if role in TOP:
            for keyid in list(self.root.signed.roles[role].keyids):
                self.root.signed.revoke_key(keyid, role)
        self.signers[role] = []
        return self.add_key(role)

    def sign(self, role: str, md: Metadata[Any], signers: list[Signer] | None = None) -> None:
        md.signatures.clear()
        for s in signers if signers is not None else self.signers[role]:
            md.sign(s, append=True)

    # Writing ----------------------------------------------------------------------------

    def _write(self, name: str, md: Metadata[Any]) -> bytes:
        data = md.to_bytes(JSONSerializer(compact=False))
        (self.base / "metadata" / name).write_bytes(data)
        if not self.consistent:
            # Without consistent snapshots clients fetch ROLE.json (root stays versioned).
            plain = name.split(".", 1)[1] if name[0].isdigit() else name
            (self.base / "metadata" / plain).write_bytes(data)
        return data

    def write_root(self, signers: list[Signer] | None = None) -> bytes:
        """Sign and write the current root as ``N.root.json`` (and ``root.json``)."""
        self.sign("root", self.root, signers)
        data = self._write(f"{self.root.signed.version}.root.json", self.root)
        (self.base / "metadata" / "root.json").write_bytes(data)
        return data

    def new_root_version(self, extra_signers: list[Signer] | None = None) -> bytes:
        """Bump the root version, sign with current root keys plus ``extra_signers``, write."""
        self.root.signed.version += 1
        signers = list(self.signers["root"]) + list(extra_signers or [])
        return self.write_root(signers)

    def targets_md(self, role: str) -> Metadata[Targets]:
        return self.targets if role == "targets" else self.delegated[role]

    def add_target(self, path: str, data: bytes, role: str = "targets") -> TargetFile:
        tf = TargetFile.from_data(path, data, ["sha256"])
        self.targets_md(role).signed.targets[path] = tf
        directory, _sep, name = path.rpartition("/")
        dest = self.base / "targets" / directory / f"{tf.hashes['sha256']}.{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        if not self.consistent:
            (dest.parent / name).write_bytes(data)
        return tf

    def add_delegation(
        self, name: str, paths: list[str], *, parent: str = "targets", terminating: bool = False
    ) -> None:
        pmd = self.targets_md(parent).signed
        if pmd.delegations is None:
            pmd.delegations = Delegations(keys={}, roles={})
        assert pmd.delegations.roles is not None
        pmd.delegations.roles[name] = DelegatedRole(name, [], 1, terminating, paths)
        self.delegated[name] = Metadata(Targets(expires=in_days(30)))
        self.delegated_parent[name] = parent
        self.add_key(name)

    def publish(
        self,
        roles: tuple[str, ...] | None = None,
        *,
        expires: dict[str, datetime] | None = None,
    ) -> None:
        """Bump, sign and write targets roles, snapshot and timestamp (in that order).

        Args:
            roles: targets roles to re-sign (default: all targets roles).
            expires: override the expiry of named roles for this publish.
        """
        expires = expires or {}
        chosen = roles if roles is not None else ("targets", *self.delegated)
        for role in chosen:
            md = self.targets_md(role)
            md.signed.version += 1 if self._written(role) else 0
            if role in expires:
                md.signed.expires = expires[role]
            self.sign(role, md)
            data = self._write(f"{md.signed.version}.{role}.json", md)
            self.snapshot.signed.meta[f"{role}.json"] = MetaFile(md.signed.version)
            del data
        self.snapshot.signed.version += 1 if self._written("snapshot") else 0
        self.snapshot.signed.expires = expires.get("snapshot", in_days(7))
        self.sign("snapshot", self.snapshot)
        sdata = self._write(f"{self.snapshot.signed.version}.snapshot.json", self.snapshot)
        self.timestamp.signed.version += 1 if self._written("timestamp") else 0
        self.timestamp.signed.expires = expires.get("timestamp", in_days(1))
        self.timestamp.signed.snapshot_meta = MetaFile(
            self.snapshot.signed.version,
            length=len(sdata),
            hashes={"sha256": hashlib.sha256(sdata).hexdigest()},
        )
        self.sign("timestamp", self.timestamp)
        self._write("timestamp.json", self.timestamp)
        self._written_roles.update({"snapshot", "timestamp", *chosen})

    _written_roles: set[str]

    def _written(self, role: str) -> bool:
        if not hasattr(self, "_written_roles"):
            self._written_roles = set()
        return role in self._written_roles

    def metadata_bytes(self, name: str) -> bytes:
        return (self.base / "metadata" / name).read_bytes()

    def write_raw(self, name: str, data: bytes) -> None:
        (self.base / "metadata" / name).write_bytes(data)

    def resign_timestamp(self) -> None:
        """Bump and re-sign only the timestamp (pointing at the current snapshot)."""
        self.timestamp.signed.version += 1
        self.sign("timestamp", self.timestamp)
        self._write("timestamp.json", self.timestamp)

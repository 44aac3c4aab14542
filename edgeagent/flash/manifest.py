"""Offline image verification for flashing [pure]: signed manifests, and digest checks.

What it does (ADR-0009 §1):

- `verify_manifest` checks a targets-format manifest (``edgeagent repo sign-manifest``) against
  a trusted root given as bytes: a threshold of valid signatures by the root's *targets* role
  keys, then expiry against ``now``, and returns the signed description of one target. Parsing and
  signature checks use the same TUF metadata code as the device's client
  (`edgeagent.verify.trust`).
- `signed_files` accepts either that format or the host build's ``edgeos-manifest``
  (`edgeagent.hostos.manifest`, ADR-0008, verified by its own module) and returns every file it
  signs as a `SignedFile` by name (the disk image, its block map, slot images, UKIs).
- `check_image` / `check_file` compare a measured length and sha256 with a signed one and raise
  `DigestMismatchError` naming both.

What it does not do: no file reading, no clock (``now`` is an argument), no root chain walk (the
root given is the one trusted), no snapshot/timestamp rules (they do not exist offline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import Root, TargetFile, Targets  # type: ignore[attr-defined]

from edgeagent.errors import DigestMismatchError, ExpiredError, SignatureError, VerificationError
from edgeagent.hostos import manifest as host_manifest
from edgeagent.verify.trust import parse_metadata


@dataclass(frozen=True, slots=True)
class SignedFile:
    """A file's signed length and sha256 (hex), by the name the signer gave it."""

    name: str
    length: int
    sha256: str


def from_target(target: TargetFile) -> SignedFile:
    """The `SignedFile` of a TUF target.

    Raises:
        VerificationError: the signed target has no sha256.
    """
    sha = target.hashes.get("sha256")
    if not isinstance(sha, str):
        raise VerificationError(f"target {target.path}: signed metadata has no sha256 hash")
    return SignedFile(target.path, target.length, sha)


def _trusted_root(root_data: bytes, source: str) -> Root:
    root = parse_metadata("root", root_data, Root)
    result = root.signed.get_verification_result("root", root.signed_bytes, root.signatures)
    if not result:
        raise SignatureError(f"{source}: root is not signed by a threshold of its own root keys")
    signed: Root = root.signed
    return signed


def verify_manifest(
    root_data: bytes,
    manifest_data: bytes,
    name: str,
    now: datetime,
    *,
    manifest_source: str = "manifest",
    root_source: str = "root",
) -> TargetFile:
    """Verify a signed manifest and return the target ``name`` it lists.

    Args:
        root_data: the trusted root (``1.root.json`` of the registry, or a newer one).
        manifest_data: the manifest bytes (untrusted).
        name: the target to find (e.g. ``disk.img``).
        now: the time for the expiry check (timezone-aware).
        manifest_source: the manifest's file name, for messages.
        root_source: the root's file name, for messages.

    Raises:
        SignatureError: the threshold of the root's targets keys is not met.
        ExpiredError: the manifest has expired.
        VerificationError: malformed, or ``name`` is not listed.
    """
    root = _trusted_root(root_data, root_source)
    md = parse_metadata("targets", manifest_data, Targets)
    result = root.get_verification_result("targets", md.signed_bytes, md.signatures)
    if not result:
        raise SignatureError(
            f"{manifest_source}: signature threshold not met: {len(result.signed)} of "
            f"{result.threshold} required valid signatures from the targets keys of {root_source}"
        )
    signed: Targets = md.signed
    if signed.is_expired(now):
        raise ExpiredError(
            f"{manifest_source}: expired at {signed.expires.isoformat()}, now is "
            f"{now.isoformat()} (an old image? ask for a freshly signed manifest)"
        )
    found = signed.targets.get(name)
    if found is None:
        listed = ", ".join(sorted(signed.targets)) or "nothing"
        raise VerificationError(f"{manifest_source}: lists no target {name!r} (it lists {listed})")
    target: TargetFile = found
    return target


def _host_files(signed: dict[str, object], source: str) -> dict[str, SignedFile]:
    entries: list[object] = [signed.get("disk"), signed.get("bmap")]
    for group in ("slots", "ukis"):
        table = signed.get(group)
        if isinstance(table, dict):
            entries += list(table.values())
    files: dict[str, SignedFile] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name, length, sha = entry.get("file"), entry.get("length"), entry.get("sha256")
        if not (isinstance(name, str) and isinstance(length, int) and isinstance(sha, str)):
            raise VerificationError(f"{source}: entry {entry!r}: expected file, length, sha256")
        files[name.rsplit("/", 1)[-1]] = SignedFile(name, length, sha)
    return files


def signed_files(
    root_data: bytes,
    manifest_data: bytes,
    now: datetime,
    *,
    manifest_source: str = "manifest",
    root_source: str = "root",
) -> dict[str, SignedFile]:
    """Verify a manifest of either format and return every file it signs, by file name.

    Raises:
        SignatureError, ExpiredError, VerificationError: as `verify_manifest` (or the host
            build's verifier for ``edgeos-manifest``).
    """
    try:
        unverified = json.loads(manifest_data)
        unverified_type = unverified["signed"]["_type"]
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"{manifest_source}: not a signed manifest: {exc}") from None
    if unverified_type == host_manifest.MANIFEST_TYPE:
        _trusted_root(root_data, root_source)
        signed = host_manifest.verify_manifest(manifest_data, root_data, source=manifest_source)
        return _host_files(signed, manifest_source)
    root = _trusted_root(root_data, root_source)
    del root
    md = parse_metadata("targets", manifest_data, Targets)
    return {
        name: from_target(
            verify_manifest(
                root_data,
                manifest_data,
                name,
                now,
                manifest_source=manifest_source,
                root_source=root_source,
            )
        )
        for name in md.signed.targets
    }


def check_file(signed: SignedFile, length: int, sha256: str, path: str) -> None:
    """Compare the measured ``length`` and ``sha256`` of ``path`` with ``signed``.

    Raises:
        DigestMismatchError: either differs (names the file, both values).
    """
    if length != signed.length:
        raise DigestMismatchError(
            f"{path}: length {length} does not match the signed length {signed.length} of "
            f"{signed.name} (tampered or wrong file)"
        )
    if sha256 != signed.sha256:
        raise DigestMismatchError(
            f"{path}: sha256 {sha256} does not match the signed sha256 {signed.sha256} of "
            f"{signed.name} (tampered or wrong file)"
        )


def check_image(target: TargetFile, length: int, sha256: str, image: str) -> None:
    """`check_file` for a TUF target.

    Raises:
        DigestMismatchError: either differs. VerificationError: no signed sha256.
    """
    check_file(from_target(target), length, sha256, image)

"""Offline image verification for flashing [pure]: a signed manifest, and the image digest check.

What it does: `verify_manifest` checks a targets-format manifest (ADR-0009 §1) against a trusted
root given as bytes: a threshold of valid signatures by the root's *targets* role keys, then
expiry against ``now``, and returns the signed description of one target (length, sha256,
custom). `check_image` compares an image's measured length and sha256 with a signed target and
raises `DigestMismatchError` naming both. Parsing and signature checks use the same TUF metadata
code as the device's client (`edgeagent.verify.trust`), never a second crypto path.

What it does not do: no file reading, no clock (``now`` is an argument), no root chain walk (the
root given is the one trusted), no snapshot/timestamp rules (they do not exist offline).
"""

from __future__ import annotations

from datetime import datetime

# tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
from tuf.api.metadata import Root, TargetFile, Targets  # type: ignore[attr-defined]

from edgeagent.errors import DigestMismatchError, ExpiredError, SignatureError, VerificationError
from edgeagent.verify.trust import parse_metadata


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


def check_image(target: TargetFile, length: int, sha256: str, image: str) -> None:
    """Compare the measured ``length`` and ``sha256`` of ``image`` with the signed ``target``.

    Raises:
        DigestMismatchError: either differs (names the image, both values).
    """
    signed_sha = target.hashes.get("sha256")
    if signed_sha is None:
        raise VerificationError(f"target {target.path}: signed metadata has no sha256 hash")
    if length != target.length:
        raise DigestMismatchError(
            f"{image}: length {length} does not match the signed length {target.length} of "
            f"target {target.path} (tampered or wrong image)"
        )
    if sha256 != signed_sha:
        raise DigestMismatchError(
            f"{image}: sha256 {sha256} does not match the signed sha256 {signed_sha} of "
            f"target {target.path} (tampered or wrong image)"
        )

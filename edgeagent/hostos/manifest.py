"""The signed host image manifest: render, sign and verify. [pure]

``host-os/out/manifest.json`` is a TUF-style envelope ``{"signed": {...}, "signatures": [...]}``
whose ``signed`` part lists the sha256 and length of the disk image, of each slot image
(the squashfs root) and of each UKI, plus the GPT partitions. It is signed with the
repository's **targets** key(s), over the same canonical JSON that TUF metadata uses, so a
device or ``edgeagent flash`` can check it against the trust root baked into the image
(``1.root.json``: the targets role's key ids and threshold). ADR 0008 §Manifest says why.

This module does not read files, hash data or touch keys on disk: the build shell passes the
digests and the signers in, and a verifier passes the manifest and root bytes in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature  # type: ignore[attr-defined]
from tuf.api.metadata import Metadata, Root  # type: ignore[attr-defined]

from edgeagent.errors import SignatureError, VerificationError

MANIFEST_TYPE = "edgeos-manifest"
SPEC_VERSION = 1


class Signer(Protocol):
    """The part of securesystemslib's ``Signer`` this module uses."""

    def sign(self, payload: bytes) -> Signature:
        """Sign ``payload``."""
        ...


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file named by the manifest."""

    file: str
    length: int
    sha256: str

    def as_json(self) -> dict[str, object]:
        """The JSON form used in the manifest."""
        return {"file": self.file, "length": self.length, "sha256": self.sha256}


def _canonical(signed: dict[str, object]) -> bytes:
    data = encode_canonical(signed)
    assert isinstance(data, str)
    return data.encode("utf-8")


def signed_part(
    *,
    name: str,
    version: str,
    created: str,
    kernel: str,
    disk: Artifact,
    bmap: Artifact,
    slots: dict[str, Artifact],
    ukis: dict[str, Artifact],
    partitions: Sequence[dict[str, object]],
) -> dict[str, object]:
    """Build the ``signed`` object of the manifest (all inputs already measured)."""
    return {
        "_type": MANIFEST_TYPE,
        "spec_version": SPEC_VERSION,
        "name": name,
        "version": version,
        "created": created,
        "kernel": kernel,
        "disk": disk.as_json(),
        "bmap": bmap.as_json(),
        "slots": {k: v.as_json() for k, v in sorted(slots.items())},
        "ukis": {k: v.as_json() for k, v in sorted(ukis.items())},
        "partitions": list(partitions),
    }


def sign_manifest(signed: dict[str, object], signers: Sequence[Signer]) -> bytes:
    """Return the manifest file bytes: ``signed`` plus one signature per signer."""
    payload = _canonical(signed)
    sigs = [s.sign(payload) for s in signers]
    doc = {"signed": signed, "signatures": [s.to_dict() for s in sigs]}
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def verify_manifest(manifest: bytes, root_json: bytes, *, source: str) -> dict[str, object]:
    """Check the manifest's signatures against the targets role of a trusted root.

    Args:
        manifest: the bytes of ``manifest.json`` (untrusted).
        root_json: the trusted root metadata (for example the baked-in ``1.root.json``).
        source: the manifest's file name, for errors.

    Returns:
        The verified ``signed`` object.

    Raises:
        VerificationError: the manifest is malformed.
        SignatureError: fewer than the targets threshold of valid signatures.
    """
    try:
        unverified = json.loads(manifest)
        unverified_signed = unverified["signed"]
        unverified_sigs = unverified["signatures"]
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"{source}: not a signed manifest: {exc}") from None
    if not isinstance(unverified_signed, dict) or not isinstance(unverified_sigs, list):
        raise VerificationError(f"{source}: 'signed' must be an object, 'signatures' a list")
    if unverified_signed.get("_type") != MANIFEST_TYPE:
        raise VerificationError(f"{source}: field '_type': expected {MANIFEST_TYPE!r}")
    root = Metadata[Root].from_bytes(root_json).signed
    role = root.roles["targets"]
    payload = _canonical(unverified_signed)
    good: set[str] = set()
    for raw in unverified_sigs:
        try:
            sig = Signature.from_dict(dict(raw))
        except (KeyError, TypeError, ValueError):
            continue
        if sig.keyid not in role.keyids or sig.keyid in good:
            continue
        try:
            root.keys[sig.keyid].verify_signature(sig, payload)
        except Exception:  # noqa: BLE001, S112 - securesystemslib raises several types: all "bad".
            continue
        good.add(sig.keyid)
    if len(good) < role.threshold:
        raise SignatureError(
            f"{source}: {len(good)} valid targets-key signature(s), threshold {role.threshold}"
        )
    return unverified_signed

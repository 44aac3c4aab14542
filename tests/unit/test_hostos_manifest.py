"""The signed host image manifest verifies only under the trust root's targets keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]
from tuf.api.metadata import Metadata, Root  # type: ignore[attr-defined]

from edgeagent.errors import SignatureError, VerificationError
from edgeagent.hostos import manifest as mft


def _signer() -> tuple[CryptoSigner, SSlibKey]:
    priv = Ed25519PrivateKey.generate()
    pub = SSlibKey.from_crypto(priv.public_key())
    return CryptoSigner(priv, pub), pub


def _root(targets_key: SSlibKey) -> bytes:
    root = Root(expires=datetime.now(UTC) + timedelta(days=1))
    root.add_key(targets_key, "targets")
    return Metadata(root).to_bytes()


def _signed() -> dict[str, object]:
    art = mft.Artifact("disk.img", 10, "ab" * 32)
    return mft.signed_part(
        name="edgeos",
        version="1",
        created="2025-11-25T00:00:00Z",
        kernel="k.deb",
        disk=art,
        bmap=art,
        slots={"a": art, "b": art},
        ukis={"a": art},
        partitions=[{"name": "esp", "start": 1048576, "size": 1}],
    )


def test_manifest_signed_by_targets_key_verifies() -> None:
    signer, pub = _signer()
    data = mft.sign_manifest(_signed(), [signer])
    out = mft.verify_manifest(data, _root(pub), source="m.json")
    assert out["disk"] == {"file": "disk.img", "length": 10, "sha256": "ab" * 32}


def test_rejects_manifest_signed_by_a_key_outside_the_trust_root() -> None:
    signer, _ = _signer()
    _, trusted = _signer()
    data = mft.sign_manifest(_signed(), [signer])
    with pytest.raises(SignatureError, match="threshold 1"):
        mft.verify_manifest(data, _root(trusted), source="m.json")


def test_rejects_manifest_whose_digest_was_swapped_after_signing() -> None:
    signer, pub = _signer()
    doc = json.loads(mft.sign_manifest(_signed(), [signer]))
    doc["signed"]["disk"]["sha256"] = "cd" * 32
    with pytest.raises(SignatureError):
        mft.verify_manifest(json.dumps(doc).encode(), _root(pub), source="m.json")


def test_rejects_duplicate_signatures_counted_twice() -> None:
    signer, pub = _signer()
    root = Metadata[Root].from_bytes(_root(pub))
    root.signed.roles["targets"].threshold = 2
    doc = json.loads(mft.sign_manifest(_signed(), [signer]))
    doc["signatures"] = doc["signatures"] * 2
    with pytest.raises(SignatureError, match="1 valid"):
        mft.verify_manifest(json.dumps(doc).encode(), root.to_bytes(), source="m.json")


@pytest.mark.parametrize("data", [b"", b"[]", b'{"signed": 1, "signatures": []}', b"\xff"])
def test_malformed_manifest_is_a_verification_error(data: bytes) -> None:
    _, pub = _signer()
    with pytest.raises(VerificationError, match=r"m\.json"):
        mft.verify_manifest(data, _root(pub), source="m.json")

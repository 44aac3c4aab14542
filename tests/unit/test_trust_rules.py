"""The pure trusted set (edgeagent.verify.trust): one test per TUF client rule.

Metadata comes from the repository simulator (tests/fakes/tufrepo.py); the trusted set is fed the
bytes and a `now`, with no network, files or clock involved.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from edgeagent.errors import (
    DigestMismatchError,
    ExpiredError,
    RollbackError,
    SignatureError,
    VerificationError,
)
from edgeagent.verify.trust import TrustedSet
from tests.fakes.tufrepo import TufRepo, in_days

NOW = datetime.now(UTC)


@pytest.fixture
def repo(tmp_path: Path) -> TufRepo:
    r = TufRepo(tmp_path / "repo")
    r.add_target("app", b"app bytes")
    r.publish()
    return r


def full_set(repo: TufRepo, now: datetime = NOW) -> TrustedSet:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    for v in range(2, repo.root.signed.version + 1):
        ts.update_root(repo.metadata_bytes(f"{v}.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), now)
    ts.update_snapshot(repo.metadata_bytes(f"{repo.snapshot.signed.version}.snapshot.json"), now)
    ts.update_targets(repo.metadata_bytes(f"{repo.targets.signed.version}.targets.json"), now)
    return ts


def test_accepts_a_consistent_repository(repo: TufRepo) -> None:
    ts = full_set(repo)
    assert ts.targets is not None
    assert "app" in ts.targets.targets


def test_rejects_untrusted_key_on_timestamp(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    repo.sign("timestamp", repo.timestamp, [CryptoSigner.generate_ed25519()])
    bad = repo.timestamp.to_bytes()
    with pytest.raises(SignatureError, match=r"timestamp: signature threshold not met: 0 of 1"):
        ts.update_timestamp(bad, NOW)


def test_rejects_below_threshold_root(tmp_path: Path) -> None:
    repo = TufRepo(tmp_path / "r", root_threshold=2, root_keys=2)
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    repo.root.signed.version += 1
    data = repo.write_root(repo.signers["root"][:1])
    with pytest.raises(SignatureError, match=r"root: signature threshold not met: 1 of 2"):
        ts.update_root(data)


def test_rejects_root_chain_bad_link_new_keys_only(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    repo.replace_keys("root")
    data = repo.new_root_version()  # Signed by the new key only: no link to v1.
    with pytest.raises(SignatureError, match=r"root: .*trusted root v1"):
        ts.update_root(data)


def test_accepts_root_rotation_signed_by_old_and_new(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    old = list(repo.signers["root"])
    repo.replace_keys("root")
    data = repo.new_root_version(extra_signers=old)
    assert ts.update_root(data).version == 2


def test_rejects_root_chain_skipped_version(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    repo.root.signed.version += 2
    data = repo.write_root()
    with pytest.raises(VerificationError, match=r"root: bad root chain link: expected v2, got v3"):
        ts.update_root(data)


def test_rejects_root_rollback(repo: TufRepo) -> None:
    v1 = repo.metadata_bytes("1.root.json")
    repo.new_root_version()
    ts = TrustedSet(repo.metadata_bytes("2.root.json"))
    with pytest.raises(RollbackError, match=r"root: version rollback: got v1"):
        ts.update_root(v1)


def test_rejects_metadata_rollback_of_timestamp(repo: TufRepo) -> None:
    old = repo.metadata_bytes("timestamp.json")
    repo.publish()
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    with pytest.raises(RollbackError, match=r"timestamp: version rollback: got v2, trusted is v3"):
        ts.update_timestamp(old, NOW)


def test_rejects_rollback_of_snapshot_listed_by_timestamp(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    repo.timestamp.signed.version += 1
    repo.timestamp.signed.snapshot_meta.version = 1
    repo.sign("timestamp", repo.timestamp)
    with pytest.raises(RollbackError, match=r"timestamp: snapshot version rollback"):
        ts.update_timestamp(repo.timestamp.to_bytes(), NOW)


def test_rejects_freeze_expired_timestamp(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    later = NOW + timedelta(days=2)
    with pytest.raises(ExpiredError, match=r"timestamp: expired: version 2 expired at"):
        ts.update_timestamp(repo.metadata_bytes("timestamp.json"), later)


def test_rejects_expired_root_before_timestamp(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    with pytest.raises(ExpiredError, match=r"root \(v1\): expired"):
        ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW + timedelta(days=400))


def test_rejects_expired_snapshot(repo: TufRepo) -> None:
    repo.publish(expires={"snapshot": in_days(-1)})
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    with pytest.raises(ExpiredError, match=r"snapshot: expired"):
        ts.update_snapshot(repo.metadata_bytes("3.snapshot.json"), NOW)


def test_rejects_snapshot_not_matching_timestamp_hash(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    data = repo.metadata_bytes("2.snapshot.json") + b" "
    with pytest.raises(DigestMismatchError, match=r"snapshot: length or hash does not match"):
        ts.update_snapshot(data, NOW)


def test_rejects_mix_and_match_targets_version(repo: TufRepo) -> None:
    old_targets = repo.metadata_bytes("2.targets.json")
    repo.publish()
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    ts.update_snapshot(repo.metadata_bytes("3.snapshot.json"), NOW)
    with pytest.raises(RollbackError, match=r"targets: version rollback \(mix-and-match\?\)"):
        ts.update_targets(old_targets, NOW)


def test_rejects_snapshot_dropping_a_role(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    ts.update_snapshot(repo.metadata_bytes("2.snapshot.json"), NOW)
    del repo.snapshot.signed.meta["targets.json"]
    repo.snapshot.signed.version += 1
    repo.sign("snapshot", repo.snapshot)
    data = repo.snapshot.to_bytes()
    ts2 = TrustedSet(repo.metadata_bytes("1.root.json"))
    ts2.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    ts2.update_snapshot(repo.metadata_bytes("2.snapshot.json"), NOW, local=True)
    with pytest.raises(RollbackError, match=r"snapshot: targets.json is missing"):
        ts2.update_snapshot(data, NOW, local=True)


def test_rejects_wrong_metadata_type(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    with pytest.raises(VerificationError, match=r"timestamp: wrong metadata type"):
        ts.update_timestamp(repo.metadata_bytes("2.snapshot.json"), NOW)


def test_rejects_malformed_json(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    with pytest.raises(VerificationError, match=r"timestamp: malformed metadata"):
        ts.update_timestamp(b"{not json", NOW)


def test_rejects_valid_json_missing_fields(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    doc = json.loads(repo.metadata_bytes("timestamp.json"))
    del doc["signed"]["meta"]
    with pytest.raises(VerificationError, match=r"timestamp: malformed metadata"):
        ts.update_timestamp(json.dumps(doc).encode(), NOW)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_rejects_truncated_json(repo: TufRepo, cut: int) -> None:
    data = repo.metadata_bytes("timestamp.json")
    cut = cut % len(data)
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    with pytest.raises(VerificationError, match=r"timestamp: "):
        ts.update_timestamp(data[:cut], NOW)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_trusted_set(repo: TufRepo, junk: bytes) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    with pytest.raises(VerificationError):
        ts.update_root(junk)


def test_out_of_order_use_is_a_programming_error(repo: TufRepo) -> None:
    ts = TrustedSet(repo.metadata_bytes("1.root.json"))
    with pytest.raises(RuntimeError, match="before update_timestamp"):
        ts.update_snapshot(repo.metadata_bytes("2.snapshot.json"), NOW)
    ts.update_timestamp(repo.metadata_bytes("timestamp.json"), NOW)
    with pytest.raises(RuntimeError, match="root chain must come first"):
        ts.update_root(repo.metadata_bytes("1.root.json"))
    with pytest.raises(RuntimeError, match="before update_snapshot"):
        ts.update_targets(repo.metadata_bytes("2.targets.json"), NOW)


def test_delegated_role_verified_by_delegator_keys(repo: TufRepo) -> None:
    repo.add_delegation("fleet", ["fleet-*"])
    repo.add_target("fleet-a", b"a", role="fleet")
    repo.publish()
    ts = full_set(repo)
    fleet = ts.update_delegated_targets(
        repo.metadata_bytes("1.fleet.json"), "fleet", "targets", NOW
    )
    assert "fleet-a" in fleet.targets


def test_rejects_delegated_role_signed_by_untrusted_key(repo: TufRepo) -> None:
    repo.add_delegation("fleet", ["fleet-*"])
    repo.publish()
    ts = full_set(repo)
    repo.sign("fleet", repo.delegated["fleet"], [CryptoSigner.generate_ed25519()])
    bad = repo.delegated["fleet"].to_bytes()
    with pytest.raises((SignatureError, DigestMismatchError), match=r"fleet: "):
        ts.update_delegated_targets(bad, "fleet", "targets", NOW)


def test_rejects_untrusted_root_as_initial_trust(repo: TufRepo) -> None:
    repo.sign("root", repo.root, [CryptoSigner.generate_ed25519()])
    with pytest.raises(SignatureError, match=r"root: signature threshold not met"):
        TrustedSet(repo.root.to_bytes())

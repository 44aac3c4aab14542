"""Every "Bad input" attack of issue 2 against ``edgeagent pull`` and a real server on 127.0.0.1.

Each test is named after the attack and asserts: a clear error naming the role or target and the
check that failed, a failure (exception in-process or non-zero exit as a subprocess), and that
nothing unverified is usable in the store (no blob; trust failures leave no partial either).
The repository is the simulator in tests/fakes/tufrepo.py, served by tests/fakes/evil_server.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from edgeagent.commands.pull import pull
from edgeagent.errors import (
    DigestMismatchError,
    ExpiredError,
    RollbackError,
    SignatureError,
    TooLargeError,
    VerificationError,
)
from edgeagent.registry.fetch import FetchConfig
from edgeagent.store.cas import Store
from tests.fakes.pullkit import APP, Served, served_repo

FAST = FetchConfig(
    connect_timeout_s=5,
    read_timeout_s=5,
    metadata_timeout_s=20,
    min_throughput_bps=20_000,
    throughput_grace_s=0.3,
    retries=2,
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
)


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Served]:
    with served_repo(tmp_path) as served:
        yield served


async def do_pull(s: Served, name: str = "app") -> Path:
    with Store.open(s.store) as store, trio.fail_after(60):
        return await pull(s.server.url, s.trust.read_bytes(), store, name, FAST)


def assert_nothing_usable(s: Served, *, partial_ok: bool = False) -> None:
    assert s.blobs() == [], "an unverified blob is usable in the store"
    if not partial_ok:
        assert s.partials() == [], "an unverified partial was left behind"


async def test_pull_happy_path_returns_verified_blob(s: Served) -> None:
    path = await do_pull(s)
    assert path.read_bytes() == APP
    assert path.name == hashlib.sha256(APP).hexdigest()


async def test_rejects_tampered_target(s: Served) -> None:
    blob = s.repo.base / s.target_url_path("app").lstrip("/")
    blob.write_bytes(b"X" * len(APP))  # Same length, different bytes.
    with pytest.raises(DigestMismatchError, match=r"target app: sha256 check failed"):
        await do_pull(s)
    assert_nothing_usable(s)


def test_rejects_tampered_target_cli_exit_status(s: Served) -> None:
    blob = s.repo.base / s.target_url_path("app").lstrip("/")
    blob.write_bytes(b"X" * len(APP))
    proc = s.pull_cli("app")
    assert proc.returncode == 1
    assert "target app: sha256 check failed" in proc.stderr
    assert proc.stdout == ""
    assert_nothing_usable(s)


def test_rejects_untrusted_key(s: Served) -> None:
    # targets re-signed by a key root does not list.
    s.repo.signers["targets"] = [CryptoSigner.generate_ed25519()]
    s.repo.publish(("targets",))
    proc = s.pull_cli("app")
    assert proc.returncode == 1
    assert "targets: signature threshold not met: 0 of 1" in proc.stderr
    assert_nothing_usable(s)


async def test_rejects_below_threshold(tmp_path: Path) -> None:
    with served_repo(tmp_path, root_threshold=2, root_keys=2) as s:
        s.repo.root.signed.version += 1
        s.repo.write_root(s.repo.signers["root"][:1])  # 1 of 2 signatures.
        with pytest.raises(SignatureError, match=r"root: signature threshold not met: 1 of 2"):
            await do_pull(s)
        assert_nothing_usable(s)


async def test_rejects_metadata_rollback(s: Served) -> None:
    await do_pull(s)  # The device now trusts timestamp v2.
    old_ts = s.repo.metadata_bytes("timestamp.json")
    s.repo.publish()  # v3 ...
    await do_pull(s)  # ... which the device sees.
    s.server.behaviour.override["/metadata/timestamp.json"] = old_ts  # Replay v2.
    with pytest.raises(RollbackError, match=r"timestamp: version rollback: got v2, trusted is v3"):
        await do_pull(s)


async def test_rejects_freeze_expired_timestamp(s: Served) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    s.repo.publish(expires={"timestamp": past})
    with pytest.raises(ExpiredError, match=r"timestamp: expired: version 3 expired at"):
        await do_pull(s)
    assert_nothing_usable(s)


async def test_rejects_freeze_stale_timestamp_after_trusted_one_expired(s: Served) -> None:
    # The device saw a fresh timestamp; later the server freezes on one that has expired.
    await do_pull(s)
    past = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    s.repo.publish(expires={"timestamp": past})
    with pytest.raises(ExpiredError, match=r"timestamp: expired"):
        await do_pull(s)


async def test_rejects_mix_and_match(s: Served) -> None:
    s.repo.add_target("app", APP + b"v2")
    s.repo.publish()  # targets v3, snapshot v3.
    # Serve the old targets (v2) where snapshot v3 says v3 must be.
    s.server.behaviour.override["/metadata/3.targets.json"] = s.repo.metadata_bytes(
        "2.targets.json"
    )
    with pytest.raises(RollbackError, match=r"targets: version rollback \(mix-and-match\?\)"):
        await do_pull(s)
    assert_nothing_usable(s)


async def test_rejects_snapshot_not_matching_timestamp(s: Served) -> None:
    s.server.behaviour.override["/metadata/2.snapshot.json"] = s.repo.metadata_bytes(
        "1.snapshot.json"
    )
    with pytest.raises(DigestMismatchError, match=r"snapshot: length or hash does not match"):
        await do_pull(s)


async def test_endless_data_stops_at_signed_length(s: Served) -> None:
    # The attacker streams junk without end; the client takes at most the signed length.
    path = s.target_url_path("app")
    s.server.behaviour.override[path] = b""
    s.server.behaviour.endless.add(path)
    with pytest.raises((TooLargeError, DigestMismatchError)) as err:
        await do_pull(s)
    assert str(err.value).startswith("target app: ")
    assert "signed length of 90112 bytes" in str(err.value) or "sha256 check" in str(err.value)
    assert_nothing_usable(s)


async def test_endless_data_after_the_right_bytes_yields_only_the_signed_bytes(
    s: Served,
) -> None:
    s.server.behaviour.endless.add(s.target_url_path("app"))
    error: TooLargeError | None = None
    try:
        path = await do_pull(s)
    except TooLargeError as exc:
        error = exc
    if error is not None:
        assert "more than the signed length" in str(error)
        assert_nothing_usable(s)
    else:
        assert path.read_bytes() == APP


async def test_endless_metadata_is_capped(s: Served) -> None:
    s.server.behaviour.endless.add("/metadata/timestamp.json")
    with pytest.raises(TooLargeError, match=r"timestamp.json: body exceeds the cap of 16384"):
        await do_pull(s)


def test_slow_retrieval_aborts(s: Served) -> None:
    s.server.behaviour.trickle.add(s.target_url_path("app"))
    proc = s.pull_cli("app", "--min-throughput", "20000", "--throughput-grace", "0.3")
    assert proc.returncode == 1
    assert "slow retrieval" in proc.stderr
    assert s.target_url_path("app") in proc.stderr
    assert s.blobs() == []


async def test_rejects_malformed_json(s: Served) -> None:
    s.server.behaviour.override["/metadata/timestamp.json"] = b'{"signed": [1, 2'
    with pytest.raises(VerificationError, match=r"timestamp: malformed metadata"):
        await do_pull(s)


def test_rejects_truncated_json(s: Served) -> None:
    data = s.repo.metadata_bytes("timestamp.json")
    s.server.behaviour.override["/metadata/timestamp.json"] = data[: len(data) // 2]
    proc = s.pull_cli("app")
    assert proc.returncode == 1
    assert "timestamp: malformed metadata" in proc.stderr
    assert_nothing_usable(s)


async def test_rejects_root_chain_bad_link(s: Served) -> None:
    s.repo.replace_keys("root")
    s.repo.new_root_version()  # v2 signed only by the new key: no link to v1.
    with pytest.raises(SignatureError, match=r"root: signature threshold not met.*trusted root v1"):
        await do_pull(s)
    assert_nothing_usable(s)


async def test_follows_a_good_root_rotation(s: Served) -> None:
    old = list(s.repo.signers["root"])
    s.repo.replace_keys("root")
    s.repo.new_root_version(extra_signers=old)
    path = await do_pull(s)
    assert path.read_bytes() == APP
    assert b'"version": 2' in (s.store / "metadata" / "root.json").read_bytes()


def test_rejects_target_name_with_path_separator(s: Served) -> None:
    proc = s.pull_cli("../../etc/passwd")
    assert proc.returncode == 2
    assert "path separator" in proc.stderr
    assert s.server.requests == []  # Rejected before any network use.


async def test_rejects_unknown_target(s: Served) -> None:
    with pytest.raises(VerificationError, match=r"target nope: not listed"):
        await do_pull(s, "nope")


async def test_store_scan_removes_garbage(s: Served) -> None:
    digest = hashlib.sha256(APP).hexdigest()
    blobs = s.store / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (s.store / "tmp").mkdir()
    (blobs / "garbage").write_bytes(b"junk")
    (blobs / ("0" * 64)).mkdir()
    (blobs / digest).write_bytes(b"Y" * len(APP))  # Right name, wrong bytes.
    (s.store / "tmp" / "leftover.tmp").write_bytes(b"x")
    path = await do_pull(s)
    assert path.read_bytes() == APP
    assert s.blobs() == [digest]
    assert s.partials() == []


def test_store_with_garbage_index_fails_clearly(s: Served) -> None:
    s.store.mkdir()
    (s.store / "index.json").write_bytes(b"\x00\xff not json")
    proc = s.pull_cli("app")
    assert proc.returncode == 1
    assert "index.json: not valid JSON" in proc.stderr

"""The publisher's Repository on a real folder, checked with python-tuf's own verification."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata

from edgeagent.cli import main
from edgeagent.errors import ConfigError, SigningKeyError
from edgeagent.publisher import keys as keystore
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def md(repo: Path, name: str) -> Metadata:  # type: ignore[type-arg]
    return Metadata.from_file(str(repo / "metadata" / name))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    f = tmp_path / "image.hvt"
    f.write_bytes(b"\x00unikernel" * 300_000)  # 3 MB: more than one copy chunk
    return f


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", root_threshold=2, root_keys=3, now=NOW)


def verify_chain(path: Path) -> None:
    """Every root version N+1 is signed by a threshold of root N and of itself."""
    n = 1
    trusted = md(path, "1.root.json")
    trusted.signed.verify_delegate("root", trusted.signed_bytes, trusted.signatures)
    while (path / "metadata" / f"{n + 1}.root.json").exists():
        new = md(path, f"{n + 1}.root.json")
        trusted.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        trusted, n = new, n + 1


def verify_top_level(path: Path) -> None:
    repo = Repository.open(path)
    root = repo.root.signed
    root.verify_delegate("timestamp", repo.timestamp.signed_bytes, repo.timestamp.signatures)
    root.verify_delegate("snapshot", repo.snapshot.signed_bytes, repo.snapshot.signatures)
    root.verify_delegate("targets", repo.targets.signed_bytes, repo.targets.signatures)
    for name, m in repo.delegated.items():
        repo.targets.signed.verify_delegate(name, m.signed_bytes, m.signatures)


def test_init_writes_layout_keys_and_policy(repo: Repository) -> None:
    d = repo.path
    names = sorted(p.name for p in (d / "metadata").iterdir())
    assert names == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    assert repo.root_path == d / "metadata" / "1.root.json"
    root = md(d, "1.root.json").signed
    assert root.consistent_snapshot is True
    assert root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    assert all(len(root.roles[r].keyids) == 1 for r in ("targets", "snapshot", "timestamp"))
    assert root.expires == NOW + timedelta(days=365)
    key_files = list((d / "keys").glob("*.key"))
    assert len(key_files) == 6
    for f in key_files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert f.read_text().startswith("# edgeagent DEMO/TEST signing key")
    assert (d / "keys" / "policy.toml").is_file()
    verify_chain(d)
    verify_top_level(d)


def test_init_refuses_existing_repository(repo: Repository) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        Repository.init(repo.path)


def test_add_target_is_content_addressed_with_custom_fields(repo: Repository, image: Path) -> None:
    custom = target_custom(version="1.2.3", mem_mb=32, args=["--x"], groups=["lab"])
    tf = repo.add_target(image, "hello.hvt", custom, now=NOW)
    data = image.read_bytes()
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    assert tf.length == len(data)
    assert tf.hashes == {"sha256": sha}
    blob = repo.targets_dir / f"{sha}.hello.hvt"
    assert blob.read_bytes() == data
    assert not [p for p in repo.targets_dir.iterdir() if p.name.startswith(".")]
    targets = md(repo.path, "2.targets.json")
    assert targets.signed.targets["hello.hvt"].custom == custom
    ts = md(repo.path, "timestamp.json").signed
    assert ts.version == 2
    assert ts.snapshot_meta.version == 2
    snap_bytes = (repo.path / "metadata" / "2.snapshot.json").read_bytes()
    assert ts.snapshot_meta.length == len(snap_bytes)
    assert ts.snapshot_meta.hashes["sha256"] == hashlib.sha256(snap_bytes).hexdigest()
    assert md(repo.path, "2.snapshot.json").signed.meta["targets.json"].version == 2
    verify_top_level(repo.path)


def test_add_target_replaces_same_name_and_keeps_old_blob(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    repo.add_target(image, "app", target_custom(version="1"), now=NOW)
    v2 = tmp_path / "v2"
    v2.write_bytes(b"second")
    tf = repo.add_target(v2, "app", target_custom(version="2"), now=NOW)
    assert Repository.open(repo.path).targets.signed.targets["app"] == tf
    assert len(list(repo.targets_dir.glob("*.app"))) == 2


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x..y"])
def test_rejects_target_name_with_path_traversal(repo: Repository, image: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="target name"):
        repo.add_target(image, name, target_custom(version="1"))
    assert not list(repo.targets_dir.iterdir())


def test_missing_target_file_is_named_in_the_error(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.bin: cannot read target file"):
        repo.add_target(tmp_path / "nope.bin", "x", target_custom(version="1"))
    assert not list(repo.targets_dir.iterdir())


def test_root_rotation_signed_by_old_and_new_threshold(repo: Repository) -> None:
    old_root = md(repo.path, "1.root.json")
    old_ids = set(old_root.signed.roles["root"].keyids)
    repo.rotate_key("root", now=NOW)
    new = md(repo.path, "2.root.json")
    new_ids = set(new.signed.roles["root"].keyids)
    assert len(new_ids) == 3
    assert not new_ids & old_ids
    assert set(new.signatures) == old_ids | new_ids
    verify_chain(repo.path)
    verify_top_level(repo.path)
    for keyid in old_ids:  # Retired keys are gone from the keys folder.
        assert not keystore.key_path(repo.keys_dir, keyid).exists()
    assert (repo.path / "metadata" / "root.json").read_bytes() == (
        repo.path / "metadata" / "2.root.json"
    ).read_bytes()


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_role_rotation_resigns_root_and_role_with_new_key(repo: Repository, role: str) -> None:
    old = set(repo.root.signed.roles[role].keyids)
    repo.rotate_key(role, now=NOW)
    fresh = Repository.open(repo.path)
    assert fresh.root.signed.version == 2
    assert set(fresh.root.signed.roles[role].keyids).isdisjoint(old)
    role_md: dict[str, Metadata[Any]] = {
        "targets": fresh.targets,
        "snapshot": fresh.snapshot,
        "timestamp": fresh.timestamp,
    }
    assert set(role_md[role].signatures) == set(fresh.root.signed.roles[role].keyids)
    verify_chain(repo.path)
    verify_top_level(repo.path)
    # The old root still verifies the new one (chain), but the old key no longer verifies role.
    old_root = md(repo.path, "1.root.json").signed
    with pytest.raises(UnsignedMetadataError):
        old_root.verify_delegate(role, role_md[role].signed_bytes, role_md[role].signatures)


def test_rotation_refused_when_offline_root_keys_are_missing(repo: Repository) -> None:
    for keyid in repo.root.signed.roles["root"].keyids[:2]:
        keystore.key_path(repo.keys_dir, keyid).rename(repo.path / f"offline-{keyid}")
    before = sorted(p.name for p in (repo.path / "metadata").iterdir())
    with pytest.raises(SigningKeyError, match="role 'root': 1 of threshold 2"):
        Repository.open(repo.path).rotate_key("targets", now=NOW)
    assert sorted(p.name for p in (repo.path / "metadata").iterdir()) == before


def test_refresh_bumps_timestamp_and_snapshot_only_when_needed(repo: Repository) -> None:
    assert repo.refresh(now=NOW) is False
    ts = md(repo.path, "timestamp.json").signed
    assert (ts.version, ts.snapshot_meta.version) == (2, 1)
    assert ts.expires == NOW + timedelta(days=1)
    later = NOW + timedelta(days=5)  # Snapshot (7 days) has 2 days left: re-sign it.
    assert repo.refresh(now=later) is True
    ts = md(repo.path, "timestamp.json").signed
    assert (ts.version, ts.snapshot_meta.version) == (3, 2)
    assert md(repo.path, "2.snapshot.json").signed.expires == later + timedelta(days=7)
    assert repo.refresh(snapshot=True, now=later) is True
    verify_top_level(repo.path)


def test_past_now_produces_expired_metadata_for_freeze_tests(tmp_path: Path) -> None:
    past = datetime(2001, 1, 1, tzinfo=UTC)
    r = Repository.init(tmp_path / "r", now=past)
    assert r.timestamp.signed.is_expired(datetime.now(UTC))
    assert md(r.path, "timestamp.json").signed.expires == past + timedelta(days=1)


def test_delegation_and_delegated_target(repo: Repository, image: Path) -> None:
    repo.add_delegation("fleet", ["fleet-*"], terminating=True, threshold=2, now=NOW)
    tf = repo.add_delegated_target("fleet", image, "fleet-app", target_custom(version="7"))
    fresh = Repository.open(repo.path)
    delegations = fresh.targets.signed.delegations
    assert delegations is not None
    assert delegations.roles is not None
    role = delegations.roles["fleet"]
    assert (role.threshold, role.terminating, role.paths) == (2, True, ["fleet-*"])
    assert fresh.delegated["fleet"].signed.targets["fleet-app"] == tf
    assert fresh.delegated["fleet"].signed.version == 2
    assert fresh.snapshot.signed.meta["fleet.json"].version == 2
    assert (repo.path / "metadata" / "2.fleet.json").is_file()
    verify_top_level(repo.path)
    fresh.rotate_key("fleet", now=NOW)
    verify_top_level(repo.path)
    assert Repository.open(repo.path).delegated["fleet"].signed.version == 3


def test_delegated_target_outside_role_paths_is_rejected(repo: Repository, image: Path) -> None:
    repo.add_delegation("fleet", ["fleet-*"], now=NOW)
    with pytest.raises(ConfigError, match="not within the paths"):
        repo.add_delegated_target("fleet", image, "other", target_custom(version="1"))
    with pytest.raises(ConfigError, match="does not exist"):
        repo.add_delegated_target("nope", image, "fleet-x", target_custom(version="1"))
    with pytest.raises(ConfigError, match="already exists"):
        repo.add_delegation("fleet", ["x"])
    with pytest.raises(ConfigError, match="clashes"):
        repo.add_delegation("snapshot", ["x"])


def test_stale_handle_reloads_instead_of_overwriting_newer_metadata(
    repo: Repository, image: Path
) -> None:
    other = Repository.open(repo.path)
    repo.add_target(image, "a", target_custom(version="1"), now=NOW)
    other.refresh(now=NOW)  # Opened before the add: must not publish a targets-less snapshot.
    fresh = Repository.open(repo.path)
    assert "a" in fresh.targets.signed.targets
    assert fresh.timestamp.signed.version == 3


def test_corrupt_policy_is_reported_with_file_and_field(repo: Repository) -> None:
    policy = repo.keys_dir / "policy.toml"
    policy.write_text(policy.read_text().replace("expires_days = 1\n", "expires_days = -1\n"))
    with pytest.raises(ConfigError, match=r"policy.toml: field 'timestamp.expires_days'"):
        Repository.open(repo.path)


def test_key_file_with_wrong_key_is_rejected(repo: Repository) -> None:
    ids = repo.root.signed.roles["timestamp"].keyids
    victim = keystore.key_path(repo.keys_dir, ids[0])
    other = next(p for p in repo.keys_dir.glob("*.key") if p != victim)
    victim.write_bytes(other.read_bytes())
    with pytest.raises(ConfigError, match="file name says key id"):
        Repository.open(repo.path).refresh()


def test_cli_repo_commands_end_to_end(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "cli-repo"
    assert main(["repo", "init", str(d), "--expires-days", "timestamp=2"]) == 0
    assert capsys.readouterr().out.strip() == str(d / "metadata" / "1.root.json")
    args = ["--kind", "qemu", "--mem", "128", "--arg", "a1", "--block", "disk0"]
    args += ["--net", "net0", "--group", "g1", "--device", "dev-7"]
    assert main(["repo", "add", str(d), str(image), "--name", "img", "--version", "3", *args]) == 0
    assert capsys.readouterr().out.startswith("img 3000000 sha256:")
    custom = json.loads((d / "metadata" / "2.targets.json").read_text())["signed"]["targets"]
    assert custom["img"]["custom"]["edgeagent"] == {
        "version": "3",
        "kind": "qemu",
        "mem_mb": 128,
        "args": ["a1"],
        "devices": {"block": ["disk0"], "net": ["net0"]},
        "groups": ["g1"],
        "device_ids": ["dev-7"],
    }
    assert main(["repo", "rotate-key", str(d), "timestamp"]) == 0
    assert main(["repo", "refresh", str(d), "--snapshot"]) == 0
    capsys.readouterr()
    assert main(["repo", "list", str(d)]) == 0
    out = capsys.readouterr().out
    assert "role root         v2" in out
    assert "target img" in out
    assert main(["repo", "add", str(d), str(image), "--name", "../x", "--version", "1"]) == 2
    assert "target name '../x'" in capsys.readouterr().err
    assert main(["repo", "rotate-key", str(d), "mirror"]) == 2
    assert main(["repo", "serve", str(tmp_path / "nothing")]) == 2
    assert main(["repo", "serve", str(d), "--listen", "nohost"]) == 2


def test_keys_dir_outside_repository_keeps_keys_out_of_served_tree(
    tmp_path: Path, image: Path
) -> None:
    keys = tmp_path / "offline-keys"
    Repository.init(tmp_path / "r", keys_dir=keys, now=NOW)
    assert not (tmp_path / "r" / "keys").exists()
    assert len(list(keys.glob("*.key"))) == 4
    r2 = Repository.open(tmp_path / "r", keys_dir=keys)
    r2.add_target(image, "x", target_custom(version="1"), now=NOW)
    with pytest.raises(SigningKeyError, match="missing key files"):
        Repository.open(tmp_path / "r").add_target(image, "y", target_custom(version="1"))


def test_corrupt_metadata_file_is_named_in_the_error(repo: Repository) -> None:
    (repo.path / "metadata" / "1.snapshot.json").write_text('{"signed": ')
    with pytest.raises(ConfigError, match=r"1\.snapshot\.json: cannot read snapshot metadata"):
        Repository.open(repo.path)


def test_published_versions_are_never_rewritten(repo: Repository, image: Path) -> None:
    before = {p.name: p.read_bytes() for p in (repo.path / "metadata").glob("[0-9]*.json")}
    repo.add_target(image, "a", target_custom(version="1"), now=NOW)
    repo.rotate_key("snapshot", now=NOW)
    repo.refresh(snapshot=True, now=NOW)
    after = {p.name: p.read_bytes() for p in (repo.path / "metadata").glob("[0-9]*.json")}
    assert {k: after[k] for k in before} == before


def test_missing_online_key_changes_nothing_and_retry_succeeds(
    repo: Repository, image: Path
) -> None:
    (snap_id,) = repo.root.signed.roles["snapshot"].keyids
    key = keystore.key_path(repo.keys_dir, snap_id)
    key.rename(repo.path / "away.key")
    before = {p.name: p.read_bytes() for p in (repo.path / "metadata").iterdir()}
    with pytest.raises(SigningKeyError, match="role 'snapshot'"):
        Repository.open(repo.path).add_target(image, "a", target_custom(version="1"), now=NOW)
    assert {p.name: p.read_bytes() for p in (repo.path / "metadata").iterdir()} == before
    (repo.path / "away.key").rename(key)
    Repository.open(repo.path).add_target(image, "a", target_custom(version="1"), now=NOW)
    verify_top_level(repo.path)


def test_leftover_of_interrupted_publish_is_replaced(repo: Repository, image: Path) -> None:
    (repo.path / "metadata" / "2.targets.json").write_text("{half written")
    repo.add_target(image, "a", target_custom(version="1"), now=NOW)
    assert "a" in md(repo.path, "2.targets.json").signed.targets
    verify_top_level(repo.path)


def test_repo_serve_on_busy_port_fails_with_clear_error(
    repo: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["repo", "serve", str(repo.path), "--listen", f"127.0.0.1:{port}"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

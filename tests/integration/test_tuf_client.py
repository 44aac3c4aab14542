"""``edgeagent tuf-client``: the tuf-conformance client-under-test CLI, as subprocesses, against
simulator repositories with delegations, key rotations and expiry on a real 127.0.0.1 server.

(faketime is not installed on these machines; expiry is exercised through metadata that has
already expired instead of shifting the client's clock.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.evil_server import EvilServer, serve
from tests.fakes.pullkit import CLI, run_cli
from tests.fakes.tufrepo import TufRepo


@dataclass
class Client:
    repo: TufRepo
    server: EvilServer
    md: Path
    tg: Path

    def init(self, root: bytes | None = None) -> int:
        trusted = self.md.parent / "initial_root.json"
        trusted.write_bytes(root or self.repo.metadata_bytes("1.root.json"))
        return run_cli("tuf-client", "--metadata-dir", self.md, "init", trusted).returncode

    def refresh(self) -> int:
        proc = run_cli(
            "tuf-client",
            "--metadata-url",
            self.server.url + "metadata",
            "--metadata-dir",
            self.md,
            "refresh",
        )
        return proc.returncode

    def download(self, *names: str) -> int:
        args: list[str | Path] = [
            "tuf-client",
            "--metadata-url",
            self.server.url + "metadata",
            "--metadata-dir",
            self.md,
        ]
        for n in names:
            args += ["--target-name", n]
        args += [
            "--target-dir",
            self.tg,
            "--target-base-url",
            self.server.url + "targets",
            "download",
        ]
        return run_cli(*args).returncode

    def trusted(self, role: str) -> bytes:
        return (self.md / f"{role}.json").read_bytes()

    def json_files(self) -> list[str]:
        return sorted(p.name for p in self.md.iterdir() if p.name.endswith(".json"))

    def target_files(self) -> list[Path]:
        return sorted(p for p in self.tg.rglob("*") if p.is_file())


@pytest.fixture
def c(tmp_path: Path) -> Iterator[Client]:
    repo = TufRepo(tmp_path / "repo")
    repo.add_target("file.txt", b"hello\n")
    repo.publish()
    (tmp_path / "md").mkdir()
    (tmp_path / "tg").mkdir()
    with serve(repo.base) as server:
        yield Client(repo, server, tmp_path / "md", tmp_path / "tg")


def test_init_makes_no_requests_and_stores_root(c: Client) -> None:
    assert c.init() == 0
    assert c.json_files() == ["root.json"]
    assert c.server.requests == []


def test_refresh_follows_spec_order_and_stores_exact_bytes(c: Client) -> None:
    assert c.init() == 0
    assert c.refresh() == 0
    assert [r[1] for r in c.server.requests] == [
        "/metadata/2.root.json",
        "/metadata/timestamp.json",
        "/metadata/2.snapshot.json",
        "/metadata/2.targets.json",
    ]
    assert c.json_files() == ["root.json", "snapshot.json", "targets.json", "timestamp.json"]
    assert c.trusted("timestamp") == c.repo.metadata_bytes("timestamp.json")
    assert c.trusted("snapshot") == c.repo.metadata_bytes("2.snapshot.json")
    assert c.trusted("targets") == c.repo.metadata_bytes("2.targets.json")


def test_second_refresh_with_nothing_new_fetches_only_root_and_timestamp(c: Client) -> None:
    assert c.init() == 0
    assert c.refresh() == 0
    n = len(c.server.requests)
    assert c.refresh() == 0
    assert [r[1] for r in c.server.requests[n:]] == [
        "/metadata/2.root.json",
        "/metadata/timestamp.json",
    ]


def test_download_uses_hash_prefixed_url_and_caches(c: Client) -> None:
    assert c.init() == 0
    assert c.download("file.txt") == 0
    files = c.target_files()
    assert [f.read_bytes() for f in files] == [b"hello\n"]
    sha = c.repo.targets.signed.targets["file.txt"].hashes["sha256"]
    assert ("GET", f"/targets/{sha}.file.txt", None) in c.server.requests
    n = len(c.server.requests)
    assert c.download("file.txt") == 0
    assert not any(r[1].startswith("/targets/") for r in c.server.requests[n:])
    # New content for the same path lands under the same file name.
    c.repo.add_target("file.txt", b"hello again\n")
    c.repo.publish()
    assert c.download("file.txt") == 0
    assert c.target_files() == files
    assert files[0].read_bytes() == b"hello again\n"


def test_download_of_tampered_target_fails_and_leaves_target_dir_empty(c: Client) -> None:
    sha = c.repo.targets.signed.targets["file.txt"].hashes["sha256"]
    (c.repo.base / "targets" / f"{sha}.file.txt").write_bytes(b"HELLO\n")
    assert c.init() == 0
    assert c.download("file.txt") == 1
    assert c.target_files() == []


def test_download_stops_at_first_failure(c: Client) -> None:
    c.repo.add_target("second.txt", b"2")
    c.repo.publish()
    assert c.init() == 0
    assert c.download("missing.txt", "second.txt") == 1
    assert c.target_files() == []


def test_delegations_searched_depth_first(c: Client) -> None:
    c.repo.add_delegation("a", ["a/*"])
    c.repo.add_delegation("a1", ["a/x*"], parent="a")
    c.repo.add_delegation("b", ["a/*"])
    c.repo.add_target("a/x.txt", b"from a1", role="a1")
    c.repo.add_target("a/x.txt", b"from b", role="b")
    c.repo.publish()
    assert c.init() == 0
    assert c.download("a/x.txt") == 0
    assert [f.read_bytes() for f in c.target_files()] == [b"from a1"]
    assert "a.json" in c.json_files()
    assert "a1.json" in c.json_files()
    assert "b.json" not in c.json_files()  # Never needed: a1 matched first.
    assert c.trusted("a1") == c.repo.metadata_bytes("1.a1.json")


def test_terminating_delegation_stops_the_search(c: Client) -> None:
    c.repo.add_delegation("t", ["b/*"], terminating=True)
    c.repo.add_delegation("u", ["b/*"])
    c.repo.add_target("b/y.txt", b"from u", role="u")
    c.repo.publish()
    assert c.init() == 0
    assert c.download("b/y.txt") == 1
    assert "u.json" not in c.json_files()
    assert c.target_files() == []


def test_root_and_timestamp_key_rotations(c: Client) -> None:
    assert c.init() == 0
    assert c.refresh() == 0
    for _ in range(2):
        old = list(c.repo.signers["root"])
        c.repo.replace_keys("root")
        c.repo.replace_keys("timestamp")
        c.repo.new_root_version(extra_signers=old)
    c.repo.publish()
    assert c.refresh() == 0
    assert c.trusted("root") == c.repo.metadata_bytes("3.root.json")
    assert c.trusted("timestamp") == c.repo.metadata_bytes("timestamp.json")


def test_root_rotation_with_bad_link_fails_and_keeps_old_root(c: Client) -> None:
    assert c.init() == 0
    c.repo.replace_keys("root")
    c.repo.new_root_version()
    assert c.refresh() == 1
    assert c.trusted("root") == c.repo.metadata_bytes("1.root.json")


def test_expired_timestamp_fails_and_is_not_stored(c: Client) -> None:
    assert c.init() == 0
    assert c.refresh() == 0
    good = c.trusted("timestamp")
    c.repo.publish(expires={"timestamp": datetime.now(UTC) - timedelta(hours=1)})
    assert c.refresh() == 1
    assert c.trusted("timestamp") == good


def test_expired_root_fails(c: Client) -> None:
    c.repo.root.signed.expires = datetime.now(UTC) - timedelta(days=1)
    c.repo.new_root_version()
    assert c.init(c.repo.metadata_bytes("1.root.json")) == 0
    assert c.refresh() == 1


def test_rollback_of_targets_fails(c: Client) -> None:
    assert c.init() == 0
    c.repo.publish()
    assert c.refresh() == 0
    c.server.behaviour.override["/metadata/timestamp.json"] = c.repo.metadata_bytes(
        "timestamp.json"
    )
    # Snapshot v4 lists targets v2 again: a rollback of targets.
    c.repo.snapshot.signed.meta["targets.json"].version = 2
    c.repo.publish(roles=())
    c.server.behaviour.clear()
    assert c.refresh() == 1


def test_repository_without_consistent_snapshots(tmp_path: Path) -> None:
    repo = TufRepo(tmp_path / "repo", consistent=False)
    repo.add_target("dir/file.txt", b"plain")
    repo.publish()
    (tmp_path / "md").mkdir()
    (tmp_path / "tg").mkdir()
    with serve(repo.base) as server:
        c = Client(repo, server, tmp_path / "md", tmp_path / "tg")
        assert c.init() == 0
        assert c.download("dir/file.txt") == 0
        paths = [r[1] for r in server.requests]
    assert paths == [
        "/metadata/2.root.json",
        "/metadata/timestamp.json",
        "/metadata/snapshot.json",
        "/metadata/targets.json",
        "/targets/dir/file.txt",
    ]
    assert [f.name for f in c.target_files()] == ["dir%2Ffile.txt"]


def _refresh_at(c: Client, when: str) -> subprocess.CompletedProcess[str]:
    """``tuf-client refresh`` with the system clock shifted by faketime (libfaketime's
    LD_PRELOAD changes what the C library returns; monotonic time is left alone so network
    timeouts behave)."""
    env = {**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    cmd = [
        "faketime",
        "-f",
        when,
        *CLI,
        "tuf-client",
        "--metadata-url",
        c.server.url + "metadata",
        "--metadata-dir",
        str(c.md),
        "refresh",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None, reason="faketime is not installed (scripts/ensure-debs)"
)


@needs_faketime
def test_freeze_detected_when_system_clock_passes_timestamp_expiry(c: Client) -> None:
    # The timestamp expires in 1 day; two days later (system clock, via faketime) the same
    # repository is a freeze attack and refresh must fail.
    assert c.init() == 0
    assert _refresh_at(c, "+0d").returncode == 0
    frozen = _refresh_at(c, "+2d")
    assert frozen.returncode == 1
    assert "timestamp: expired" in frozen.stderr


@needs_faketime
def test_device_clock_at_1970_still_accepts_fresh_metadata(c: Client) -> None:
    assert c.init() == 0
    assert _refresh_at(c, "@1970-01-02 00:00:00").returncode == 0

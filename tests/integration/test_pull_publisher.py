"""From a fresh shell: ``edgeagent repo init/add/serve`` then ``edgeagent pull`` and
``edgeagent store ls/gc``, all real subprocesses on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository
from tests.fakes.pullkit import CLI, run_cli


def ok(*args: str | Path) -> str:
    proc = run_cli(*args)
    assert proc.returncode == 0, f"edgeagent {args} failed: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    d = tmp_path / "repo"
    ok("repo", "init", d)
    return d


@pytest.fixture
def url(repo: Path) -> Iterator[str]:
    with subprocess.Popen(
        [*CLI, "repo", "serve", str(repo), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("serving "), line
            yield line.rsplit(" at ", 1)[1].strip()
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_pull_from_publisher_keeps_current_and_previous(
    repo: Path, url: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    trust = repo / "metadata" / "1.root.json"
    digests = []
    for version in ("1", "2", "3"):
        image = tmp_path / f"img{version}"
        image.write_bytes(os.urandom(200_000))
        digests.append(hashlib.sha256(image.read_bytes()).hexdigest())
        ok("repo", "add", repo, image, "--name", "hello", "--version", version)
        out = ok("pull", "--registry", url, "--trust", trust, "--store", store, "hello")
        path = Path(out.strip())
        assert path.read_bytes() == image.read_bytes()
        assert path.name == digests[-1]
    listing = ok("store", "ls", "--store", store).splitlines()
    assert listing == [
        f"hello current 3 200000 sha256:{digests[2]}",
        f"hello previous 2 200000 sha256:{digests[1]}",
    ]
    blobs = sorted(p.name for p in (store / "blobs" / "sha256").iterdir())
    assert blobs == sorted(digests[1:])  # Automatic GC removed version 1.
    assert ok("store", "gc", "--store", store) == ""


def test_pull_follows_publisher_key_rotation(repo: Path, url: str, tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(b"abc" * 1000)
    ok("repo", "add", repo, image, "--name", "hello", "--version", "1")
    store = tmp_path / "store"
    trust = repo / "metadata" / "1.root.json"
    ok("pull", "--registry", url, "--trust", trust, "--store", store, "hello")
    ok("repo", "rotate-key", repo, "root")
    ok("repo", "rotate-key", repo, "targets")
    ok("pull", "--registry", url, "--trust", trust, "--store", store, "hello")
    assert (store / "metadata" / "root.json").read_bytes() == (
        repo / "metadata" / "3.root.json"
    ).read_bytes()


def test_tuf_client_reads_publisher_repo_with_delegation(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    image = tmp_path / "img"
    image.write_bytes(b"fleet image")
    repo.add_delegation("fleet", ["fleet-*"], terminating=True)
    repo.add_delegated_target("fleet", image, "fleet-app", target_custom(version="2"))
    md, tg = tmp_path / "md", tmp_path / "tg"
    md.mkdir()
    tg.mkdir()
    ok("tuf-client", "--metadata-dir", md, "init", repo.root_path)
    with subprocess.Popen(
        [*CLI, "repo", "serve", str(tmp_path / "repo"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().rsplit(" at ", 1)[1].strip()
            ok(
                "tuf-client",
                "--metadata-url",
                url + "metadata",
                "--metadata-dir",
                md,
                "--target-name",
                "fleet-app",
                "--target-dir",
                tg,
                "--target-base-url",
                url + "targets",
                "download",
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert (tg / "fleet-app").read_bytes() == b"fleet image"
    assert (md / "fleet.json").exists()

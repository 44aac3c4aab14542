"""Interoperability: python-tuf's reference client reads repositories made by ``edgeagent repo``.

Everything goes through the real CLI in subprocesses (``repo init/add/rotate-key/refresh`` and
``repo serve`` on 127.0.0.1 port 0, parsed from its first stdout line), and the reference
``tuf.ngclient.Updater`` downloads over HTTP, checking the root chain, signatures, hashes and
hash-prefixed (consistent snapshot) target names.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import RepositoryError
from tuf.ngclient import Updater  # type: ignore[attr-defined]  # implicit re-export

CLI = [sys.executable, "-m", "edgeagent"]


def edgeagent(*args: str | Path) -> str:
    proc = subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"edgeagent {args} failed: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    d = tmp_path / "repo"
    edgeagent("repo", "init", d, "--root-threshold", "2", "--root-keys", "3")
    return d


@pytest.fixture
def url(repo: Path, tmp_path: Path) -> Iterator[str]:
    log = tmp_path / "serve.log"
    with (
        log.open("wb") as err,
        subprocess.Popen(
            [*CLI, "-v", "repo", "serve", str(repo), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("serving "), f"no URL printed: {line!r} {log.read_text()}"
            yield line.rsplit(" at ", 1)[1].strip()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0, f"repo serve must exit 0 on SIGTERM: {log.read_text()}"


def updater(tmp_path: Path, url: str, trusted_root: Path, name: str = "device") -> Updater:
    metadata_dir = tmp_path / name / "metadata"
    target_dir = tmp_path / name / "targets"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{url}metadata/",
        target_dir=str(target_dir),
        target_base_url=f"{url}targets/",
        bootstrap=trusted_root.read_bytes(),
    )


def download(up: Updater, name: str) -> bytes:
    up.refresh()
    info = up.get_targetinfo(name)
    assert info is not None, f"target {name} not found by ngclient"
    path = up.download_target(info)
    return Path(path).read_bytes()


def test_ngclient_downloads_target_published_by_repo_add(
    tmp_path: Path, repo: Path, url: str
) -> None:
    image = tmp_path / "hello.hvt"
    image.write_bytes(b"\x7fELF unikernel" * 1000)
    out = edgeagent("repo", "add", repo, image, "--name", "hello.hvt", "--version", "1.0.0")
    assert out.startswith("hello.hvt 14000 sha256:")
    up = updater(tmp_path, url, repo / "metadata" / "1.root.json")
    assert download(up, "hello.hvt") == image.read_bytes()
    info = up.get_targetinfo("hello.hvt")
    assert info is not None
    assert info.custom["edgeagent"]["version"] == "1.0.0"


def test_ngclient_follows_root_and_targets_key_rotation(
    tmp_path: Path, repo: Path, url: str
) -> None:
    trusted = tmp_path / "trusted-1.root.json"
    trusted.write_bytes((repo / "metadata" / "1.root.json").read_bytes())
    v1 = tmp_path / "app-v1"
    v1.write_bytes(b"version one")
    edgeagent("repo", "add", repo, v1, "--name", "app", "--version", "1")
    device = updater(tmp_path, url, trusted, "device")
    assert download(device, "app") == b"version one"

    edgeagent("repo", "rotate-key", repo, "root")
    edgeagent("repo", "rotate-key", repo, "targets")
    edgeagent("repo", "rotate-key", repo, "snapshot")
    edgeagent("repo", "rotate-key", repo, "timestamp")
    v2 = tmp_path / "app-v2"
    v2.write_bytes(b"version two")
    edgeagent("repo", "add", repo, v2, "--name", "app", "--version", "2")
    edgeagent("repo", "refresh", repo, "--snapshot")

    # The same device (trusting root v1 and its cached metadata) walks the chain 2..5.
    device = updater(tmp_path, url, trusted, "device")
    assert download(device, "app") == b"version two"
    # A fresh device given only root v1 does too.
    fresh = updater(tmp_path, url, trusted, "fresh")
    assert download(fresh, "app") == b"version two"
    assert (tmp_path / "device" / "metadata" / "root.json").read_bytes() == (
        repo / "metadata" / "5.root.json"
    ).read_bytes()


def test_ngclient_rejects_tampered_target_from_our_repo(
    tmp_path: Path, repo: Path, url: str
) -> None:
    image = tmp_path / "img"
    image.write_bytes(b"genuine bytes")
    edgeagent("repo", "add", repo, image, "--name", "img", "--version", "1")
    (blob,) = (repo / "targets").glob("*.img")
    blob.write_bytes(b"evil bytes!!!")
    up = updater(tmp_path, url, repo / "metadata" / "1.root.json")
    with pytest.raises(RepositoryError):
        download(up, "img")


def test_ngclient_finds_target_in_delegated_role_after_its_key_rotation(
    tmp_path: Path, repo: Path, url: str
) -> None:
    from edgeagent.publisher.policy import target_custom
    from edgeagent.publisher.repo import Repository

    image = tmp_path / "fleet-app"
    image.write_bytes(b"delegated image")
    r = Repository.open(repo)
    r.add_delegation("fleet", ["fleet-*"], terminating=True)
    r.add_delegated_target("fleet", image, "fleet-app", target_custom(version="1"))
    r.rotate_key("fleet")
    up = updater(tmp_path, url, repo / "metadata" / "1.root.json")
    assert download(up, "fleet-app") == b"delegated image"

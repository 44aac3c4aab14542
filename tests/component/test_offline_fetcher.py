"""The offline registry fetcher over a real folder, and the TUF client on top of it.

A folder standing in for a USB stick: the same `Updater`, trust root and store as the network
path; the fetcher itself only maps ``file://`` URLs to files, with the network's limits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from edgeagent.agent.offline import LocalFetcher
from edgeagent.client.updater import MetadataDir, Updater
from edgeagent.errors import FetchError, RollbackError, TooLargeError
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository
from edgeagent.registry.protocol import RegistryLayout
from edgeagent.store.cas import Store
from edgeagent.verify.clock import SystemClock


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    @property
    def held(self) -> int:
        return len(self.data)

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


def url(path: Path) -> str:
    return f"file://{path}"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "stick" / "edgeagent-registry"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "timestamp.json").write_bytes(b'{"x": 1}')
    return root


async def test_reads_a_file_below_the_root(folder: Path) -> None:
    f = LocalFetcher(folder)
    with trio.fail_after(5):
        data = await f.fetch_bytes(url(folder / "metadata" / "timestamp.json"), 100)
    assert data == b'{"x": 1}'


async def test_missing_file_is_a_404_so_the_root_walk_stops(folder: Path) -> None:
    with pytest.raises(FetchError) as info:
        await LocalFetcher(folder).fetch_bytes(url(folder / "metadata" / "2.root.json"), 100)
    assert info.value.status == 404


async def test_rejects_symlink_escaping_the_medium(folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_bytes(b"device secret")
    (folder / "metadata" / "root.json").symlink_to(secret)
    with pytest.raises(FetchError, match="outside the offline registry") as info:
        await LocalFetcher(folder).fetch_bytes(url(folder / "metadata" / "root.json"), 100)
    assert info.value.status == 403
    with pytest.raises(FetchError, match="outside"):
        await LocalFetcher(folder).fetch_bytes(url(folder / ".." / ".." / "secret.json"), 100)


async def test_rejects_oversized_metadata(folder: Path) -> None:
    with pytest.raises(TooLargeError):
        await LocalFetcher(folder).fetch_bytes(url(folder / "metadata" / "timestamp.json"), 3)


async def test_rejects_target_longer_than_its_signed_length(folder: Path) -> None:
    blob = folder / "targets" / "app"
    blob.parent.mkdir()
    blob.write_bytes(b"A" * 100)
    sink = Sink()
    with pytest.raises(TooLargeError, match="signed length"):
        await LocalFetcher(folder).fetch_into(url(blob), sink, 10)
    assert sink.held == 0


async def test_short_target_is_a_fetch_error(folder: Path) -> None:
    blob = folder / "targets" / "app"
    blob.parent.mkdir()
    blob.write_bytes(b"A" * 10)
    sink = Sink()
    with pytest.raises(FetchError, match="ended after 10 of 20"):
        await LocalFetcher(folder).fetch_into(url(blob), sink, 20)


async def test_streams_a_target_resuming_from_the_held_bytes(folder: Path) -> None:
    blob = folder / "targets" / "app"
    blob.parent.mkdir()
    blob.write_bytes(b"0123456789")
    sink = Sink()
    sink.data += b"0123"
    await LocalFetcher(folder).fetch_into(url(blob), sink, 10)
    assert bytes(sink.data) == b"0123456789"


def _copy(repo: Repository, dst: Path) -> Path:
    reg = dst / "edgeagent-registry"
    shutil.copytree(repo.metadata_dir, reg / "metadata")
    shutil.copytree(repo.targets_dir, reg / "targets")
    return reg


async def test_updater_verifies_an_offline_copy_and_refuses_an_older_one(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    blob = tmp_path / "app.bin"
    blob.write_bytes(b"version one")
    repo.add_target(blob, "app", target_custom(version="1"))
    old = _copy(repo, tmp_path / "old-stick")
    blob.write_bytes(b"version two")
    repo.add_target(blob, "app", target_custom(version="2"))
    new = _copy(repo, tmp_path / "new-stick")

    store = Store.open(tmp_path / "store")
    try:
        metadata = MetadataDir(store.metadata_dir)
        Updater.bootstrap(metadata, repo.root_path.read_bytes())

        def updater(reg: Path) -> Updater:
            layout = RegistryLayout.from_registry(f"file://{reg}/")
            return Updater(metadata, layout, LocalFetcher(reg), store, SystemClock())

        fresh = updater(new)
        info = await fresh.get_target_info("app")
        assert info is not None
        path = await fresh.download_target(info)
        assert path.read_bytes() == b"version two"

        # A stale stick (older timestamp) cannot roll the device back.
        with pytest.raises(RollbackError):
            await updater(old).refresh()
    finally:
        store.close()

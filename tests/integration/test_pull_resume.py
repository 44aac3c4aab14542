"""Resume: a killed pull (real SIGKILL) and dropped connections continue with Range from the
kept prefix, which is re-hashed; a corrupted kept prefix is caught by the final check."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from edgeagent.commands.pull import pull
from edgeagent.errors import DigestMismatchError
from edgeagent.registry.fetch import FetchConfig
from edgeagent.store.cas import Store
from tests.fakes.evil_server import serve
from tests.fakes.pullkit import CLI, Served
from tests.fakes.tufrepo import TufRepo

BIG = hashlib.sha256(b"seed").digest() * (10 * 1024 * 1024 // 32)  # 10 MiB
MIB = 1024 * 1024
FAST = FetchConfig(retries=6, backoff_initial_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Served]:
    repo = TufRepo(tmp_path / "repo")
    repo.add_target("big", BIG)
    repo.publish()
    trust = tmp_path / "root.json"
    trust.write_bytes(repo.metadata_bytes("1.root.json"))
    with serve(repo.base) as server:
        yield Served(repo, server, tmp_path / "store", trust)


async def do_pull(s: Served) -> Path:
    with Store.open(s.store) as store, trio.fail_after(60):
        return await pull(s.server.url, s.trust.read_bytes(), store, "big", FAST)


def range_requests(s: Served) -> list[str]:
    path = s.target_url_path("big")
    return [r[2] for r in s.server.requests if r[1] == path and r[2] is not None]


async def test_killed_pull_resumes_with_range(s: Served) -> None:
    path = s.target_url_path("big")
    s.server.behaviour.stall_after[path] = 6 * 1024 * 1024  # Then hang.
    partial = s.store / "tmp" / f"{hashlib.sha256(BIG).hexdigest()}.partial"
    proc = await trio.lowlevel.open_process(
        [
            *CLI,
            "pull",
            "--registry",
            s.server.url,
            "--trust",
            str(s.trust),
            "--store",
            str(s.store),
            "big",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(60):
            # Another process writes the file: poll it (no event to wait on).
            while not (partial.exists() and partial.stat().st_size >= 4 * MIB):  # noqa: ASYNC110
                await trio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = partial.stat().st_size
    assert 0 < kept < len(BIG)
    s.server.behaviour.clear()
    result = await do_pull(s)
    assert result.read_bytes() == BIG
    assert range_requests(s)[-1] == f"bytes={kept}-"
    assert not partial.exists()


async def test_dropped_connections_resume_until_complete(s: Served) -> None:
    s.server.behaviour.drop_after[s.target_url_path("big")] = 3 * 1024 * 1024
    result = await do_pull(s)
    assert hashlib.sha256(result.read_bytes()).digest() == hashlib.sha256(BIG).digest()
    assert len(range_requests(s)) >= 3


async def test_corrupted_kept_prefix_is_caught_and_discarded(s: Served) -> None:
    digest = hashlib.sha256(BIG).hexdigest()
    (s.store / "tmp").mkdir(parents=True)
    partial = s.store / "tmp" / f"{digest}.partial"
    partial.write_bytes(b"\x00" * 1000)  # Wrong prefix planted on disk.
    with pytest.raises(DigestMismatchError, match=r"target big: sha256 check failed"):
        await do_pull(s)
    assert not partial.exists()
    assert not (s.store / "blobs" / "sha256" / digest).exists()
    result = await do_pull(s)  # The next pull starts from scratch.
    assert result.read_bytes() == BIG


def test_second_pull_reuses_the_verified_blob(s: Served) -> None:
    args = [
        *CLI,
        "pull",
        "--registry",
        s.server.url,
        "--trust",
        str(s.trust),
        "--store",
        str(s.store),
        "big",
    ]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    n = len([r for r in s.server.requests if r[1] == s.target_url_path("big")])
    second = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert len([r for r in s.server.requests if r[1] == s.target_url_path("big")]) == n
    assert "pull: big 100%" in first.stderr  # Progress on stderr for big targets.

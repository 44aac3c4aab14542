"""Helpers shared by the pull/tuf-client integration tests: a served simulator repository,
CLI runs in subprocesses, and store inspection."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.evil_server import EvilServer, serve
from tests.fakes.tufrepo import TufRepo

CLI = [sys.executable, "-m", "edgeagent"]
APP = b"unikernel image bytes\n" * 4096  # 90 KiB


def run_cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Served:
    repo: TufRepo
    server: EvilServer
    store: Path
    trust: Path

    def target_url_path(self, name: str) -> str:
        tf = self.repo.targets.signed.targets[name]
        return f"/targets/{tf.hashes['sha256']}.{name}"

    def pull_cli(self, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "pull",
            "--registry",
            self.server.url,
            "--trust",
            self.trust,
            "--store",
            self.store,
            *extra,
            name,
        )

    def blobs(self) -> list[str]:
        d = self.store / "blobs" / "sha256"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def partials(self) -> list[str]:
        d = self.store / "tmp"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


@contextmanager
def served_repo(tmp_path: Path, *, root_threshold: int = 1, root_keys: int = 1) -> Iterator[Served]:
    repo = TufRepo(tmp_path / "repo", root_threshold=root_threshold, root_keys=root_keys)
    repo.add_target("app", APP)
    repo.publish()
    trust = tmp_path / "root.json"
    trust.write_bytes(repo.metadata_bytes("1.root.json"))
    with serve(repo.base) as server:
        yield Served(repo, server, tmp_path / "store", trust)

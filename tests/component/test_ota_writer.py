"""Host OTA on a real GPT disk image file, a real registry on 127.0.0.1 and a directory ESP.

The disk image is made by sfdisk (esp | root-a | root-b | data, as the host image lays it out);
slot images are published with the publisher (``repo add-host`` = kind host-slot) and served by
``serve_registry``; the device side resolves them through the TUF client. A real SIGKILL of a
writer subprocess tests the resume; the boot loader's part (spending the try-once counter) is
done by hand between two `HostOta` instances, as systemd-boot would between two boots.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from edgeagent.client.updater import MetadataDir, Updater
from edgeagent.config import HostOtaConfig
from edgeagent.ota import bootctl, slots, writer
from edgeagent.ota.service import HostOta, candidate_from_target
from edgeagent.ota.slots import Candidate
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository
from edgeagent.registry.fetch import ChunkSink, FetchConfig, Fetcher, HttpxFetcher
from edgeagent.registry.protocol import RegistryLayout
from edgeagent.registry.server import serve_registry
from edgeagent.store.cas import Store
from edgeagent.verify.clock import TrustedClock

MIB = 1024 * 1024
SLOT_MIB = 6
FAST = FetchConfig(retries=2, backoff_initial_s=0.01, backoff_max_s=0.05)
PARTS = (("esp", 1, 1), ("root-a", 2, SLOT_MIB), ("root-b", 2 + SLOT_MIB, SLOT_MIB))


def slot_image(tag: str, size: int = 4 * MIB + 123) -> bytes:
    block = hashlib.sha256(tag.encode()).digest() * (64 * 1024 // 32)
    return (block * (size // len(block) + 1))[:size]


def make_disk(path: Path) -> dict[str, writer.SlotDevice]:
    """A GPT disk image file written by sfdisk; slot devices read back from its table."""
    size = (2 + 2 * SLOT_MIB + 2) * MIB
    with path.open("wb") as f:
        f.truncate(size)
    script = "label: gpt\nunit: sectors\n" + "".join(
        f'start={start * 2048}, size={mib * 2048}, name="{name}"\n' for name, start, mib in PARTS
    )
    subprocess.run(["sfdisk", "-q", str(path)], input=script.encode(), check=True)
    table = json.loads(
        subprocess.run(["sfdisk", "-J", str(path)], capture_output=True, check=True).stdout
    )["partitiontable"]
    out = {}
    for part in table["partitions"]:
        if part["name"].startswith("root-"):
            out[part["name"][-1]] = writer.SlotDevice(
                path, part["size"] * 512, offset=part["start"] * 512
            )
    # The running slot A holds v1.
    v1 = slot_image("v1")
    with path.open("r+b") as f:
        f.seek(out["a"].offset)
        f.write(v1)
    return out


def region(dev: writer.SlotDevice, length: int) -> bytes:
    with dev.path.open("rb") as f:
        f.seek(dev.offset)
        return f.read(length)


def make_esp(root: Path) -> Path:
    (root / "EFI" / "Linux").mkdir(parents=True)
    (root / "loader").mkdir()
    for name in ("edgeos-a.efi", "edgeos-b.efi"):
        (root / "EFI" / "Linux" / name).write_bytes(b"MZ")
    (root / "loader" / "loader.conf").write_text("timeout 0\ndefault edgeos-a*\neditor no\n")
    return root


@dataclass
class Lab:
    tmp: Path
    repo: Repository
    url: str
    devices: dict[str, writer.SlotDevice]
    esp: Path
    state: Path
    disk: Path
    reboots: list[str] = field(default_factory=list)

    def publish(self, version: str, data: bytes) -> Path:
        src = self.tmp / f"slot-{version}.squashfs"
        src.write_bytes(data)
        self.repo.add_target(src, "host-slot", target_custom(version=version, kind="host-slot"))
        return src

    async def resolve(self, fetcher: Fetcher) -> tuple[Candidate, str]:
        """The device side: TUF refresh, signed target info -> Candidate and URL."""
        store = Store.open(self.tmp / "store")
        try:
            md = MetadataDir(store.metadata_dir)
            Updater.bootstrap(md, self.repo.root_path.read_bytes())
            layout = RegistryLayout.from_registry(self.url)
            up = Updater(md, layout, fetcher, store, TrustedClock(self.tmp / "store"))
            info = await up.get_target_info("host-slot")
            assert info is not None
            sha = str(info.hashes["sha256"])
            cand = candidate_from_target(
                info.unrecognized_fields.get("custom"),
                info.length,
                sha,
                device_id="edgeos-0001",
                groups=(),
            )
            assert cand is not None
            return cand, layout.target("host-slot", sha, consistent=True)
        finally:
            store.close()

    def ota(self, booted: str, *, clock: Callable[[], float] = lambda: 1000.0) -> HostOta:
        cfg = HostOtaConfig(
            enabled=True, health_window_s=30.0, esp_dir=str(self.esp), checkpoint_mb=1
        )
        return HostOta(
            cfg,
            self.state,
            version="v1",
            cmdline=f"console=ttyS0 edge.root=root-{booted}",
            devices=self.devices,
            reboot=lambda: self.reboots.append(booted),
            clock=clock,
        )

    def esp_names(self) -> list[str]:
        return sorted(os.listdir(self.esp / "EFI" / "Linux"))

    def loader_default(self) -> str | None:
        return bootctl.current_default((self.esp / "loader" / "loader.conf").read_text())

    def loader_boots(self) -> str:
        """What systemd-boot does at the next boot: take the default, spend its try."""
        default = self.loader_default()
        linux = self.esp / "EFI" / "Linux"
        if default and (linux / default).exists():
            e = bootctl.parse_entry(default, "edgeos")
            assert e is not None
            if e.left:
                (linux / default).rename(
                    linux / f"edgeos-{e.slot}+{e.left - 1}-{(e.done or 0) + 1}.efi"
                )
            return e.slot
        entries = bootctl.slot_entries(self.esp_names(), "edgeos", "esp")
        return next(s for s in ("b", "a") if not entries[s].bad)


@pytest.fixture
async def lab(tmp_path: Path, nursery: trio.Nursery) -> Lab:
    repo = Repository.init(tmp_path / "repo")
    host, port = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
    state = tmp_path / "state"
    state.mkdir()
    return Lab(
        tmp_path,
        repo,
        f"http://{host}:{port}/",
        make_disk(tmp_path / "disk.img"),
        make_esp(tmp_path / "esp"),
        state,
        tmp_path / "disk.img",
    )


def read_state(lab: Lab) -> slots.SlotState:
    return slots.load_state((lab.state / "host-ota.json").read_bytes())


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` (file state written by another task or process) for up to 30 s."""
    with trio.move_on_after(30):
        while not cond():  # noqa: ASYNC110 - the condition is in files, not in this process.
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_streams_v2_into_slot_b_and_reads_it_back(lab: Lab) -> None:
    v2 = slot_image("v2")
    lab.publish("v2", v2)
    async with HttpxFetcher(FAST) as fetcher:
        cand, url = await lab.resolve(fetcher)
        assert cand == Candidate("v2", hashlib.sha256(v2).hexdigest(), len(v2))
        seen: list[int] = []

        async def progress(n: int) -> None:
            seen.append(n)

        with trio.fail_after(30):
            await writer.write_slot(
                fetcher, url, lab.devices["b"], cand, start=0, on_progress=progress, checkpoint=MIB
            )
    assert region(lab.devices["b"], len(v2)) == v2
    assert region(lab.devices["a"], 16) == slot_image("v1")[:16]  # The running slot: untouched.
    assert seen == sorted(seen)
    assert seen[-1] == len(v2)
    assert await writer.read_back(lab.devices["b"], len(v2)) == cand.sha256


_CHILD = """
import sys, trio
from pathlib import Path
from edgeagent.ota import writer
from edgeagent.ota.slots import Candidate
from edgeagent.registry.fetch import HttpxFetcher
url, path, offset, size, version, sha, length, marker = sys.argv[1:]
async def main():
    async def progress(n):
        Path(marker).write_text(str(n))
        await trio.sleep(0.1)   # A slow disk: the parent kills us mid-write.
    dev = writer.SlotDevice(Path(path), int(size), int(offset))
    async with HttpxFetcher() as f:
        await writer.write_slot(f, url, dev, Candidate(version, sha, int(length)), start=0,
                                on_progress=progress, checkpoint=256 * 1024)
trio.run(main)
"""


class CountingFetcher:
    """Records where each streamed fetch started (the resume offset)."""

    def __init__(self, inner: HttpxFetcher) -> None:
        self.inner = inner
        self.starts: list[int] = []

    async def fetch_bytes(self, url: str, max_bytes: int) -> bytes:
        return await self.inner.fetch_bytes(url, max_bytes)

    async def fetch_into(self, url: str, sink: ChunkSink, length: int) -> None:
        self.starts.append(sink.held)
        await self.inner.fetch_into(url, sink, length)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_sigkilled_write_resumes_from_persisted_offset_and_verifies(lab: Lab) -> None:
    v2 = slot_image("v2")
    lab.publish("v2", v2)
    marker = lab.tmp / "offset"
    async with HttpxFetcher(FAST) as inner:
        cand, url = await lab.resolve(inner)
        dev = lab.devices["b"]
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-c",
                _CHILD,
                url,
                str(dev.path),
                str(dev.offset),
                str(dev.size),
                cand.version,
                cand.sha256,
                str(cand.length),
                str(marker),
            ],
        )
        try:
            await wait_until(
                lambda: marker.exists() and int(marker.read_text() or 0) >= MIB, "1 MiB durable"
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        offset = int(marker.read_text())
        assert 0 < offset < len(v2)
        # Whatever the killed writer left after the durable prefix is torn: scribble on it.
        with dev.path.open("r+b") as f:
            f.seek(dev.offset + offset)
            f.write(b"\xff" * 4096)
        fetcher = CountingFetcher(inner)

        async def progress(n: int) -> None:
            pass

        with trio.fail_after(30):
            await writer.write_slot(
                fetcher, url, dev, cand, start=offset, on_progress=progress, checkpoint=MIB
            )
    assert fetcher.starts == [offset]  # Resumed with Range, not from zero.
    assert await writer.read_back(dev, len(v2)) == cand.sha256


async def test_tampered_slot_image_is_refused_and_slot_not_staged(lab: Lab) -> None:
    v2 = slot_image("v2")
    lab.publish("v2", v2)
    # The registry's copy is swapped after signing (same length, other bytes).
    served = next((lab.repo.path / "targets").glob("*.host-slot"))
    served.write_bytes(slot_image("evil", len(v2)))
    ota = lab.ota("a")
    async with HttpxFetcher(FAST) as fetcher, trio.open_nursery() as n:
        await n.start(ota.run, lambda: (True, "ok"))
        cand, url = await lab.resolve(fetcher)
        ota.offer_nowait(cand, url, fetcher)
        await wait_until(lambda: read_state(lab).failed is not None, "refused")
        n.cancel_scope.cancel()
    st = read_state(lab)
    assert st.phase == "idle"
    assert st.failed == cand.key
    assert "sha256" in (ota.error or "")
    assert lab.esp_names() == ["edgeos-a.efi", "edgeos-b+0-0.efi"]  # Never made bootable.
    assert lab.loader_default() == "edgeos-a.efi"
    assert lab.reboots == []


async def test_ota_v1_to_v2_commits_after_healthy_trial_boot(lab: Lab) -> None:
    v2 = slot_image("v2")
    lab.publish("v2", v2)
    ota = lab.ota("a")
    async with HttpxFetcher(FAST) as fetcher, trio.open_nursery() as n:
        await n.start(ota.run, lambda: (True, "ok"))
        cand, url = await lab.resolve(fetcher)
        ota.offer_nowait(cand, url, fetcher)
        await wait_until(lambda: bool(lab.reboots), "reboot into the staged slot")
        n.cancel_scope.cancel()
    assert read_state(lab).phase == "staged"
    assert lab.esp_names() == ["edgeos-a.efi", "edgeos-b+1-0.efi"]
    assert lab.loader_default() == "edgeos-b+1-0.efi"
    assert region(lab.devices["b"], len(v2)) == v2
    # The loader boots b once (spending the try); the agent on b is healthy: commit.
    assert lab.loader_boots() == "b"
    trial = lab.ota("b")
    async with trio.open_nursery() as n:
        await n.start(trial.run, lambda: (True, "ok"))
        await wait_until(lambda: read_state(lab).phase == "committed", "commit")
        n.cancel_scope.cancel()
    st = read_state(lab)
    assert (st.good, st.good_version, st.good_sha256) == ("b", "v2", cand.sha256)
    assert lab.esp_names() == ["edgeos-a.efi", "edgeos-b.efi"]
    assert lab.loader_default() == "edgeos-b.efi"
    assert lab.reboots == ["a"]


async def test_unhealthy_trial_rolls_back_to_v1_and_never_retries_v2(lab: Lab) -> None:
    v2 = slot_image("v2")
    lab.publish("v2", v2)
    ota = lab.ota("a")
    async with HttpxFetcher(FAST) as fetcher:
        async with trio.open_nursery() as n:
            await n.start(ota.run, lambda: (True, "ok"))
            cand, url = await lab.resolve(fetcher)
            ota.offer_nowait(cand, url, fetcher)
            await wait_until(lambda: bool(lab.reboots), "staged reboot")
            n.cancel_scope.cancel()
        assert lab.loader_boots() == "b"
        now = [1000.0]
        trial = lab.ota("b", clock=lambda: now[0])
        async with trio.open_nursery() as n:
            await n.start(trial.run, lambda: (False, "workload ticker not healthy"))
            assert read_state(lab).phase == "trial"
            now[0] += 31  # The health window passes without a healthy report.
            await wait_until(lambda: len(lab.reboots) == 2, "reboot back")
            n.cancel_scope.cancel()
        st = read_state(lab)
        assert (st.phase, st.good, st.bad) == ("rolled-back", "a", (cand.key,))
        assert lab.esp_names() == ["edgeos-a.efi", "edgeos-b+0-1.efi"]
        assert lab.loader_default() == "edgeos-a.efi"
        # Back on a: v2 is offered again and not written again.
        assert lab.loader_boots() == "a"
        back = lab.ota("a")
        async with trio.open_nursery() as n:
            await n.start(back.run, lambda: (True, "ok"))
            back.offer_nowait(cand, url, fetcher)
            await trio.sleep(0.2)
            n.cancel_scope.cancel()
    assert read_state(lab).phase == "rolled-back"
    assert lab.reboots == ["a", "b"]

"""A/B host OTA on the real disk image in QEMU (OVMF, systemd-boot 252, TCG): slow.

Slot images are variants of the built ``host-os/out/slot.squashfs`` (unsquashfs, patch, then
mksquashfs: nothing is mounted): the agent from this checkout with ``[host_ota] enabled``,
``/etc/os-release`` VERSION_ID 1.0 / 2.0 / 3.0, and edge-init with the image-side changes
ADR 0010 asks for (its own bless() stands down once the agent owns blessing; a counted boot
whose agent is not healthy after a while reboots). 3.0's agent cannot start at all.

One run of the device: the disk starts with 1.0 in both slots (slot A on its first, counted
boot). 2.0 is published; QEMU is SIGKILLed while the agent writes it into slot B; the next
boot still runs 1.0 from A, resumes the write, stages B, reboots, runs the trial on B and
commits. Then 3.0 is published: written into A, staged, booted once; its agent never starts,
the boot is not blessed, the machine reboots, systemd-boot falls back to B, and 2.0's agent
marks 3.0 bad.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.hostos.qemuboot import OVMF_CODE, HostVm, Netns
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "host-os" / "out"
EDGEAGENT = Path(sys.executable).parent / "edgeagent"
REGISTRY_ADDR = "10.0.2.2"  # The registry URL baked into the image (host-os/recipe.toml).
SITE = "usr/lib/edgeagent/site"
WATCHDOG_S = 100

pytestmark = [pytest.mark.slow, pytest.mark.netns]

_EDGE_INIT_GUARD = "    [ -e /var/lib/edgeagent/state/host-ota.json ] && return 0  # ADR 0010 §5\n"
_EDGE_INIT_WATCHDOG = f"""\
var=/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
if [ -r "$var" ]; then
    ( $bb sleep {WATCHDOG_S}
      $bb wget -q -O /dev/null http://127.0.0.1:8480/healthz 2>/dev/null || {{
        echo "edge-init: counted boot without a healthy agent after {WATCHDOG_S} s; rebooting"
        $bb sync; $bb reboot -f; }} ) &
fi
"""
_HOST_OTA_TOML = """
[host_ota]
enabled = true
reboot_window = "always"
health_window_s = 300.0
checkpoint_mb = 4
"""


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, TAP device, unsquashfs ownership)")
    for tool in ("ip", "qemu-system-x86_64", "unsquashfs", "mksquashfs", "sfdisk"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not OVMF_CODE.exists():
        pytest.skip(f"{OVMF_CODE} missing (Debian package ovmf)")
    for f in ("disk.img", "slot.squashfs", "demo-repo/metadata/1.root.json"):
        if not (OUT / f).exists():
            pytest.skip(f"host-os/out/{f} missing: run `make host-image`")


def _patch_root(root: Path) -> None:
    """The changes every variant has: this checkout's agent, OTA enabled, edge-init hooks."""
    site = root / SITE / "edgeagent"
    shutil.rmtree(site)
    shutil.copytree(REPO / "edgeagent", site, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
            "-d",
            f"/{SITE}/edgeagent",
            str(site),
        ],
        check=True,
    )
    conf = root / "etc" / "edgeagent" / "agent.toml"
    baked = conf.read_text()
    # The image bakes its own [host_ota] table (the last one; recipe `host_ota = true`): the
    # test replaces it with one that has a longer health window and small checkpoints.
    baked = baked.split("\n[host_ota]\n", 1)[0].rstrip("\n") + "\n"
    conf.write_text(baked + _HOST_OTA_TOML)
    init = root / "sbin" / "edge-init"
    text = init.read_text()
    assert "bless() {\n" in text
    assert "bless &\n" in text
    assert "python3 -S -m edgeagent agent" in text
    # Images built before edge-init had the OTA guard and the counted-boot watchdog get them here.
    if "host-ota.json" not in text:
        text = text.replace("bless() {\n", "bless() {\n" + _EDGE_INIT_GUARD)
    if "counted boot without a healthy agent" not in text:
        text = text.replace("bless &\n", "bless &\n" + _EDGE_INIT_WATCHDOG)
    text = text.replace("python3 -S -m edgeagent agent", "python3 -S -m edgeagent -v agent")
    init.write_text(text)


def _set_version(root: Path, version: str) -> None:
    rel = root / "etc" / "os-release"
    lines = [ln for ln in rel.read_text().splitlines() if not ln.startswith("VERSION_ID=")]
    rel.unlink()
    rel.write_text("\n".join([*lines, f"VERSION_ID={version}"]) + "\n")


def _squash(root: Path, out: Path) -> Path:
    subprocess.run(
        [
            "mksquashfs",
            str(root),
            str(out),
            "-comp",
            "zstd",
            "-Xcompression-level",
            "3",
            "-noappend",
            "-all-root",
            "-quiet",
            "-no-progress",
        ],
        check=True,
    )
    return out


def snapshot_outputs(tmp: Path) -> Path:
    """Copy the built disk, slot image and repository, waiting for a build in progress."""
    snap = tmp / "out"
    snap.mkdir()
    with (OUT / ".build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # The build holds it exclusively (hostos/build.py).
        subprocess.run(
            ["cp", "--sparse=always", str(OUT / "disk.img"), str(OUT / "slot.squashfs"), str(snap)],
            check=True,
        )
        shutil.copytree(OUT / "demo-repo", snap / "demo-repo")
    return snap


def make_slots(tmp: Path, snap: Path) -> dict[str, Path]:
    root = tmp / "root"
    subprocess.run(
        ["unsquashfs", "-q", "-no-progress", "-d", str(root), str(snap / "slot.squashfs")],
        check=True,
    )
    _patch_root(root)
    out = {}
    for version in ("1.0", "2.0"):
        _set_version(root, version)
        out[version] = _squash(root, tmp / f"slot-{version}.squashfs")
    _set_version(root, "3.0")
    main = root / SITE / "edgeagent" / "__main__.py"
    main.write_text('raise SystemExit("edgeagent 3.0 is broken on purpose (test)")\n')
    for pyc in (main.parent / "__pycache__").glob("__main__*.pyc"):
        pyc.unlink()
    out["3.0"] = _squash(root, tmp / "slot-3.0.squashfs")
    shutil.rmtree(root)
    return out


def make_disk(snap: Path, v1: Path) -> Path:
    """The private copy of the built disk, with 1.0 in both root slots."""
    disk = snap / "disk.img"
    table = subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=True, text=True)
    parts = {p["name"]: p for p in json.loads(table.stdout)["partitiontable"]["partitions"]}
    data = v1.read_bytes()
    with disk.open("r+b") as f:
        for name in ("root-a", "root-b"):
            assert len(data) <= parts[name]["size"] * 512
            f.seek(parts[name]["start"] * 512)
            f.write(data)
    return disk


def wait_line(vm: HostVm, pattern: str, deadline_s: float) -> str:
    """Read console lines (also appended to ``console.log`` in the VM folder) until one matches."""
    rx = re.compile(pattern)
    with (vm.workdir / "console.log").open("a") as log:
        for t, line in vm.lines(deadline_s):
            log.write(f"{t:7.1f} {line}\n")
            log.flush()
            if rx.search(line):
                return line
    raise AssertionError(f"no console line matching {pattern!r}; console tail:\n{vm.tail(60)}")


def test_host_ota_in_qemu_update_kill_resume_commit_then_fallback(tmp_path: Path) -> None:
    _require()
    snap = snapshot_outputs(tmp_path)
    slots = make_slots(tmp_path, snap)
    disk = make_disk(snap, slots["1.0"])
    repo = Repository.open(snap / "demo-repo")
    repo.add_target(slots["2.0"], "host-slot", target_custom(version="2.0", kind="host-slot"))
    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    with Netns(f"edgeota{os.getpid()}", f"{REGISTRY_ADDR}/24") as ns:
        server = subprocess.Popen(
            [
                *ns.prefix(),
                str(EDGEAGENT),
                "repo",
                "serve",
                str(snap / "demo-repo"),
                "--listen",
                f"{REGISTRY_ADDR}:8000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert server.stdout is not None
            assert b"serving" in server.stdout.readline()
            # Boot 1 (1.0 on A): the write of 2.0 into B starts; QEMU is killed mid-write.
            with HostVm(disk, vmdir, netns=ns) as vm:
                wait_line(vm, r"host-ota: \d+ of \d+ bytes of 2\.0 written", 600)
                assert vm.proc is not None
                os.killpg(vm.proc.pid, signal.SIGKILL)
            # Boot 2: still 1.0 on A (B is marked bad); the write resumes, B is staged, reboot.
            # Boot 3: the trial of 2.0 on B, healthy: committed.
            with HostVm(disk, vmdir, netns=ns) as vm:
                wait_line(vm, r"re-hashing \d+ written bytes", 600)
                wait_line(vm, r"host-ota: staged", 900)
                wait_line(vm, r"host-ota: trial \(trial of 2\.0\)", 1200)
                wait_line(vm, r"host-ota: committed \(committed 2\.0 in slot b\)", 1500)
                # 3.0 (agent cannot start): written into A, staged, booted once, falls back.
                repo = Repository.open(snap / "demo-repo")
                repo.add_target(
                    slots["3.0"], "host-slot", target_custom(version="3.0", kind="host-slot")
                )
                wait_line(vm, r"host-ota: staged \(staged 3\.0 in slot a", 2100)
                wait_line(vm, r"edgeos 3\.0 is broken|3\.0 is broken on purpose", 2400)
                wait_line(vm, r"counted boot without a healthy agent", 2400 + WATCHDOG_S)
                wait_line(vm, r"host-ota: rolled-back \(rolled back 3\.0", 3000 + WATCHDOG_S)
        finally:
            server.terminate()
            server.wait(10)
            if server.stdout is not None:
                server.stdout.close()

"""The host OS image boots for real: OVMF -> systemd-boot -> UKI -> initramfs -> agent.

The test builds host-os/out/disk.img when it is missing or older than its inputs (about 1.5 min
with a warm host-os/cache/), boots a private copy in QEMU (q35, OVMF pflash, TCG, `-cpu max`)
with its NIC on a TAP inside a network namespace the test creates, serves a registry holding a
signed `ticker` (hvt) and `ticker-q` (kind qemu, the multiboot build) on the namespace's
address (the one baked into the image, signed by the repository whose root the image trusts),
and reads the agent's JSON status lines from the serial pty until the booted host reports both
running and healthy (edge-tender and QEMU, each on the nested KVM) and its boot blessed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.hostos.manifest import verify_manifest
from edgeagent.hostos.qemuboot import OVMF_CODE, boot_to_health

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "host-os" / "out"
DISK = OUT / "disk.img"
TICKER = REPO / "image-recipes" / "out" / "ticker.hvt"
TICKER_QEMU = REPO / "image-recipes" / "out" / "ticker.qemu"
EDGEAGENT = Path(sys.executable).parent / "edgeagent"
REGISTRY_ADDR = "10.0.2.2"  # host-os/recipe.toml [agent] registry_url / [network] gateway
BOOT_DEADLINE_S = 420.0
ESP_OFFSET = 1024 * 1024  # The ESP is the first partition, at 1 MiB (edgeagent.hostos.layout).

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _inputs() -> list[Path]:
    files = [REPO / "host-os" / "recipe.toml", REPO / "host-os" / "tender" / "edge-tender"]
    files += sorted((REPO / "host-os" / "initramfs").rglob("*"))
    files += sorted((REPO / "host-os" / "rootfs").rglob("*"))
    files += sorted((REPO / "edgeagent").rglob("*.py"))
    return [f for f in files if f.is_file()]


def fresh_image(out: Path = OUT, *build_args: str | Path) -> Path:
    """Return ``out``/disk.img, (re)building it (``build_args`` for the build, e.g.
    ``--hypervisor xen --out DIR``) when it is missing or older than its inputs."""
    disk = out / "disk.img"
    stale = not disk.exists() or not (out / "manifest.json").exists()
    if not stale:
        built = (out / "manifest.json").stat().st_mtime
        stale = any(f.stat().st_mtime > built for f in _inputs())
    if stale:
        subprocess.run(
            [sys.executable, "-m", "edgeagent.hostos.build", *build_args], cwd=REPO, check=True
        )
    return disk


def served_repo(out: Path, dest: Path, *targets: tuple[Path, str, list[str]]) -> Path:
    """Copy the repository whose root the build in ``out`` baked in to ``dest`` and publish
    ``targets`` there: (image, name, extra ``repo add`` options), each as version 1."""
    baked = json.loads((out / "build-info.json").read_text())["repository"]
    shutil.copytree(baked, dest)
    for image, name, options in targets:
        subprocess.run(
            [EDGEAGENT, "repo", "add", dest, image, "--name", name, "--version", "1", *options],
            check=True,
            capture_output=True,
        )
    return dest


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, TAP device, image build)")
    for tool in ("ip", "qemu-system-x86_64", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (docs/host-os.md lists the packages)")
    if not OVMF_CODE.exists():
        pytest.skip(f"{OVMF_CODE} missing (Debian package ovmf)")
    for image in (TICKER, TICKER_QEMU):
        if not image.exists():
            pytest.skip(f"{image} missing: run `make images`")


def test_manifest_verifies_against_baked_trust_root() -> None:
    _require_tools()
    fresh_image()
    signed = verify_manifest(
        (OUT / "manifest.json").read_bytes(),
        (OUT / "root.json").read_bytes(),
        source="manifest.json",
    )
    disk = signed["disk"]
    assert isinstance(disk, dict)
    assert disk["length"] == DISK.stat().st_size


def test_booted_host_pulls_signed_ticker_and_reports_it_healthy(tmp_path: Path) -> None:
    _require_tools()
    disk = fresh_image()
    # The repository whose root the build baked in (EDGE_HOSTOS_REPO or the demo one), with a
    # kind qemu workload too: the image ships qemu-system-x86 (a multiboot ticker under QEMU,
    # itself on the nested KVM inside this TCG-booted host).
    repo = served_repo(
        OUT,
        tmp_path / "repo",
        (TICKER, "ticker", ["--mem", "4", "--arg", "interval_ms=1000"]),
        (TICKER_QEMU, "ticker-q", ["--kind", "qemu", "--mem", "16", "--arg", "interval_ms=1000"]),
    )
    result = boot_to_health(
        disk,
        repo,
        tmp_path / "vm",
        edgeagent=EDGEAGENT,
        registry_addr=REGISTRY_ADDR,
        workload=("ticker", "ticker-q"),
        wait_blessed=True,
        deadline_s=BOOT_DEADLINE_S,
    )
    print(f"boot: first status {result.first_status_s} s, ticker {result.workload_healthy_s} s")
    assert result.first_status_s is not None, (
        f"no agent status line on the serial console:\n{result.console_tail}"
    )
    assert result.workload_healthy_s is not None, (
        f"ticker (hvt) and ticker-q (qemu) never both reported healthy:\n{result.console_tail}"
    )
    # Boot counting: systemd-boot counted slot A's first boot (+3-0 -> +2-1) and the agent's
    # host OTA (on in the shipped recipe) blessed it once healthy, so the ESP now names it
    # without a counter and loader.conf's default is the plain name.
    assert result.host_blessed_s is not None, f"the boot was never blessed:\n{result.console_tail}"
    print(f"boot: blessed by the agent at {result.host_blessed_s} s")
    esp = f"{tmp_path / 'vm' / 'disk.img'}@@{ESP_OFFSET}"
    listing = subprocess.run(
        ["mdir", "-b", "-i", esp, "::/EFI/Linux"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    names = sorted(line.rsplit("/", 1)[-1] for line in listing.split())
    assert names == ["edgeos-a.efi", "edgeos-b.efi"], listing
    loader = subprocess.run(
        ["mtype", "-i", esp, "::/loader/loader.conf"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "default edgeos-a.efi\n" in loader, loader

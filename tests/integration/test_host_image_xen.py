"""The host image's Xen variant boots for real: OVMF -> systemd-boot -> unified Xen EFI image
(Xen + xen.cfg + the dom0 kernel + the initramfs) -> our host OS as Xen's dom0 -> the agent.

The test builds host-os/out-xen/ (`make host-image-xen`: the shipped recipe with
image.hypervisor = "xen") when it is missing or older than its inputs, boots a private copy
under QEMU TCG (`-cpu max,-smap`: Xen's PV dom0 needs SMAP off under TCG, xen-notes.md) with its
NIC on a TAP inside a network namespace the test creates, serves a registry holding a signed
`ticker` of kind xen (image-recipes/out/ticker.xen, a PVH guest), and reads the agent's JSON
status lines from the serial console (dom0's hvc0, which Xen forwards to the UART) until the
agent reports ticker running and healthy as a Xen domain started with xl.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgeagent.hostos.manifest import verify_manifest
from edgeagent.hostos.qemuboot import boot_to_health
from tests.integration.test_host_image import (
    EDGEAGENT,
    REGISTRY_ADDR,
    _require_tools,
    fresh_image,
    served_repo,
)

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "host-os" / "out-xen"
TICKER_XEN = REPO / "image-recipes" / "out" / "ticker.xen"
# Xen's own boot, then a PV dom0 kernel under TCG through OVMF is slow (minutes, see
# docs/host-os.md); the deadline is generous because CI machines are shared.
BOOT_DEADLINE_S = 900.0

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def fresh_xen_image() -> Path:
    """Return host-os/out-xen/disk.img, (re)building it when it is missing or stale."""
    return fresh_image(OUT, "--hypervisor", "xen", "--out", OUT)


def test_xen_variant_manifest_verifies_and_names_the_hypervisor() -> None:
    _require_tools()
    fresh_xen_image()
    info = json.loads((OUT / "build-info.json").read_text())
    assert info["hypervisor"] == "xen"
    signed = verify_manifest(
        (OUT / "manifest.json").read_bytes(),
        (OUT / "root.json").read_bytes(),
        source="manifest.json",
    )
    assert "xen-hypervisor-4.17-amd64" in str(signed["kernel"])
    # Each slot's boot entry is Xen's EFI binary carrying the sections Xen's loader looks for.
    headers = subprocess.run(
        ["objdump", "-h", str(OUT / "edgeos-a.efi")], capture_output=True, text=True, check=True
    ).stdout
    for section in (".osrel", ".config", ".kernel", ".ramdisk"):
        assert f" {section} " in headers, headers


def test_xen_host_boots_dom0_and_runs_signed_ticker_as_a_xen_domain(tmp_path: Path) -> None:
    _require_tools()
    if not TICKER_XEN.exists():
        pytest.skip(f"{TICKER_XEN} missing: run `make images`")
    disk = fresh_xen_image()
    repo = served_repo(
        OUT,
        tmp_path / "repo",
        (TICKER_XEN, "ticker", ["--kind", "xen", "--mem", "8", "--arg", "interval_ms=1000"]),
    )
    result = boot_to_health(
        disk,
        repo,
        tmp_path / "vm",
        edgeagent=EDGEAGENT,
        registry_addr=REGISTRY_ADDR,
        marker="edge-init: xen daemons up",
        deadline_s=BOOT_DEADLINE_S,
        mem_mb=2048,
        cpus=2,
        cpu="max,-smap",
    )
    print(f"xen boot: first status {result.first_status_s} s, ticker {result.workload_healthy_s} s")
    # edge-init saw image.hypervisor = "xen" and started xenstored/xenconsoled in dom0.
    assert result.marker_s is not None, f"Xen's daemons never came up:\n{result.console_tail}"
    assert result.first_status_s is not None, (
        f"no agent status line on the serial console:\n{result.console_tail}"
    )
    assert result.workload_healthy_s is not None, (
        f"ticker (kind xen) never reported healthy:\n{result.console_tail}"
    )

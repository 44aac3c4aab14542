"""Xen in the agent: config keys, which kinds run on which hypervisor, kind/format mismatches.

Kind/format mismatches are refused while the spec is built, before any ``xl`` command runs
(these tests have no xl at all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.agent.core import xen_tools
from edgeagent.agent.desired import TargetEntry, desired_state, parse_workload, workload_from_json
from edgeagent.agent.supervisor import Runtime, build_spec, build_xen_spec
from edgeagent.config import parse_config
from edgeagent.errors import ConfigError, ImageFormatError, VmError
from edgeagent.publisher.policy import target_custom
from edgeagent.vmm.runner import RunnerTools
from edgeagent.vmm.xen_runner import XenTools
from tests.unit.test_vmm_imageformat import abi1, elf, pvh_note

SHA = "a" * 64
BASE = """
[registry]
url = "http://127.0.0.1:8000/"
trust_root = "root.json"
"""


def cfg(extra: str) -> object:
    return parse_config((BASE + extra).encode(), "agent.toml", "/etc/edgeagent")


# Config ------------------------------------------------------------------------------------


def test_default_hypervisor_is_kvm_with_xen_defaults() -> None:
    c = parse_config(BASE.encode(), "agent.toml", "/etc")
    assert c.runner.hypervisor == "kvm"
    assert (c.xen.xl, c.xen.console_dir, c.xen.tsc_mode, c.xen.vcpus) == (
        "xl",
        "/var/log/xen",
        "native",
        1,
    )
    assert c.xen.domain_prefix == "edge-"


def test_xen_section_is_read() -> None:
    c = parse_config(
        (
            BASE
            + """
[runner]
hypervisor = "xen"
[xen]
xl = "bin/xl"
console_dir = "/run/xen-logs"
tsc_mode = "default"
vcpus = 2
domain_prefix = "dev-"
poll_interval_s = 0.5
"""
        ).encode(),
        "agent.toml",
        "/etc/edgeagent",
    )
    assert c.runner.hypervisor == "xen"
    assert c.xen.xl == "/etc/edgeagent/bin/xl"  # a relative path is relative to the config
    assert (c.xen.console_dir, c.xen.tsc_mode, c.xen.vcpus) == ("/run/xen-logs", "default", 2)
    assert (c.xen.domain_prefix, c.xen.poll_interval_s) == ("dev-", 0.5)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[runner]\nhypervisor = "hyperv"', "runner.hypervisor"),
        ('[xen]\ntsc_mode = "fast"', "xen.tsc_mode"),
        ("[xen]\nvcpus = 0", "xen.vcpus"),
        ('[xen]\ndomain_prefix = "Edge_"', "xen.domain_prefix"),
        ('[xen]\nxl = ""', "xen.xl"),
        ("[xen]\nmemory = 5", "xen.memory"),
    ],
)
def test_bad_xen_config_names_the_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg(extra)


# Which kinds run where ---------------------------------------------------------------------


def entry(name: str, **kw: object) -> TargetEntry:
    return TargetEntry(name, 100, SHA, target_custom(version="1", **kw))  # type: ignore[arg-type]


def decide(entries: list[TargetEntry], hypervisor: str) -> tuple[list[str], dict[str, str]]:
    d = desired_state(
        entries,
        device_id="d",
        groups=(),
        max_workloads=10,
        max_mem_mb=1000,
        hypervisor=hypervisor,
    )
    return sorted(d.workloads), dict(d.skipped)


def test_xen_targets_run_only_on_a_xen_device() -> None:
    entries = [entry("ticker", kind="xen"), entry("hv", kind="hvt"), entry("q", kind="qemu")]
    on_kvm, skipped_kvm = decide(entries, "kvm")
    assert on_kvm == ["hv", "q"]
    assert "xen images cannot run on this device" in skipped_kvm["ticker"]
    on_xen, skipped_xen = decide(entries, "xen")
    assert on_xen == ["q", "ticker"]
    assert "hypervisor is xen" in skipped_xen["hv"]


def test_xen_target_with_block_devices_is_skipped() -> None:
    _, skipped = decide([entry("kv", kind="xen", block=["storage"])], "xen")
    assert "block and net" in skipped["kv"]


@pytest.mark.parametrize("name", ["Ticker", "tick_er", "tick.er", "x" * 41])
def test_xen_target_whose_name_cannot_be_a_domain_name_is_skipped(name: str) -> None:
    _, skipped = decide([entry(name, kind="xen")], "xen")
    assert "domain name" in skipped[name]


def test_xen_workload_survives_the_state_file() -> None:
    w = parse_workload(entry("ticker", kind="xen", args=["interval_ms=100"]))
    assert w.kind == "xen"
    assert workload_from_json(w.to_json(), "state.json") == w


# Kind vs image format, before xl -----------------------------------------------------------


def runtime(tmp_path: Path, xen: bool = True) -> Runtime:
    return Runtime(
        tools=RunnerTools(),
        state_dir=tmp_path,
        xen=XenTools(state_dir=tmp_path / "xen", xl="/nonexistent/xl") if xen else None,
    )


@pytest.fixture
def pvh_image(tmp_path: Path) -> Path:
    path = tmp_path / "ticker.xen"
    path.write_bytes(elf(notes=[pvh_note()]))
    return path


@pytest.fixture
def hvt_image(tmp_path: Path) -> Path:
    path = tmp_path / "ticker.hvt"
    path.write_bytes(elf(notes=[abi1()]))
    return path


def test_xen_target_gets_a_domain_spec(tmp_path: Path, pvh_image: Path) -> None:
    w = parse_workload(entry("ticker", kind="xen", mem_mb=16, args=["interval_ms=100"]))
    spec = build_xen_spec(w, pvh_image, runtime(tmp_path))
    assert spec.name.startswith("edge-ticker-")
    assert (spec.kernel, spec.mem_mb, spec.args, spec.tsc_mode) == (
        str(pvh_image),
        16,
        ("interval_ms=100",),
        "native",
    )


def test_xen_target_with_an_hvt_image_is_refused_before_xl(tmp_path: Path, hvt_image: Path) -> None:
    w = parse_workload(entry("ticker", kind="xen"))
    with pytest.raises(ImageFormatError, match="kind is xen but the image is hvt"):
        build_xen_spec(w, hvt_image, runtime(tmp_path))


def test_hvt_target_with_a_pvh_image_is_refused(tmp_path: Path, pvh_image: Path) -> None:
    w = parse_workload(entry("ticker", kind="hvt"))
    with pytest.raises(ImageFormatError, match="kind is hvt but the image is pvh"):
        build_spec(w, pvh_image, runtime(tmp_path))


def test_xen_target_never_goes_to_qemu(tmp_path: Path, pvh_image: Path) -> None:
    w = parse_workload(entry("ticker", kind="xen"))
    with pytest.raises(ImageFormatError, match="runs under xl"):
        build_spec(w, pvh_image, runtime(tmp_path))


def test_xen_target_on_a_kvm_device_is_a_clear_error(tmp_path: Path, pvh_image: Path) -> None:
    w = parse_workload(entry("ticker", kind="xen"))
    with pytest.raises(VmError, match='hypervisor = "xen"'):
        build_xen_spec(w, pvh_image, runtime(tmp_path, xen=False))


def test_agent_runtime_gets_xen_tools_only_on_a_xen_device() -> None:
    kvm = parse_config(BASE.encode(), "agent.toml", "/etc")
    assert xen_tools(kvm, Path("/var/lib/edgeagent/state")) is None
    xen = parse_config(
        (BASE + '[runner]\nhypervisor = "xen"\nstop_grace_s = 2\n[xen]\nvcpus = 2\n').encode(),
        "agent.toml",
        "/etc",
    )
    tools = xen_tools(xen, Path("/var/lib/edgeagent/state"))
    assert tools is not None
    assert tools.state_dir == Path("/var/lib/edgeagent/state/xen")
    assert (tools.stop_grace, tools.vcpus, tools.xl) == (2.0, 2, "xl")

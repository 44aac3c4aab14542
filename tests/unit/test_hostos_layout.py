"""Host image layout: GPT geometry, module order, boot-counting names, baked config."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from edgeagent.errors import BuildError
from edgeagent.hostos import layout as lay
from edgeagent.hostos.recipe import parse_recipe

RECIPE = parse_recipe(
    (Path(__file__).resolve().parents[2] / "host-os" / "recipe.toml").read_bytes(), "recipe.toml"
)


def test_partitions_are_aligned_ordered_and_disjoint() -> None:
    layout = lay.disk_layout(RECIPE)
    names = [p.name for p in layout.partitions]
    assert names == ["esp", "root-a", "root-b", "data"]
    end = 0
    for p in layout.partitions:
        assert p.offset % lay.MIB == 0
        assert p.offset >= end
        end = p.offset + p.size
    assert layout.size >= end + 33 * lay.SECTOR  # backup GPT fits
    assert layout.partition("root-a").size == RECIPE.partitions.root_mb * lay.MIB


def test_layout_uuids_are_stable_across_builds() -> None:
    assert lay.sfdisk_script(lay.disk_layout(RECIPE)) == lay.sfdisk_script(lay.disk_layout(RECIPE))
    script = lay.sfdisk_script(lay.disk_layout(RECIPE))
    assert script.startswith("label: gpt\n")
    assert 'name="root-b"' in script


MODULES_DEP = """\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
"""


def test_modules_load_dependencies_first_each_once() -> None:
    order = lay.module_load_order(
        MODULES_DEP, "kernel/fs/vfat.ko\n", ("kvm_amd", "ext4", "vfat", "kvm"), source="m.dep"
    )
    assert order.index("kernel/virt/lib/irqbypass.ko") < order.index("kernel/arch/x86/kvm/kvm.ko")
    assert order.index("kernel/arch/x86/kvm/kvm.ko") < order.index("kernel/arch/x86/kvm/kvm-amd.ko")
    assert order.index("kernel/fs/jbd2/jbd2.ko") < order.index("kernel/fs/ext4/ext4.ko")
    assert len(order) == len(set(order)) == 7


def test_unknown_module_is_a_build_error_naming_the_field() -> None:
    with pytest.raises(BuildError, match=r"'nosuch'.*kernel.modules"):
        lay.module_load_order(MODULES_DEP, "", ("nosuch",), source="m.dep")


def test_first_slot_is_counted_the_fallback_is_not() -> None:
    assert lay.uki_name(RECIPE, "a", counting=True) == f"edgeos-a+{lay.BOOT_TRIES}-0.efi"
    assert lay.uki_name(RECIPE, "b", counting=False) == "edgeos-b.efi"
    assert f"default edgeos-a+{lay.BOOT_TRIES}-0.efi\n" in lay.loader_conf(RECIPE)
    assert "timeout 0" in lay.loader_conf(RECIPE)


def test_cmdline_names_the_slot_root_and_console() -> None:
    line = lay.uki_cmdline(RECIPE, "b")
    assert "edge.root=root-b" in line
    assert "console=ttyS0,115200" in line


def test_baked_agent_config_is_valid_toml_with_registry_and_serial() -> None:
    cfg = tomllib.loads(lay.agent_config(RECIPE))
    assert cfg["registry"]["url"] == RECIPE.agent.registry_url
    assert cfg["registry"]["trust_root"] == "root.json"
    assert cfg["serial"]["ports"] == ["/dev/ttyS0"]
    assert cfg["paths"]["state"].startswith("/var/")


def test_shipped_recipe_turns_host_ota_on() -> None:
    # A flashed box must be able to take host updates and bless its own counted boots.
    assert RECIPE.agent.host_ota is True
    cfg = tomllib.loads(lay.agent_config(RECIPE))
    assert cfg["host_ota"]["enabled"] is True
    assert cfg["host_ota"]["boot_prefix"] == "edgeos"


def test_host_ota_switch_off_leaves_the_ota_table_out() -> None:
    import dataclasses

    recipe = dataclasses.replace(RECIPE, agent=dataclasses.replace(RECIPE.agent, host_ota=False))
    cfg = tomllib.loads(lay.agent_config(recipe))
    assert "host_ota" not in cfg


def _fake_pe(stamp: int) -> bytes:
    img = bytearray(512)
    img[0:2] = b"MZ"
    img[0x3C:0x40] = (0x80).to_bytes(4, "little")
    img[0x80:0x84] = b"PE\0\0"
    img[0x88:0x8C] = stamp.to_bytes(4, "little")
    img[0x100:0x104] = b"code"
    return bytes(img)


def test_uki_pe_timestamp_is_pinned_so_two_builds_match() -> None:
    a = lay.pe_set_timestamp(_fake_pe(1111), 1764028800)
    b = lay.pe_set_timestamp(_fake_pe(2222), 1764028800)
    assert a == b
    assert a[0x88:0x8C] == (1764028800).to_bytes(4, "little")
    assert a[0x100:0x104] == b"code"


def test_pe_timestamp_rejects_non_pe() -> None:
    with pytest.raises(BuildError, match="not a PE image"):
        lay.pe_set_timestamp(b"\x7fELF" + bytes(100), 0)


@pytest.mark.parametrize("host_ota", [False, True])
def test_baked_agent_config_is_accepted_by_the_agent(host_ota: bool) -> None:
    import dataclasses

    from edgeagent.config import parse_config

    recipe = dataclasses.replace(RECIPE, agent=dataclasses.replace(RECIPE.agent, host_ota=host_ota))
    cfg = parse_config(lay.agent_config(recipe).encode(), "agent.toml", "/etc/edgeagent")
    assert cfg.registry.url == RECIPE.agent.registry_url


XEN = dataclasses.replace(RECIPE, hypervisor="xen")


def test_xen_variant_adds_dom0_tools_modules_and_console() -> None:
    assert RECIPE.xen is not None
    assert set(RECIPE.xen.packages) <= set(lay.root_packages(XEN))
    assert not set(RECIPE.xen.packages) & set(lay.root_packages(RECIPE))
    assert "xenfs" in lay.initramfs_modules(XEN)
    assert "xenfs" not in lay.initramfs_modules(RECIPE)
    assert lay.host_console(XEN) == "hvc0"
    assert lay.host_console(RECIPE) == "ttyS0"
    cfg = tomllib.loads(lay.agent_config(XEN))
    assert cfg["runner"]["hypervisor"] == "xen"
    assert cfg["serial"]["ports"] == ["/dev/hvc0"]
    assert "EDGE_HYPERVISOR=xen" in lay.host_env(XEN)


def test_xen_config_gives_xen_the_uart_and_dom0_hvc0() -> None:
    text = lay.xen_config(XEN, "b")
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert lines["default"] == "edgeos-b"
    assert lines["options"].startswith("console=com1 com1=115200,8n1 ")
    assert lines["kernel"].split()[:3] == ["vmlinuz", "console=hvc0", "edge.root=root-b"]
    assert lines["ramdisk"] == "initrd.img"
    with pytest.raises(BuildError, match="no \\[xen\\] table"):
        lay.xen_config(dataclasses.replace(XEN, xen=None), "a")


def test_unified_xen_sections_start_past_xen_on_2_mib_boundaries() -> None:
    objdump = """
Sections:
Idx Name          Size      VMA               LMA               File off  Algn
  0 .text         00160783  ffff82d040200000  ffff82d040200000  00000300  2**4
                  CONTENTS, ALLOC, LOAD, CODE
  8 .pad          00600000  ffff82d040a00000  ffff82d040a00000  00000000  2**2
                  ALLOC
"""
    end = lay.pe_sections_end(objdump, source="xen.efi")
    assert end == 0xFFFF82D041000000
    start = lay.xen_sections_start(end)
    assert start % (2 * lay.MIB) == 0
    assert start > end
    assert lay.align_2m(start + 1) == start + 2 * lay.MIB
    with pytest.raises(BuildError, match=r"xen\.efi: objdump -h shows no sections"):
        lay.pe_sections_end("garbage", source="xen.efi")

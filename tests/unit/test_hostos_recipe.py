"""host-os/recipe.toml validation: the shipped recipe parses; bad ones name file and field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import ConfigError
from edgeagent.hostos.recipe import parse_recipe, with_hypervisor, with_overrides

RECIPE = Path(__file__).resolve().parents[2] / "host-os" / "recipe.toml"
GOOD = RECIPE.read_bytes()


def _edit(old: str, new: str) -> bytes:
    text = GOOD.decode()
    assert old in text, old
    return text.replace(old, new, 1).encode()


def test_shipped_recipe_parses() -> None:
    r = parse_recipe(GOOD, "recipe.toml")
    assert r.name == "edgeos"
    assert r.slot_budget_mb == 80
    assert "python3" in r.debian.packages
    assert any(w.startswith("trio==") for w in r.wheels)
    assert r.kernel.package.startswith("linux-image-")
    # The QEMU runner (kind qemu workloads) ships in the image (issue 5 §1).
    assert "qemu-system-x86" in r.debian.packages
    assert r.hypervisor == "kvm"
    assert r.xen is not None
    assert r.xen.package.startswith("xen-hypervisor-")


def test_xen_hypervisor_needs_a_xen_table() -> None:
    text = GOOD.decode()
    start = text.index("[xen]\n")
    end = text.index("[tender]\n")
    bad = (text[:start] + text[end:]).replace('hypervisor = "kvm"', 'hypervisor = "xen"')
    with pytest.raises(ConfigError, match=r"field 'image.hypervisor': \"xen\" needs a \[xen\]"):
        parse_recipe(bad.encode(), "recipe.toml")


def test_unknown_hypervisor_is_named() -> None:
    bad = _edit('hypervisor = "kvm"', 'hypervisor = "hyperv"')
    with pytest.raises(ConfigError, match=r"field 'image.hypervisor': expected one of kvm, xen"):
        parse_recipe(bad, "recipe.toml")


def test_xen_needs_a_uart_console_xen_can_own() -> None:
    bad = _edit('hypervisor = "kvm"', 'hypervisor = "xen"').replace(
        b'device = "ttyS0"', b'device = "ttyUSB0"'
    )
    with pytest.raises(ConfigError, match=r"field 'console.device': with image.hypervisor"):
        parse_recipe(bad, "recipe.toml")


def test_xen_options_cannot_set_the_console() -> None:
    bad = _edit('options = "dom0_mem', 'options = "console=vga dom0_mem')
    with pytest.raises(ConfigError, match=r"field 'xen.options': leave out console="):
        parse_recipe(bad, "recipe.toml")


def test_hypervisor_override_is_validated() -> None:
    r = parse_recipe(GOOD, "recipe.toml")
    assert with_hypervisor(r, "xen", source="--hypervisor").hypervisor == "xen"
    with pytest.raises(ConfigError, match=r"--hypervisor: expected one of kvm, xen"):
        with_hypervisor(r, "bhyve", source="--hypervisor")


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"recipe.toml: unknown field 'colour' in top level"):
        parse_recipe(b'colour = "red"\n' + GOOD, "recipe.toml")


def test_unknown_key_in_table_is_named() -> None:
    bad = _edit("[partitions]\n", "[partitions]\nswap_mb = 4\n")
    with pytest.raises(ConfigError, match=r"unknown field 'swap_mb' in \[partitions\]"):
        parse_recipe(bad, "recipe.toml")


def test_wrong_type_names_field() -> None:
    bad = _edit("slot_budget_mb = 80", 'slot_budget_mb = "80"')
    with pytest.raises(ConfigError, match=r"recipe.toml: field 'image.slot_budget_mb': expected"):
        parse_recipe(bad, "recipe.toml")


def test_missing_field_is_named() -> None:
    bad = _edit('device = "ttyS0"\n', "")
    with pytest.raises(ConfigError, match=r"field 'console.device': required field is missing"):
        parse_recipe(bad, "recipe.toml")


def test_unpinned_wheel_is_rejected() -> None:
    bad = _edit('"trio==0.35.0"', '"trio>=0.31"')
    with pytest.raises(ConfigError, match=r"field 'python.wheels\[\d+\]': expected pinned"):
        parse_recipe(bad, "recipe.toml")


def test_package_name_cannot_smuggle_options() -> None:
    bad = _edit('packages = ["python3"', 'packages = ["--allow-unauthenticated"')
    with pytest.raises(ConfigError, match=r"field 'debian.packages\[0\]'"):
        parse_recipe(bad, "recipe.toml")


def test_gateway_outside_network_is_rejected() -> None:
    bad = _edit('gateway = "10.0.2.2"', 'gateway = "192.168.1.1"')
    with pytest.raises(ConfigError, match=r"field 'network.gateway'"):
        parse_recipe(bad, "recipe.toml")


def test_budget_larger_than_partition_is_rejected() -> None:
    bad = _edit("slot_budget_mb = 80", "slot_budget_mb = 400")
    with pytest.raises(ConfigError, match=r"does not fit in partitions.root_mb"):
        parse_recipe(bad, "recipe.toml")


def test_overrides_validate_url() -> None:
    r = parse_recipe(GOOD, "recipe.toml")
    r2 = with_overrides(r, registry_url="http://10.9.0.1:8000/", repository=None, source="env")
    assert r2.agent.registry_url == "http://10.9.0.1:8000/"
    with pytest.raises(ConfigError, match="env: registry URL"):
        with_overrides(r, registry_url="file:///etc/passwd", repository=None, source="env")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_config_error(data: bytes) -> None:
    try:
        parse_recipe(data, "fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("fuzz.toml")


_LINE = re.compile(rb"^[a-z_]+ = .*$", re.MULTILINE)


@given(st.data())
def test_any_single_value_swap_is_accepted_or_named(data: st.DataObject) -> None:
    lines = _LINE.findall(GOOD)
    victim = data.draw(st.sampled_from(lines))
    key = victim.split(b" = ")[0]
    value = data.draw(st.sampled_from([b"1", b'"x"', b"true", b"[]", b"-5", b"{}", b"1.5"]))
    text = GOOD.replace(victim, key + b" = " + value, 1)
    try:
        tomllib.loads(text.decode())
    except tomllib.TOMLDecodeError:
        return
    try:
        parse_recipe(text, "recipe.toml")
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "recipe.toml: field" in message or "recipe.toml: unknown" in message

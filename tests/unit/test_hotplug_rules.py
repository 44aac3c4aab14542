"""Hot-plug decisions (pure): which device events give a console or an offline update source."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.agent.hotplug_rules import (
    REGISTRY_DIR,
    DeviceEvent,
    HotplugRules,
    classify,
    mount_point,
    registry_url,
)

RULES = HotplugRules()


def tty(action: str = "add", **kw: object) -> DeviceEvent:
    base: dict[str, object] = {
        "action": action,
        "subsystem": "tty",
        "sys_name": "ttyUSB0",
        "devname": "/dev/ttyUSB0",
        "usb": True,
    }
    base.update(kw)
    return DeviceEvent(**base)  # type: ignore[arg-type]


def disk(action: str = "add", **kw: object) -> DeviceEvent:
    base: dict[str, object] = {
        "action": action,
        "subsystem": "block",
        "sys_name": "sdb1",
        "devname": "/dev/sdb1",
        "devtype": "partition",
        "removable": True,
        "size_sectors": 2048,
    }
    base.update(kw)
    return DeviceEvent(**base)  # type: ignore[arg-type]


def test_usb_serial_adapter_gets_the_console_and_loses_it_when_unplugged() -> None:
    assert classify(tty("add"), RULES).action == "serial-add"
    assert classify(tty("remove"), RULES).action == "serial-remove"
    assert classify(tty("change"), RULES).action == "ignore"


def test_udev_id_bus_marks_a_usb_adapter_without_a_sysfs_parent() -> None:
    ev = tty(usb=False, properties={"ID_BUS": "usb"})
    assert classify(ev, RULES).action == "serial-add"


@pytest.mark.parametrize("name", ["ttyS0", "tty1", "console", "ttyAMA0"])
def test_onboard_uarts_and_virtual_consoles_are_not_taken(name: str) -> None:
    ev = tty(sys_name=name, devname=f"/dev/{name}", usb=False)
    assert classify(ev, RULES).action == "ignore"


def test_a_configured_serial_port_is_not_served_twice() -> None:
    rules = HotplugRules(owned_ports=frozenset({"/dev/ttyUSB0"}))
    assert classify(tty(), rules).action == "ignore"


def test_serial_off_ignores_adapters() -> None:
    assert classify(tty(), HotplugRules(serial=False)).action == "ignore"


def test_removable_medium_is_an_update_source_until_removed() -> None:
    assert classify(disk("add"), RULES).action == "media-add"
    assert classify(disk("change"), RULES).action == "media-add"
    assert classify(disk("remove"), RULES).action == "media-remove"
    assert classify(disk("change", size_sectors=0), RULES).action == "media-remove"
    assert classify(disk("add", size_sectors=None), RULES).action == "media-remove"


def test_usb_disk_counts_as_removable_even_without_the_flag() -> None:
    assert classify(disk(removable=False, usb=True), RULES).action == "media-add"


def test_internal_disk_is_never_mounted() -> None:
    ev = disk(sys_name="nvme0n1p2", devname="/dev/nvme0n1p2", removable=False)
    assert classify(ev, RULES).action == "ignore"


def test_loop_devices_are_media_only_when_configured() -> None:
    ev = disk("change", sys_name="loop3", devname="/dev/loop3", devtype="disk", removable=False)
    assert classify(ev, RULES).action == "ignore"
    assert classify(ev, HotplugRules(media_devices=("loop*",))).action == "media-add"


@pytest.mark.parametrize("name", ["sr0", "ram0", "zram0", "dm-0", "md127"])
def test_optical_ram_and_mapper_devices_are_not_media_by_default(name: str) -> None:
    ev = disk(sys_name=name, devname=f"/dev/{name}", devtype="disk", removable=True)
    assert classify(ev, RULES).action == "ignore"


def test_media_off_ignores_disks() -> None:
    assert classify(disk(), HotplugRules(media=False)).action == "ignore"


def test_event_without_device_node_is_ignored() -> None:
    assert classify(disk(devname=""), RULES).action == "ignore"
    assert classify(tty(devname="ttyUSB0"), RULES).action == "ignore"


def test_rejects_path_traversal_in_a_kernel_name() -> None:
    # A crafted uevent name must not move the mount point out of the mount root.
    assert classify(disk(sys_name="../../etc"), RULES).action == "ignore"
    with pytest.raises(ValueError, match="kernel device name"):
        mount_point("/var/lib/edgeagent/state/media", "../../etc")


def test_mount_point_and_registry_url_follow_the_convention() -> None:
    mp = mount_point("/state/media", "sdb1")
    assert mp == "/state/media/sdb1"
    assert registry_url(mp) == f"file:///state/media/sdb1/{REGISTRY_DIR}/"


_names = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=80
)
_events = st.builds(
    DeviceEvent,
    action=st.sampled_from(["add", "remove", "change", "bind", "unbind", "move", "online", ""]),
    subsystem=st.sampled_from(["tty", "block", "net", "usb", "input", ""]),
    sys_name=_names,
    devname=st.one_of(st.just(""), _names, _names.map(lambda n: "/dev/" + n)),
    devtype=st.sampled_from(["disk", "partition", "usb_device", ""]),
    properties=st.dictionaries(st.sampled_from(["ID_BUS", "ID_FS_TYPE", "X"]), _names),
    removable=st.one_of(st.none(), st.booleans()),
    usb=st.booleans(),
    size_sectors=st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 40)),
)
_rules = st.builds(
    HotplugRules,
    serial=st.booleans(),
    media=st.booleans(),
    media_devices=st.lists(st.sampled_from(["loop*", "sd?", "*", "vd[a-z]"]), max_size=3).map(
        tuple
    ),
)


@given(_events, _rules)
def test_classify_is_total_and_consistent(ev: DeviceEvent, rules: HotplugRules) -> None:
    d = classify(ev, rules)
    assert d.reason
    if d.action.startswith("serial"):
        assert rules.serial
        assert ev.subsystem == "tty"
        assert ev.usb or ev.properties.get("ID_BUS") == "usb"
        assert ev.devname.startswith("/dev/")
    if d.action.startswith("media"):
        assert rules.media
        assert ev.subsystem == "block"
        assert ev.devtype in ("disk", "partition")
        # Whatever the event says, a mount point is always inside the mount root.
        assert mount_point("/m", ev.sys_name).startswith("/m/")
        assert "/" not in ev.sys_name
    if d.action == "media-add":
        assert ev.action in ("add", "change")
        assert ev.size_sectors
    if d.action not in ("ignore",):
        assert ev.subsystem in ("tty", "block")

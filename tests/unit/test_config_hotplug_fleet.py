"""The ``[fleet]`` and ``[hotplug]`` config sections: defaults, values, strict errors."""

from __future__ import annotations

import pytest

from edgeagent.config import FleetConfig, HotplugConfig, parse_config
from edgeagent.errors import ConfigError

BASE = b'[registry]\nurl = "http://r.example/"\ntrust_root = "root.json"\n'


def parse(extra: str) -> object:
    return parse_config(BASE + extra.encode(), "agent.toml", "/etc/edgeagent")


def test_defaults_fleet_off_and_hotplug_off() -> None:
    cfg = parse_config(BASE, "agent.toml", "/etc/edgeagent")
    assert cfg.fleet is None
    assert cfg.hotplug == HotplugConfig()
    assert cfg.hotplug.enabled is False


def test_fleet_url_and_interval() -> None:
    cfg = parse_config(
        BASE + b'[fleet]\nurl = "https://fleet.example/hb"\ninterval_s = 15\n', "a", "/"
    )
    assert cfg.fleet == FleetConfig("https://fleet.example/hb", 15.0)


def test_fleet_empty_url_disables_it() -> None:
    cfg = parse_config(BASE + b'[fleet]\nurl = ""\n', "a", "/")
    assert cfg.fleet is None


def test_hotplug_values_and_relative_mount_root() -> None:
    cfg = parse_config(
        BASE
        + b'[hotplug]\nenabled = true\nserial = false\nmedia = true\nmount_root = "media"\n'
        + b'media_devices = ["loop*", "vdb"]\n',
        "a",
        "/etc/edgeagent",
    )
    assert cfg.hotplug == HotplugConfig(
        enabled=True,
        serial=False,
        media=True,
        mount_root="/etc/edgeagent/media",
        media_devices=("loop*", "vdb"),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[fleet]\nurl = "ftp://x/"\n', "key 'fleet.url': expected an http"),
        ('[fleet]\nurl = "http://x/"\ninterval_s = 0\n', "key 'fleet.interval_s'"),
        ("[fleet]\npath = 1\n", "unknown key 'fleet.path'"),
        ('[hotplug]\nenabled = "yes"\n', "key 'hotplug.enabled': expected true or false"),
        ("[hotplug]\nusb = true\n", "unknown key 'hotplug.usb'"),
        ('[hotplug]\nmedia_devices = ["../sda"]\n', "key 'hotplug.media_devices'"),
        ('[hotplug]\nmedia_devices = "loop*"\n', "key 'hotplug.media_devices'"),
        ("[hotplug]\nmount_root = 3\n", "key 'hotplug.mount_root'"),
    ],
)
def test_bad_values_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse(extra)

"""The ``[host_ota]`` section of agent.toml: defaults, values, strictness (names the key)."""

from __future__ import annotations

import pytest

from edgeagent.config import HostOtaConfig, parse_config
from edgeagent.errors import ConfigError

BASE = b'[registry]\nurl = "http://r:8000/"\ntrust_root = "root.json"\n'


def test_host_ota_defaults_off() -> None:
    assert parse_config(BASE, "agent.toml", "/etc/edgeagent").host_ota == HostOtaConfig()


def test_host_ota_values_and_relative_paths() -> None:
    cfg = parse_config(
        BASE
        + b'[host_ota]\nenabled = true\nreboot_window = "22:30-04:00"\n'
        + b'health_window_s = 60\nslot_b = "slots/b.img"\nesp_dir = "/efi"\ncheckpoint_mb = 2\n',
        "agent.toml",
        "/etc/edgeagent",
    ).host_ota
    assert cfg.enabled
    assert cfg.reboot_window == "22:30-04:00"
    assert cfg.health_window_s == 60.0
    assert cfg.slot_a is None
    assert cfg.slot_b == "/etc/edgeagent/slots/b.img"
    assert cfg.esp_dir == "/efi"
    assert cfg.checkpoint_mb == 2


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b'reboot_window = "2am"', "host_ota.reboot_window"),
        (b'reboot_window = "02:00-02:00"', "host_ota.reboot_window"),
        (b"health_window_s = 0", "host_ota.health_window_s"),
        (b'enabled = "yes"', "host_ota.enabled"),
        (b'boot_prefix = "a b"', "host_ota.boot_prefix"),
        (b"slots = 2", "host_ota.slots"),
    ],
)
def test_host_ota_rejects_bad_values_naming_the_key(line: bytes, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_config(BASE + b"[host_ota]\n" + line + b"\n", "agent.toml", "/")

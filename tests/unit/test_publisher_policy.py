"""Pure publisher decisions: policy.toml, expiry, versions, names, the custom schema."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import ConfigError
from edgeagent.publisher.policy import (
    DEFAULT_MEM_MB,
    Policy,
    RolePolicy,
    default_policy,
    expiry,
    next_version,
    parse_expires_overrides,
    parse_policy,
    render_policy,
    snapshot_needs_refresh,
    target_custom,
    validate_name,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
PKG = Path(__file__).resolve().parents[2] / "edgeagent"
BANNED = {"trio", "socket", "subprocess", "os", "time", "random", "httpx", "shutil", "pathlib"}


@pytest.mark.parametrize("module", ["publisher/policy.py", "registry/server_core.py"])
def test_pure_publisher_modules_import_no_io(module: str) -> None:
    tree = ast.parse((PKG / module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    assert not found & BANNED


roles = st.builds(
    RolePolicy,
    threshold=st.integers(1, 5),
    keys=st.integers(5, 9),
    expires_days=st.integers(1, 5000),
    online=st.booleans(),
)


@given(st.builds(Policy, root=roles, targets=roles, snapshot=roles, timestamp=roles))
def test_policy_render_then_parse_round_trips(policy: Policy) -> None:
    assert parse_policy(render_policy(policy), "policy.toml") == policy


@given(st.binary(max_size=300))
def test_policy_parser_rejects_garbage_with_config_error_only(data: bytes) -> None:
    try:
        parse_policy(data, "p.toml")
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("p.toml: ")


def _policy_text(**changes: str) -> bytes:
    text = render_policy(default_policy()).decode()
    for old, new in changes.items():
        text = text.replace(old, new, 1)
    return text.encode()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("expires_days = 1\n", "expires_days = 0\n", "field 'timestamp.expires_days': expected a"),
        ("expires_days = 1\n", 'expires_days = "1"\n', "field 'timestamp.expires_days'"),
        ("threshold = 1", "threshold = 2", "field 'root.keys': expected at least threshold"),
        ("online = true", "online = 1", "field 'snapshot.online': expected true or false"),
        ("online = false", "online = false\ncolour = 1", "unknown field 'root.colour'"),
        ("schema_version = 1", "schema_version = 2", "field 'schema_version': expected 1"),
        ("[timestamp]", "[timestampz]", "unknown field 'timestampz'"),
        ("keys = 1\n", "", "missing field 'root.keys'"),
    ],
)
def test_policy_errors_name_file_and_field(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_policy(_policy_text(**{old: new}), "KEYS/policy.toml")
    assert str(exc.value).startswith("KEYS/policy.toml: ")
    assert message in str(exc.value)


def test_default_policy_overrides_and_rejects_bad_values() -> None:
    p = default_policy(root_threshold=2, root_keys=3, expires_days={"timestamp": 2})
    assert (p.root.threshold, p.root.keys, p.timestamp.expires_days) == (2, 3, 2)
    with pytest.raises(ConfigError, match=r"root\.keys"):
        default_policy(root_threshold=3, root_keys=2)
    with pytest.raises(ConfigError, match=r"root\.threshold"):
        default_policy(root_threshold=0, root_keys=0)
    with pytest.raises(ConfigError, match="unknown role"):
        default_policy(expires_days={"mirror": 1})


def test_expiry_is_now_plus_role_period_in_whole_seconds() -> None:
    p = default_policy()
    assert expiry(p, "timestamp", NOW) == datetime(2030, 1, 3, 3, 4, 5, tzinfo=UTC)
    assert expiry(p, "root", NOW) - expiry(p, "targets", NOW) == timedelta(days=365 - 90)
    assert expiry(p, "some-delegated-role", NOW) == expiry(p, "targets", NOW)
    with pytest.raises(ValueError, match="timezone"):
        expiry(p, "root", datetime(2030, 1, 1))


def test_versions_only_grow_by_one() -> None:
    assert next_version(1) == 2
    with pytest.raises(ValueError):
        next_version(0)


def test_snapshot_is_refreshed_when_less_than_half_its_period_is_left() -> None:
    p = default_policy()  # snapshot: 7 days
    assert not snapshot_needs_refresh(p, NOW + timedelta(days=4), NOW)
    assert snapshot_needs_refresh(p, NOW + timedelta(days=3), NOW)
    assert snapshot_needs_refresh(p, NOW - timedelta(days=1), NOW)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/b", "a\\b", "..", "x..y", ".hidden", "", "a b", "naïve", "a" * 129, "-x"],
)
def test_rejects_target_name_with_path_tricks(name: str) -> None:
    with pytest.raises(ConfigError, match="target name"):
        validate_name(name)


@pytest.mark.parametrize("name", ["hello", "hello.hvt", "app-1.2_3+b", "_x", "9"])
def test_accepts_plain_target_names(name: str) -> None:
    assert validate_name(name) == name


def test_target_custom_has_every_field_with_defaults() -> None:
    assert target_custom(version="1.0") == {
        "edgeagent": {
            "version": "1.0",
            "kind": "hvt",
            "mem_mb": DEFAULT_MEM_MB,
            "args": [],
            "devices": {"block": [], "net": []},
            "groups": [],
            "device_ids": [],
        }
    }
    full = target_custom(
        version="2",
        kind="qemu",
        mem_mb=128,
        args=["-v"],
        block=["disk0"],
        net=["net0"],
        groups=["lab"],
        device_ids=["dev-1"],
    )["edgeagent"]
    assert full == {
        "version": "2",
        "kind": "qemu",
        "mem_mb": 128,
        "args": ["-v"],
        "devices": {"block": ["disk0"], "net": ["net0"]},
        "groups": ["lab"],
        "device_ids": ["dev-1"],
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"version": ""}, "'version'"),
        ({"version": "1", "kind": "docker"}, "'kind'"),
        ({"version": "1", "mem_mb": 0}, "'mem_mb'"),
        ({"version": "1", "block": ["../sda"]}, "'devices.block'"),
    ],
)
def test_target_custom_rejects_bad_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        target_custom(**kwargs)  # type: ignore[arg-type]


def test_expires_overrides_parse_role_equals_days() -> None:
    assert parse_expires_overrides(["timestamp=2", "root=10"]) == {"timestamp": 2, "root": 10}
    for bad in ["timestamp", "mirror=1", "root=0", "root=x"]:
        with pytest.raises(ConfigError, match="--expires-days"):
            parse_expires_overrides([bad])


@given(st.text(max_size=40))
def test_accepted_names_are_single_safe_path_segments(name: str) -> None:
    try:
        validate_name(name)
    except ConfigError:
        return
    assert all(bad not in name for bad in ("/", "\\", ".."))
    assert all((not name.startswith("."), name.isascii(), name.isprintable()))

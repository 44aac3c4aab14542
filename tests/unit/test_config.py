"""agent.toml parsing: defaults, every section, and each kind of error naming its key."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.config import SCHEMA_VERSION, ListenConfig, parse_config
from edgeagent.errors import ConfigError

MINIMAL = b"""
[registry]
url = "http://127.0.0.1:8000"
trust_root = "root.json"
"""

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "agent.example.toml"


def cfg(extra: str) -> bytes:
    return MINIMAL + extra.encode()


def test_minimal_config_gets_defaults() -> None:
    c = parse_config(MINIMAL, "agent.toml", "/etc/edgeagent")
    assert c.schema_version == SCHEMA_VERSION
    assert c.registry.url == "http://127.0.0.1:8000/"
    assert c.registry.trust_root == "/etc/edgeagent/root.json"
    assert c.registry.poll_interval_s == 30.0
    assert c.paths.store == "/var/lib/edgeagent/store"
    assert c.http == ListenConfig("127.0.0.1", 8480)
    assert c.console_socket is None
    assert c.serial.ports == ()
    assert c.serial.command_mode("rollback") == "confirm"
    assert c.serial.command_mode("status") == "allowed"


def test_shipped_example_config_parses() -> None:
    c = parse_config(EXAMPLE.read_bytes(), str(EXAMPLE), str(EXAMPLE.parent))
    assert c.device.id
    assert c.limits.max_concurrent_pulls >= 1


def test_full_config() -> None:
    c = parse_config(
        cfg(
            """
poll_interval_s = 0.2
poll_jitter_s = 0
[registry.fetch]
retries = 0
[device]
id = "dev-1"
groups = ["lab", "eu"]
[paths]
store = "s"
state = "st"
[runner]
tender = "/opt/edge-tender"
accel = "kvm"
stop_grace_s = 1
[health]
heartbeat_deadline_s = 2
health_window_s = 0
crash_loop_restarts = 3
[limits]
max_workloads = 4
[serial]
ports = ["/dev/ttyS0"]
commands = { restart = "disabled", rollback = "allowed" }
[http]
listen = ""
[console_socket]
listen = "127.0.0.1:0"
"""
        ),
        "a.toml",
        "/base",
    )
    assert c.registry.poll_interval_s == 0.2
    assert c.registry.poll_jitter_s == 0.0
    assert c.registry.fetch.retries == 0
    assert c.device.groups == ("lab", "eu")
    assert c.paths.store == "/base/s"
    assert c.runner.tender == "/opt/edge-tender"
    assert c.health.health_window_s == 0.0
    assert c.serial.command_mode("restart") == "disabled"
    assert c.serial.command_mode("rollback") == "allowed"
    assert c.http is None
    assert c.console_socket == ListenConfig("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[registry.fetch]\nbogus = 1\n", "registry.fetch.bogus"),
        ("[health]\nheartbeat_deadline_sec = 1\n", "health.heartbeat_deadline_sec"),
        ("[surprise]\n", "surprise"),
        ("[serial.commands]\nreboot = 'allowed'\n", "serial.commands.reboot"),
    ],
)
def test_rejects_unknown_keys(extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"agent.toml: unknown key '{key}'"):
        parse_config(cfg(extra))


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("[limits]\nmax_workloads = 'many'\n", "limits.max_workloads", "an integer"),
        ("[limits]\nmax_workloads = 0\n", "limits.max_workloads", "an integer"),
        ("[limits]\nmax_workloads = true\n", "limits.max_workloads", "an integer"),
        ("[health]\nheartbeat_deadline_s = -1\n", "health.heartbeat_deadline_s", "a positive"),
        ("[health]\nheartbeat_deadline_s = nan\n", "health.heartbeat_deadline_s", "a positive"),
        ("[health]\nheartbeat_required = 1\n", "health.heartbeat_required", "true or false"),
        ("[device]\nid = 'has space'\n", "device.id", "a string matching"),
        ("[device]\ngroups = 'lab'\n", "device.groups", "a list"),
        ("[serial]\ncommands = { restart = 'maybe' }\n", "serial.commands.restart", "one of"),
        ("[http]\nlisten = 'localhost'\n", "http.listen", "'HOST:PORT'"),
        ("[http]\nlisten = 'h:99999'\n", "http.listen", "'HOST:PORT'"),
        ("[runner]\naccel = 'hyperv'\n", "runner.accel", "one of"),
        ("[paths]\nstore = 'x'\nstate = 'x'\n", "paths.state", "different"),
        ("[health]\nrestart_backoff_max_s = 0.1\n", "health.restart_backoff_max_s", ">="),
        ("schema_version = 2\n", "schema_version", "an integer in 1..1"),
        ("[device]\n[device.x]\n", "device.x", "unknown"),
        ("device = 3\n", "device", "a table"),
    ],
)
def test_rejects_wrong_types_naming_the_key(extra: str, key: str, expected: str) -> None:
    # TOML forbids top-level keys after a table, so top-level extras go first.
    data = extra.encode() + MINIMAL if not extra.startswith("[") else cfg(extra)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert f"'{key}'" in str(err.value)
    assert expected in str(err.value)
    assert str(err.value).startswith("agent.toml: ")


def test_poll_interval_wrong_type_message() -> None:
    data = MINIMAL.replace(b'"root.json"\n', b'"root.json"\npoll_interval_s = "x"\n')
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value) == (
        "agent.toml: key 'registry.poll_interval_s': expected a positive number, got 'x'"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[registry]\nurl = 'http://x'\n",
        b"[registry]\ntrust_root = 'r'\n",
        b"[registry]\nurl = 'ftp://x'\ntrust_root = 'r'\n",
        b"[registry\n",
        b"\xff\xfe",
    ],
)
def test_rejects_missing_or_malformed_registry(data: bytes) -> None:
    with pytest.raises(ConfigError, match=r"^agent\.toml: "):
        parse_config(data)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_config_error(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(data)


_SCALARS = st.one_of(
    st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5), st.booleans()
)


@given(
    st.sampled_from(
        [
            ("registry", "poll_interval_s"),
            ("health", "crash_loop_restarts"),
            ("limits", "max_mem_mb"),
            ("serial", "status_interval_s"),
            ("runner", "stop_grace_s"),
            ("device", "id"),
        ]
    ),
    _SCALARS,
)
def test_any_scalar_in_any_field_parses_or_names_the_key(
    where: tuple[str, str], value: object
) -> None:
    section, key = where
    rendered = repr(value).lower() if isinstance(value, bool) else repr(value)
    if isinstance(value, float) and value != value:
        rendered = "nan"
    elif isinstance(value, float) and value in (float("inf"), float("-inf")):
        rendered = "inf" if value > 0 else "-inf"
    elif isinstance(value, str):
        rendered = '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    body = {
        "registry": 'url = "http://h/"\ntrust_root = "r"\n',
    }
    text = "[registry]\n" + body["registry"]
    if section == "registry":
        text += f"{key} = {rendered}\n"
    else:
        text += f"[{section}]\n{key} = {rendered}\n"
    message = ""
    try:
        parse_config(text.encode())
    except ConfigError as exc:
        message = str(exc)
    assert not message or f"'{section}.{key}'" in message or "not valid TOML" in message

"""Console commands: parsing, dispatch, the confirmation flow, policies and rendering."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.console.commands import (
    COMMANDS,
    Reply,
    RunAction,
    Session,
    UsageError,
    parse_command,
    render_text,
    sanitize,
    status_line,
)
from edgeagent.console.lineedit import Cancelled, Line, Rejected
from edgeagent.control import ConsolePolicy, HostInfo, JsonObject, snapshot_json
from tests.fakes.fake_control import FakeControl

ALLOW_ALL = ConsolePolicy(restart="allowed", update="allowed", rollback="allowed")


def as_reply(outcome: object) -> Reply:
    assert isinstance(outcome, Reply), outcome
    return outcome


def reply(outcome: object) -> JsonObject:
    return as_reply(outcome).obj


def test_parse_known_commands() -> None:
    assert parse_command("  STATUS ") is not None
    cmd = parse_command("logs ticker -n 5")
    assert cmd is not None
    assert cmd.args == ("ticker", "5")
    cmd = parse_command("logs -n 3 ticker")
    assert cmd is not None
    assert cmd.args == ("ticker", "3")
    assert parse_command("") is None
    assert parse_command("   ") is None


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("frobnicate", "type 'help'"),
        ("restart", "usage: restart NAME"),
        ("restart a b", "usage: restart NAME"),
        ("restart ../etc", "not a workload name"),
        ("logs ticker -n 0", "from 1 to 500"),
        ("logs ticker -n 99999", "from 1 to 500"),
        ("logs ticker -n", "needs a number"),
        ("logs", "usage: logs NAME"),
        ("json maybe", "usage: json on|off"),
        ("status now", "takes no arguments"),
    ],
)
def test_rejects_malformed_commands_with_usage(line: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_command(line)
    assert fragment in str(info.value)


def test_unknown_command_gets_error_and_help_hint() -> None:
    s = Session(ALLOW_ALL)
    obj = reply(s.handle_line("reboot", FakeControl.with_demo_workloads(), 0.0))
    assert obj["ok"] is False
    assert "unknown command 'reboot'" in str(obj["error"])
    assert "help" in str(obj["error"])


def test_status_reply_carries_the_snapshot_json() -> None:
    fake = FakeControl.with_demo_workloads()
    obj = reply(Session(ALLOW_ALL).handle_line("status", fake, 0.0))
    assert obj == {"ok": True, "cmd": "status", "data": snapshot_json(fake.snapshot())}
    data = obj["data"]
    assert isinstance(data, dict)
    assert data["healthy"] is False
    assert data["reasons"] == ["kvstore: no heartbeat within 10 s"]


def test_logs_tail_and_unknown_workload() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ALLOW_ALL)
    obj = reply(s.handle_line("logs ticker -n 3", fake, 0.0))
    assert obj["data"] == {"name": "ticker", "lines": ["tick 47", "tick 48", "tick 49"]}
    err = reply(s.handle_line("logs nosuch", fake, 0.0))
    assert err["ok"] is False
    assert "no workload called 'nosuch'" in str(err["error"])
    assert "ticker" in str(err["error"])


def test_logs_escape_terminal_control_sequences_from_guest() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ALLOW_ALL)
    text = s.render(as_reply(s.handle_line("logs kvstore", fake, 0.0)))
    assert b"\x1b" not in text
    assert b"\x07" not in text
    assert b"\\x1b]0;pwned\\x07" in text
    s.json_mode = True
    raw = s.render(as_reply(s.handle_line("logs kvstore", fake, 0.0)))
    assert b"\x1b" not in raw
    assert json.loads(raw)["data"]["lines"][1].startswith("evil \x1b]0;")


def test_disabled_action_is_refused_naming_the_config_key() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="disabled"))
    obj = reply(s.handle_line("restart ticker", fake, 0.0))
    assert obj["ok"] is False
    assert "serial.commands.restart" in str(obj["error"])
    assert reply(s.handle_line("yes ticker", fake, 1.0))["error"] == "nothing to confirm"


def test_allowed_action_runs_at_once() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ALLOW_ALL)
    assert s.handle_line("restart ticker", fake, 0.0) == RunAction("restart", "ticker")
    assert s.handle_line("update", fake, 0.0) == RunAction("update", None)


def test_confirm_flow_needs_the_exact_token() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(rollback="confirm"))
    obj = reply(s.handle_line("rollback ticker", fake, 0.0))
    assert obj["ok"] is False
    assert obj["confirm"] == "yes ticker"
    assert s.handle_line("confirm ticker", fake, 1.0) == RunAction("rollback", "ticker")
    # One-shot: the same confirmation does not work twice.
    assert reply(s.handle_line("yes ticker", fake, 2.0))["error"] == "nothing to confirm"


def test_confirmation_for_another_workload_cancels() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="confirm"))
    reply(s.handle_line("restart ticker", fake, 0.0))
    obj = reply(s.handle_line("yes kvstore", fake, 1.0))
    assert "does not match" in str(obj["error"])
    assert reply(s.handle_line("yes ticker", fake, 2.0))["error"] == "nothing to confirm"


def test_any_other_line_drops_the_pending_confirmation() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="confirm"))
    reply(s.handle_line("restart ticker", fake, 0.0))
    assert reply(s.handle_line("vms", fake, 1.0))["ok"] is True
    assert reply(s.handle_line("yes ticker", fake, 2.0))["error"] == "nothing to confirm"


def test_rejected_noise_line_drops_the_pending_confirmation() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="confirm"))
    reply(s.handle_line("restart ticker", fake, 0.0))
    assert reply(s.handle_event(Rejected("noise"), fake, 0.5))["error"] == "noise"
    assert reply(s.handle_event(Line("yes ticker"), fake, 1.0))["error"] == "nothing to confirm"


def test_ctrl_c_cancels_the_pending_confirmation() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(update="confirm"))
    assert reply(s.handle_line("update", fake, 0.0))["confirm"] == "yes update"
    assert reply(s.handle_event(Cancelled(), fake, 1.0))["error"] == "cancelled"
    assert s.handle_event(Cancelled(), fake, 1.0) is None


def test_confirmation_expires() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="confirm"), confirm_window_s=10)
    reply(s.handle_line("restart ticker", fake, 0.0))
    assert "expired" in str(reply(s.handle_line("yes ticker", fake, 11.0))["error"])


def test_confirm_is_not_asked_for_an_unknown_workload() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="confirm"))
    obj = reply(s.handle_line("restart ghost", fake, 0.0))
    assert "confirm" not in obj
    assert "no workload called 'ghost'" in str(obj["error"])


def test_json_mode_switch_and_rendering() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ALLOW_ALL, echo=True)
    assert s.prompt() == b"edgeagent> "
    out = s.render(as_reply(s.handle_line("json on", fake, 0.0)))
    assert json.loads(out) == {"ok": True, "cmd": "json", "data": {"json": True, "protocol": 1}}
    assert out.endswith(b"\r\n")
    assert out.count(b"\n") == 1
    assert s.prompt() == b""  # no prompt and no echo for machines
    out = s.render(as_reply(s.handle_line("json off", fake, 0.0)))
    assert out == b"json mode off\r\n"


def test_finish_action_replies() -> None:
    s = Session(ALLOW_ALL)
    ok = s.finish_action(RunAction("restart", "ticker"), message="restarted ticker v2")
    assert ok.obj == {
        "ok": True,
        "cmd": "restart",
        "data": {"target": "ticker", "message": "restarted ticker v2"},
    }
    bad = s.finish_action(RunAction("update", None), failure="an update is already running")
    assert bad.obj == {"ok": False, "cmd": "update", "error": "an update is already running"}


@pytest.mark.parametrize(
    "line", ["help", "status", "vms", "trust", "net", "version", "logs ticker"]
)
def test_every_read_only_command_renders_as_text(line: str) -> None:
    fake = FakeControl.with_demo_workloads()
    obj = reply(Session(ALLOW_ALL).handle_line(line, fake, 0.0))
    assert obj["ok"] is True
    text = render_text(obj)
    assert text
    assert "\x1b" not in text


def test_text_rendering_of_vms_and_trust() -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ALLOW_ALL)
    vms = render_text(reply(s.handle_line("vms", fake, 0.0)))
    assert vms.splitlines()[0].split() == [
        "NAME",
        "VERSION",
        "KIND",
        "STATE",
        "RESTARTS",
        "HEARTBEAT",
        "EXIT",
        "HEALTH",
    ]
    assert "3s ago" in vms
    assert "no heartbeat within 10 s" in vms
    trust = render_text(reply(s.handle_line("trust", fake, 0.0)))
    assert "root version 1" in trust
    assert "(in 30d)" in trust
    policy = ConsolePolicy(restart="confirm")
    help_text = render_text(reply(Session(policy).handle_line("help", fake, 0.0)))
    assert "restart NAME" in help_text
    assert "[confirm]" in help_text
    assert all(spec.usage in help_text for spec in COMMANDS.values())


def test_periodic_status_line_is_one_json_object() -> None:
    fake = FakeControl.with_demo_workloads()
    line = status_line(fake.snapshot())
    assert line.endswith(b"\r\n")
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj["edgeagent"] == "status"
    assert obj["healthy"] is False
    assert [w["name"] for w in obj["workloads"]] == ["ticker", "kvstore"]
    assert "host" not in obj  # No host OTA on this device.


def test_status_line_shows_the_host_slot_and_whether_its_boot_is_blessed() -> None:
    snap = dataclasses.replace(
        FakeControl().snapshot(),
        host=HostInfo(slot="b", version="2", phase="trial", blessed=False, candidate="2"),
    )
    obj = json.loads(status_line(snap))
    assert obj["host"] == {"slot": "b", "version": "2", "phase": "trial", "blessed": False}
    assert snapshot_json(snap)["host"] == {
        "slot": "b",
        "version": "2",
        "phase": "trial",
        "blessed": False,
        "candidate": "2",
        "last": None,
        "error": None,
    }


def test_expired_trust_metadata_makes_the_device_unhealthy() -> None:
    fake = FakeControl()
    fake.expires_in_s = -1
    obj = json.loads(status_line(fake.snapshot()))
    assert obj["healthy"] is False
    assert any("timestamp metadata expired" in r for r in obj["reasons"])


def test_sanitize_escapes_controls() -> None:
    assert sanitize("a\x1b[2Jb\x9bc\td") == "a\\x1b[2Jb\\x9bc\\x09d"


@given(st.text(max_size=80))
def test_any_line_gets_at_most_one_reply_and_never_crashes(line: str) -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy())
    out = s.handle_line(line, fake, 0.0)
    if isinstance(out, Reply):
        rendered = s.render(out)
        assert rendered.count(b"\r\n") >= 1
        s.json_mode = True
        assert json.loads(s.render(out))["ok"] in (True, False)


@given(st.text(max_size=80))
def test_no_line_runs_a_confirm_policy_action_without_confirmation(line: str) -> None:
    # With every action on "confirm", a single line can never produce an action.
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="confirm", update="confirm", rollback="confirm"))
    assert not isinstance(s.handle_line(line, fake, 0.0), RunAction)


@given(st.lists(st.text(max_size=30), max_size=6))
def test_disabled_actions_never_run(lines: list[str]) -> None:
    fake = FakeControl.with_demo_workloads()
    s = Session(ConsolePolicy(restart="disabled", update="disabled", rollback="disabled"))
    for line in [*lines, "restart ticker", "yes ticker", "update", "yes update"]:
        assert not isinstance(s.handle_line(line, fake, 0.0), RunAction)


def test_policy_from_config_mapping_names_bad_keys() -> None:
    where = "agent.toml [console.actions]"
    assert ConsolePolicy.from_mapping({"restart": "allowed"}, where=where).restart == "allowed"
    with pytest.raises(
        ValueError, match=r"agent.toml \[console.actions\]: unknown action 'reboot'"
    ):
        ConsolePolicy.from_mapping({"reboot": "allowed"}, where=where)
    with pytest.raises(ValueError, match="restart = 'yes'; expected one of"):
        ConsolePolicy.from_mapping({"restart": "yes"}, where=where)

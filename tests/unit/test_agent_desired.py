"""Desired state from verified targets: selection, custom schema, limits, bad versions (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.agent.desired import (
    TargetEntry,
    Workload,
    choose,
    desired_state,
    parse_workload,
    selects,
    workload_from_json,
)
from edgeagent.errors import ConfigError
from edgeagent.publisher.policy import target_custom

SHA = "a" * 64


def entry(name: str, sha: str = SHA, **kw: object) -> TargetEntry:
    custom = target_custom(version=str(kw.pop("version", "1")), **kw)  # type: ignore[arg-type]
    return TargetEntry(name, 100, sha, custom)


def want(entries: list[TargetEntry], **kw: object) -> dict[str, Workload]:
    args: dict[str, object] = {
        "device_id": "dev-1",
        "groups": ("lab",),
        "max_workloads": 10,
        "max_mem_mb": 1000,
    }
    args.update(kw)
    return dict(desired_state(entries, **args).workloads)  # type: ignore[arg-type]


def test_publisher_custom_round_trips() -> None:
    w = parse_workload(entry("ticker", version="2.0", mem_mb=8, args=["x=1"], block=["storage"]))
    assert (w.name, w.version, w.kind, w.mem_mb, w.args, w.blocks) == (
        "ticker",
        "2.0",
        "hvt",
        8,
        ("x=1",),
        ("storage",),
    )
    assert w.key == ("ticker", "2.0", SHA)
    assert workload_from_json(w.to_json(), "state.json") == w


def test_selection_by_device_id_and_group() -> None:
    entries = [
        entry("all"),
        entry("mine", device_ids=["dev-1"]),
        entry("other", device_ids=["dev-2"]),
        entry("lab", groups=["lab"]),
        entry("eu", groups=["eu"]),
    ]
    assert sorted(want(entries)) == ["all", "lab", "mine"]


def test_targets_without_edgeagent_custom_are_not_workloads() -> None:
    plain = TargetEntry("readme.txt", 10, SHA, None)
    other = TargetEntry("x", 10, SHA, {"somebody-else": {}})
    assert want([plain, other]) == {}
    assert not selects(None, "dev-1", ())


@pytest.mark.parametrize(
    ("custom", "field"),
    [
        ({"edgeagent": {"kind": "hvt"}}, "version"),
        ({"edgeagent": {"version": ""}}, "version"),
        ({"edgeagent": {"version": "1", "kind": "spt"}}, "kind"),
        ({"edgeagent": {"version": "1", "mem_mb": "64"}}, "mem_mb"),
        ({"edgeagent": {"version": "1", "mem_mb": True}}, "mem_mb"),
        ({"edgeagent": {"version": "1", "args": "a b"}}, "args"),
        ({"edgeagent": {"version": "1", "devices": {"block": ["a/b"]}}}, "device name"),
        ({"edgeagent": {"version": "1", "devices": {"block": ["a"], "net": ["a"]}}}, "twice"),
        ({"edgeagent": {"version": "1", "kind": "xen"}}, "xen"),
        ({"edgeagent": {"version": "1", "schema": 2}}, "schema"),
    ],
)
def test_malformed_custom_is_skipped_with_a_reason(custom: object, field: str) -> None:
    d = desired_state(
        [TargetEntry("bad", 10, SHA, custom)],
        device_id="d",
        groups=(),
        max_workloads=5,
        max_mem_mb=100,
    )
    assert d.workloads == {}
    assert len(d.skipped) == 1
    assert d.skipped[0][0] == "bad"
    assert field in d.skipped[0][1]


def test_unknown_custom_keys_are_ignored() -> None:
    custom = target_custom(version="1")
    inner = custom["edgeagent"]
    assert isinstance(inner, dict)
    inner["future"] = {"x": 1}
    assert parse_workload(TargetEntry("t", 1, SHA, custom)).version == "1"


def test_target_without_sha256_is_rejected() -> None:
    with pytest.raises(ConfigError, match="no sha256"):
        parse_workload(TargetEntry("t", 1, "", target_custom(version="1")))


def test_limits_are_applied_in_name_order() -> None:
    entries = [entry(n, mem_mb=40) for n in ("c", "a", "b", "d")]
    d = desired_state(entries, device_id="d", groups=(), max_workloads=3, max_mem_mb=100)
    assert sorted(d.workloads) == ["a", "b"]
    reasons = dict(d.skipped)
    assert "max_mem_mb" in reasons["c"]
    d = desired_state(entries, device_id="d", groups=(), max_workloads=1, max_mem_mb=1000)
    assert sorted(d.workloads) == ["a"]
    assert "max_workloads" in dict(d.skipped)["b"]


def test_net_devices_are_reported_not_run() -> None:
    d = desired_state(
        [entry("echo", net=["service"])], device_id="d", groups=(), max_workloads=5, max_mem_mb=999
    )
    assert d.workloads == {}
    assert "net devices" in d.skipped[0][1]


def test_choose_install_update_keep_and_held_bad_version() -> None:
    v1 = parse_workload(entry("t", version="1"))
    v2 = parse_workload(entry("t", version="2", sha="b" * 64))
    assert choose(v1, None, []) == "install"
    assert choose(v1, v1, []) == "keep"
    assert choose(v2, v1, []) == "update"
    assert choose(v2, v1, [v2.key]) == "held"
    # A version marked bad is identified by its bytes too: same version, new bytes is new.
    v2b = parse_workload(entry("t", version="2", sha="c" * 64))
    assert choose(v2b, v1, [v2.key]) == "update"
    # A publisher downgrade is followed.
    assert choose(v1, v2, []) == "update"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.lists(st.sampled_from(["dev-1", "dev-2"]), max_size=2),
            st.lists(st.sampled_from(["lab", "eu"]), max_size=2),
            st.integers(1, 600),
        ),
        max_size=8,
        unique_by=lambda t: t[0],
    ),
    st.integers(1, 4),
    st.integers(1, 1000),
)
def test_desired_state_respects_selectors_and_limits(
    targets: list[tuple[str, list[str], list[str], int]], max_n: int, max_mem: int
) -> None:
    entries = [entry(n, device_ids=ids, groups=gs, mem_mb=m) for n, ids, gs, m in targets]
    d = desired_state(
        entries, device_id="dev-1", groups=("lab",), max_workloads=max_n, max_mem_mb=max_mem
    )
    assert len(d.workloads) <= max_n
    assert sum(w.mem_mb for w in d.workloads.values()) <= max_mem
    for name in d.workloads:
        _n, ids, gs, _m = next(t for t in targets if t[0] == name)
        assert (not ids and not gs) or "dev-1" in ids or "lab" in gs


def test_host_slot_targets_are_not_workloads_and_not_reported() -> None:
    entries = [entry("host", kind="host-slot"), entry("ticker")]
    result = desired_state(entries, device_id="dev-1", groups=(), max_workloads=10, max_mem_mb=100)
    assert set(result.workloads) == {"ticker"}
    assert result.skipped == ()

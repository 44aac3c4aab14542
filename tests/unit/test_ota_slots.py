"""The host OTA slot machine (edgeagent.ota.slots) driven against a model of systemd-boot 252.

The model device has two slots whose contents are a version label (or "garbage" while being
written), an ESP (UKI file names and loader.conf, changed only through ``bootctl.plan``) and a
persisted state file. The model boot loader follows systemd-boot 252 (Debian bookworm): entries
with no tries left sort last, otherwise by file name descending; the default is the first entry
matching loader.conf's ``default`` pattern, else the first entry; a counted entry is renamed
``+LEFT-1-DONE+1`` before it boots. Power is cut after every single ESP change, persist and write
chunk in turn (hypothesis picks where), and after each cut the device must boot a healthy slot.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import ConfigError
from edgeagent.ota import bootctl
from edgeagent.ota.slots import (
    Booted,
    Candidate,
    Decision,
    EspAction,
    Health,
    Offer,
    ReadBack,
    SlotState,
    Stage,
    WriteRefused,
    Written,
    decide,
    dump_state,
    initial_state,
    load_state,
    parse_window,
    reboot_allowed,
)

PREFIX = "edgeos"
WINDOW = 30.0
CHUNKS = 3  # A slot write is three atomic chunks in the model.


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def cand(version: str) -> Candidate:
    return Candidate(version, sha(version), 100)


class PowerCut(Exception):
    pass


@dataclass
class Device:
    """The model device; ``budget`` atomic operations happen before the power is cut."""

    names: list[str] = field(default_factory=lambda: ["edgeos-a.efi", "edgeos-b.efi"])
    conf: str = "timeout 0\ndefault edgeos-a*\n"
    content: dict[str, str] = field(default_factory=lambda: {"a": "v1", "b": "v1"})
    persisted: bytes = dump_state(initial_state("a", "v1"))
    budget: int | None = None
    now: float = 1000.0
    dead: frozenset[str] = frozenset()  # Versions whose agent never starts.
    sick: frozenset[str] = frozenset()  # Versions whose agent starts but never gets healthy.
    tampered: frozenset[str] = frozenset()  # Versions served with wrong bytes.
    boots: list[tuple[str, bool]] = field(default_factory=list)  # (slot, counted)
    writes: list[tuple[str, str]] = field(default_factory=list)  # (slot written, version)

    def tick(self) -> None:
        if self.budget is not None:
            if self.budget == 0:
                raise PowerCut
            self.budget -= 1

    def apply(self, d: Decision) -> SlotState:
        for action in d.esp:
            self.tick()
            p = bootctl.plan(action, self.names, self.conf, PREFIX, "model")
            for old, new in p.renames:
                self.names[self.names.index(old)] = new
            if p.loader_conf is not None:
                self.conf = p.loader_conf
        self.tick()
        self.persisted = dump_state(d.state)
        return d.state

    def loader_pick(self) -> str:
        """systemd-boot 252: choose, bump the counter, return the slot."""
        entries = [e for n in self.names if (e := bootctl.parse_entry(n, PREFIX)) is not None]
        entries.sort(key=lambda e: e.name, reverse=True)
        entries.sort(key=lambda e: e.bad)  # Stable: bad entries last.
        pattern = bootctl.current_default(self.conf)
        chosen = next(
            (e for e in entries if pattern and fnmatch.fnmatchcase(e.name.lower(), pattern)),
            entries[0],
        )
        if not chosen.good:
            assert chosen.left is not None
            assert chosen.done is not None
            new = f"{PREFIX}-{chosen.slot}+{max(chosen.left - 1, 0)}-{chosen.done + 1}.efi"
            self.names[self.names.index(chosen.name)] = new
        self.boots.append((chosen.slot, not chosen.good))
        return chosen.slot

    def boot(self) -> str:
        """Boot until an agent starts (a dead or garbage slot reboots, panic=10)."""
        for _ in range(8):
            slot = self.loader_pick()
            version = self.content[slot]
            if version in ("garbage", "tampered") or version in self.dead:
                continue
            return slot
        raise AssertionError(f"no bootable good slot: {self.names} {self.conf!r} {self.content}")


def healthy(dev: Device, slot: str) -> bool:
    return dev.content[slot] not in dev.sick


def run(dev: Device, offers: list[str]) -> str:
    """Boot, then act like the shell until nothing is left to do; returns the booted slot."""
    slot = dev.boot()
    state = load_state(dev.persisted)
    d = decide(state, Booted(slot, dev.now))
    if d.state.phase in ("idle", "committed", "rolled-back"):
        # A slot counted by the loader is only ever the one on trial (rule 3).
        assert not dev.boots[-1][1] or d.state.good == slot
    state, step = dev.apply(d), d.step
    pending = list(offers)
    while True:
        if step is None and pending:
            d = decide(state, Offer(cand(pending.pop(0))))
            state, step = dev.apply(d), d.step
            continue
        if step is None:
            return slot
        if step == "write":
            assert state.candidate is not None
            target = state.target
            assert target != slot, "never write the booted slot"
            version = state.candidate.version
            dev.writes.append((target, version))
            for _ in range(CHUNKS):
                dev.tick()
                dev.content[target] = "garbage"
            dev.content[target] = "tampered" if version in dev.tampered else version
            event = WriteRefused("digest") if version in dev.tampered else Written()
            d = decide(state, event)
        elif step == "read-back":
            d = decide(state, ReadBack(sha(dev.content[state.target])))
        elif step == "stage":
            d = decide(state, Stage())
        elif step in ("reboot", "reboot-in-window"):
            return run(dev, pending)
        elif step == "watch-health":
            if healthy(dev, slot):
                d = decide(state, Health(True, "", dev.now, WINDOW))
            else:
                dev.now += WINDOW
                d = decide(state, Health(False, "ticker not healthy", dev.now, WINDOW))
            if not d.esp and d.step is None:
                step = None
                continue
        state, step = dev.apply(d), d.step


def run_with_cuts(dev: Device, offers: list[str], cuts: list[int]) -> str:
    """Run; cut the power after ``cuts[i]`` operations each time; return the final slot."""
    for budget in cuts:
        dev.budget = budget
        try:
            slot = run(dev, offers)
        except PowerCut:
            continue
        dev.budget = None
        return slot
    dev.budget = None
    return run(dev, offers)


def final_state(dev: Device) -> SlotState:
    return load_state(dev.persisted)


# Scenarios -------------------------------------------------------------------------------------


def test_update_v1_to_v2_commits_and_blesses_the_new_slot() -> None:
    dev = Device()
    slot = run(dev, ["v2"])
    st_ = final_state(dev)
    assert slot == "b"
    assert (st_.good, st_.good_version, st_.phase) == ("b", "v2", "committed")
    assert sorted(dev.names) == ["edgeos-a.efi", "edgeos-b.efi"]
    assert bootctl.current_default(dev.conf) == "edgeos-b.efi"
    assert dev.boots[-1] == ("b", True)  # The one trial boot was counted...
    run(dev, [])
    assert dev.boots[-1] == ("b", False)  # ...the next boots of the good slot are not.


def test_agent_that_never_starts_falls_back_and_version_is_never_retried() -> None:
    dev = Device(dead=frozenset({"v3"}))
    run(dev, ["v2"])
    slot = run(dev, ["v3"])
    st_ = final_state(dev)
    assert slot == "b"
    assert (st_.good, st_.good_version, st_.phase) == ("b", "v2", "rolled-back")
    assert ("v3", sha("v3")) in st_.bad
    writes = len(dev.writes)
    run(dev, ["v3"])
    assert len(dev.writes) == writes, "a bad version is never written again"


def test_unhealthy_trial_rolls_back_after_the_window_and_marks_bad() -> None:
    dev = Device(sick=frozenset({"v2"}))
    slot = run(dev, ["v2"])
    st_ = final_state(dev)
    assert slot == "a"
    assert st_.phase == "rolled-back"
    assert st_.bad == (("v2", sha("v2")),)
    assert "unhealthy after 30 s" in st_.last
    assert bootctl.parse_entry(next(n for n in dev.names if "-b" in n), PREFIX).bad  # type: ignore[union-attr]


def test_tampered_slot_image_is_refused_and_never_staged() -> None:
    dev = Device(tampered=frozenset({"v2"}))
    slot = run(dev, ["v2"])
    st_ = final_state(dev)
    assert slot == "a"
    assert st_.phase == "idle"
    assert st_.failed == ("v2", sha("v2"))
    assert all(not counted for _, counted in dev.boots)  # Nothing was ever on trial.
    assert "edgeos-b+0-0.efi" in dev.names  # The written slot stays unbootable.


def test_refused_candidate_is_retried_after_agent_restart() -> None:
    state = SlotState(good="a", good_version="v1", failed=("v2", sha("v2")))
    assert decide(state, Offer(cand("v2"))).step is None
    again = decide(state, Booted("a", 0.0)).state
    assert decide(again, Offer(cand("v2"))).step == "write"


def test_write_resumes_on_the_good_slot_after_power_cut_mid_write() -> None:
    dev = Device()
    # Boot (1) + healthy boot (3) + offer (4) operations, then 2 chunks of the write: cut.
    slot = run_with_cuts(dev, ["v2"], [10])
    assert slot == "b"
    assert dev.writes == [("b", "v2"), ("b", "v2")]
    assert final_state(dev).good_version == "v2"


def test_fresh_disk_with_slot_a_on_trial_is_blessed_when_healthy() -> None:
    dev = Device(names=["edgeos-a+3-0.efi", "edgeos-b.efi"])
    run(dev, [])
    assert sorted(dev.names) == ["edgeos-a.efi", "edgeos-b.efi"]
    assert bootctl.current_default(dev.conf) == "edgeos-a.efi"


def test_offer_of_running_version_does_nothing() -> None:
    state = initial_state("a", "v1")
    assert decide(state, Offer(cand("v1"))) == Decision(state)


def test_new_offer_while_staged_unstages_and_writes_the_same_target() -> None:
    dev = Device()
    state = initial_state("a", "v1")
    for event in (Offer(cand("v2")), Written(), ReadBack(sha("v2")), Stage()):
        state = dev.apply(decide(state, event))
    assert state.phase == "staged"
    d = decide(state, Offer(cand("v3")))
    assert d.step == "write"
    assert d.state.target == "b"
    assert EspAction("mark-bad", "b") in d.esp
    assert all(a.slot == "b" or a.kind in ("bless", "default") for a in d.esp)


def test_out_of_order_events_are_programming_errors() -> None:
    state = initial_state("a", "v1")
    with pytest.raises(RuntimeError):
        decide(state, Written())
    with pytest.raises(RuntimeError):
        decide(state, Stage())


@settings(max_examples=300, deadline=None)
@given(
    versions=st.lists(st.sampled_from(["v2", "v3", "v4", "v5"]), min_size=1, max_size=4),
    dead=st.frozensets(st.sampled_from(["v2", "v3", "v4", "v5"])),
    sick=st.frozensets(st.sampled_from(["v3", "v4"])),
    tampered=st.frozensets(st.sampled_from(["v5"])),
    cuts=st.lists(st.integers(min_value=0, max_value=25), max_size=4),
)
def test_power_cut_at_any_step_leaves_a_bootable_good_slot(
    versions: list[str],
    dead: frozenset[str],
    sick: frozenset[str],
    tampered: frozenset[str],
    cuts: list[int],
) -> None:
    dev = Device(dead=dead, sick=sick, tampered=tampered)
    for v in versions:
        run_with_cuts(dev, [v], cuts)  # Device.boot asserts a healthy slot is always reached.
        st_ = final_state(dev)
        entries = bootctl.slot_entries(dev.names, PREFIX, "model")
        assert entries[st_.good].good, "the good slot's entry is always blessed"
        assert not (entries["a"].bad and entries["b"].bad)
        assert dev.content[st_.good] == st_.good_version
        broken = v in dead | sick | tampered
        if st_.good_version != v and not broken:
            # Only a power cut during the trial boot can fail a good version: the loader's one
            # try is spent, which looks exactly like a crash (ADR 0010 §4).
            assert cuts
            assert (v, sha(v)) in st_.bad
    if not cuts:
        assert {k[0] for k in final_state(dev).bad} <= dead | sick
    # A version marked bad is never written again, however often it is offered.
    writes = len(dev.writes)
    run(dev, [v for v, _ in final_state(dev).bad] * 2)
    assert len(dev.writes) == writes


# Persistence and window ------------------------------------------------------------------------


def test_state_round_trips_and_rejects_wrong_fields() -> None:
    state = replace(
        initial_state("b", "1.0"),
        phase="trial",
        candidate=cand("2.0"),
        trial_since=5.0,
        bad=(("0.9", sha("0.9")),),
    )
    assert load_state(dump_state(state)) == state
    with pytest.raises(ConfigError, match="field 'good'"):
        load_state(dump_state(state).replace(b'"good": "b"', b'"good": "c"'))
    with pytest.raises(ConfigError, match="field 'candidate'"):
        load_state(dump_state(replace(state, phase="idle")))
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_state(b"{")


def test_reboot_window() -> None:
    assert parse_window("always") is None
    w = parse_window("22:00-04:30")
    assert w == (1320, 270)
    assert reboot_allowed(w, 23 * 60)
    assert reboot_allowed(w, 60)
    assert not reboot_allowed(w, 12 * 60)
    day = parse_window("02:00-03:00")
    assert reboot_allowed(day, 150)
    assert not reboot_allowed(day, 180)
    for bad in ("2:00-3:00", "02:00-02:00", "sometimes"):
        with pytest.raises(ValueError, match=r"expected|empty"):
            parse_window(bad)

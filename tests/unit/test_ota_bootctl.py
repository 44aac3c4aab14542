"""Boot counting names on the ESP (edgeagent.ota.bootctl): parsing, plans, a directory ESP."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import OtaError
from edgeagent.ota import bootctl
from edgeagent.ota.slots import EspAction

P = "edgeos"


def test_parse_entry_follows_systemd_boot_names() -> None:
    assert bootctl.parse_entry("edgeos-a.efi", P) == bootctl.Entry("edgeos-a.efi", "a", None, None)
    e = bootctl.parse_entry("edgeos-b+1-0.efi", P)
    assert e is not None
    assert (e.slot, e.left, e.done, e.good, e.bad) == ("b", 1, 0, False, False)
    e = bootctl.parse_entry("edgeos-b+0-1.efi", P)
    assert e is not None
    assert e.bad
    e = bootctl.parse_entry("edgeos-a+3.efi", P)
    assert e is not None
    assert (e.left, e.done) == (3, 0)
    for other in ("other-a.efi", "edgeos-c.efi", "edgeos-a.conf", "edgeos-a+x.efi"):
        assert bootctl.parse_entry(other, P) is None


def test_plans_are_idempotent() -> None:
    names = ["edgeos-a+2-1.efi", "edgeos-b.efi"]
    conf = "timeout 0\ndefault edgeos-a*\neditor no\n"
    p = bootctl.plan(EspAction("bless", "a"), names, conf, P, "esp")
    assert p.renames == (("edgeos-a+2-1.efi", "edgeos-a.efi"),)
    assert bootctl.plan(EspAction("bless", "b"), names, conf, P, "esp") == bootctl.Plan()
    p = bootctl.plan(EspAction("mark-bad", "b"), names, conf, P, "esp")
    assert p.renames == (("edgeos-b.efi", "edgeos-b+0-0.efi"),)
    p = bootctl.plan(EspAction("mark-bad", "b"), ["edgeos-a.efi", "edgeos-b+0-1.efi"], conf, P, "e")
    assert p == bootctl.Plan()
    p = bootctl.plan(
        EspAction("mark-trial", "b"), ["edgeos-a.efi", "edgeos-b+0-0.efi"], conf, P, "e"
    )
    assert p.renames == (("edgeos-b+0-0.efi", "edgeos-b+1-0.efi"),)
    p = bootctl.plan(EspAction("default-trial", "b"), names, conf, P, "esp")
    assert p.loader_conf == "timeout 0\ndefault edgeos-b+1-0.efi\neditor no\n"
    assert bootctl.plan(EspAction("default-trial", "b"), names, p.loader_conf, P, "e") == (
        bootctl.Plan()
    )


def test_refuses_an_esp_with_two_entries_for_one_slot() -> None:
    names = ["edgeos-a.efi", "edgeos-a+1-0.efi", "edgeos-b.efi"]
    with pytest.raises(OtaError, match="two boot entries for slot a"):
        bootctl.plan(EspAction("bless", "b"), names, "", P, "/efi")
    with pytest.raises(OtaError, match="no boot entry edgeos-b"):
        bootctl.plan(EspAction("bless", "a"), ["edgeos-a.efi"], "", P, "/efi")


@given(st.lists(st.sampled_from(["timeout 0", "default x*", "editor no", "", "# c"]), max_size=6))
def test_set_default_leaves_exactly_one_default_line(lines: list[str]) -> None:
    out = bootctl.set_default("\n".join(lines), "edgeos-b.efi")
    assert [ln for ln in out.splitlines() if ln.startswith("default")] == ["default edgeos-b.efi"]
    assert bootctl.current_default(out) == "edgeos-b.efi"


def test_booted_slot_from_kernel_command_line() -> None:
    assert bootctl.booted_slot("console=ttyS0 edge.root=root-b quiet") == "b"
    assert bootctl.booted_slot("edge.root=root-c") is None
    assert bootctl.booted_slot("quiet") is None


def make_esp(root: Path, names: list[str], conf: str) -> bootctl.EspDir:
    (root / "EFI" / "Linux").mkdir(parents=True)
    (root / "loader").mkdir()
    for n in names:
        (root / "EFI" / "Linux" / n).write_bytes(b"MZ uki " + n.encode())
    (root / "loader" / "loader.conf").write_text(conf)
    return bootctl.EspDir(root, P)


def test_esp_dir_applies_stage_commit_sequence(tmp_path: Path) -> None:
    esp = make_esp(tmp_path, ["edgeos-a+3-0.efi", "edgeos-b.efi"], "timeout 0\ndefault edgeos-a*\n")
    for action in (
        EspAction("bless", "a"),
        EspAction("default", "a"),
        EspAction("mark-bad", "b"),
        EspAction("mark-trial", "b"),
        EspAction("default-trial", "b"),
    ):
        esp.apply(action)
    assert esp.names() == ["edgeos-a.efi", "edgeos-b+1-0.efi"]
    assert bootctl.current_default(esp.loader_conf()) == "edgeos-b+1-0.efi"
    # The loader spends the try, then the agent commits.
    linux = tmp_path / "EFI" / "Linux"
    (linux / "edgeos-b+1-0.efi").rename(linux / "edgeos-b+0-1.efi")
    esp.apply(EspAction("default", "b"))
    esp.apply(EspAction("bless", "b"))
    assert esp.names() == ["edgeos-a.efi", "edgeos-b.efi"]
    assert (linux / "edgeos-b.efi").read_bytes() == b"MZ uki edgeos-b.efi"  # Renamed, not copied.
    assert esp.loader_conf() == "timeout 0\ndefault edgeos-b.efi\n"
    assert sorted(p.name for p in (tmp_path / "loader").iterdir()) == ["loader.conf"]


def test_find_partition_by_gpt_name_in_sysfs(tmp_path: Path) -> None:
    for dev, name in (("vda", None), ("vda1", "esp"), ("vda3", "root-b")):
        (tmp_path / dev).mkdir()
        text = f"MAJOR=254\nDEVNAME={dev}\nDEVTYPE=partition\n"
        (tmp_path / dev / "uevent").write_text(text + (f"PARTNAME={name}\n" if name else ""))
    assert bootctl.find_partition("root-b", tmp_path) == Path("/dev/vda3")
    assert bootctl.find_partition("esp", tmp_path) == Path("/dev/vda1")
    assert bootctl.find_partition("root-a", tmp_path) is None

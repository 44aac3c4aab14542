"""The test bed's helpers: xl configs and dom0 scripts for guests, the per-boot archive, debs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgeagent.errors import BuildError, VmError
from edgeagent.hostos.debpkg import check_libraries, fetch, needed_libraries
from edgeagent.hostos.xen_boot import overlay
from edgeagent.hostos.xen_guest import GUEST_RE, Guest, guest_script, linux_guest


def test_pvh_guest_config_has_native_tsc_and_destroys_on_every_end() -> None:
    text = Guest("hello", "/testbed/guests/hello.xen", extra="a=1 b=2").xl_config()
    assert 'type = "pvh"' in text
    assert 'tsc_mode = "native"' in text
    assert 'extra = "a=1 b=2"' in text
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert f'{event} = "destroy"' in text


def test_pv_guest_config_has_ramdisk_and_no_tsc_mode() -> None:
    text = linux_guest().xl_config()
    assert 'type = "pv"' in text
    assert 'ramdisk = "/testbed/guest-initrd.cpio"' in text
    assert "tsc_mode" not in text


@pytest.mark.parametrize(
    "guest",
    [
        Guest("Hello", "/k"),
        Guest("a b", "/k"),
        Guest("x" * 32, "/k"),
        Guest("ok", "/k", type="hvm"),
        Guest("ok", '/k"; on_crash="preserve'),
        Guest("ok", "/k", extra="a\nb"),
    ],
)
def test_rejects_config_injection_and_bad_names(guest: Guest) -> None:
    with pytest.raises(ValueError, match=r"want|refused"):
        guest.xl_config()


def test_guest_script_runs_each_guest_with_its_config() -> None:
    script = guest_script([Guest("a", "/k1"), Guest("b", "/k2", timeout_s=7)])
    assert "xtb-guest /tmp/a.cfg a 120" in script
    assert "xtb-guest /tmp/b.cfg b 7" in script
    assert script.index("/tmp/a.cfg a") < script.index("/tmp/b.cfg b")


def test_shutdown_line_regex() -> None:
    m = GUEST_RE.search("XTB: guest hello shutdown reason=crash code=3 xl_status=0 uptime=9")
    assert m is not None
    assert m.groups() == ("hello", "crash", "3")


def test_needed_libraries_from_readelf_output() -> None:
    out = (
        " 0x0000000000000001 (NEEDED)             Shared library: [libxenlight.so.4.17]\n"
        " 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n"
        " 0x000000000000000e (SONAME)             Library soname: [libfoo.so.1]\n"
    )
    assert needed_libraries(out) == ["libxenlight.so.4.17", "libc.so.6"]


def test_overlay_refuses_files_outside_testbed(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(VmError, match="under /testbed/"):
        overlay(tmp_path / "w", "true\n", {"../etc/passwd": src}, agent=agent)


def test_overlay_packs_agent_script_and_files(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("VALUE = 1\n")
    src = tmp_path / "img"
    src.write_bytes(b"\x7fELF")
    archive = overlay(tmp_path / "w", "echo hi\n", {"guests/img": src}, agent=agent)
    with archive.open("rb") as f:
        names = subprocess.run(
            ["cpio", "-t", "--quiet"], stdin=f, capture_output=True, check=True
        ).stdout.decode()
    assert "testbed/run.sh" in names
    assert "testbed/guests/img" in names
    assert "usr/lib/edgeagent/site/edgeagent/__init__.py" in names
    assert "usr/lib/edgeagent/site/edgeagent/__pycache__/__init__.cpython-311.pyc" in names


def test_check_libraries_names_the_file_and_the_missing_library(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    shutil.copy2("/usr/bin/true", tmp_path / "bin" / "true")
    with pytest.raises(BuildError, match=r"bin/true needs .*libc\.so\.6"):
        check_libraries(tmp_path, [tmp_path / "bin" / "true"])
    libs = tmp_path / "lib" / "x86_64-linux-gnu"
    libs.mkdir(parents=True)
    (libs / "libc.so.6").write_bytes(b"")
    check_libraries(tmp_path, [tmp_path / "bin" / "true"])


def test_fetch_uses_cached_debs_and_picks_the_newest_version(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    for version in ("1.9", "1.10", "1:0.1"):
        (shared / f"foo_{version.replace(':', '%3a')}_amd64.deb").write_bytes(b"")
    (shared / "foo-bar_9_amd64.deb").write_bytes(b"")
    found = fetch(["foo"], tmp_path / "cache", also=[shared])
    assert found["foo"].name == "foo_1%3a0.1_amd64.deb"

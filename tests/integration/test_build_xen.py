"""The xen platform's images: reproducible builds, the PVH layout, no SSE, refused recipes.

These run without Xen: real gcc and binutils, real files, and one real QEMU TCG boot of the
PVH entry path (QEMU's ``-kernel`` loads a PVH ELF and enters it in 32-bit mode, as Xen
does; without Xen's CPUID leaves the platform uses COM1 and isa-debug-exit, ADR 0011). The
boot on Xen itself is tested in the Xen test bed (tests/integration/test_xen_testbed.py).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from edgeagent.build import BuiltImage, build_image
from edgeagent.buildplan import check_image
from edgeagent.cli import main
from edgeagent.errors import BuildError
from edgeagent.vmm.imageformat import recognise

from .images import RECIPES_DIR, built_fixture  # noqa: F401 (fixture)

XEN_TARGETS = ("hello.xen", "ticker.xen")
PT_LOAD, PT_NOTE, PF_X, PF_W = 1, 4, 1, 2
XEN_ELFNOTE_PHYS32_ENTRY = 18
QEMU = shutil.which("qemu-system-x86_64")
HANG_GUARD_S = 60


@pytest.fixture(scope="module")
def other_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of abi/ and image-recipes/ at another, deeper path (a second checkout)."""
    root = tmp_path_factory.mktemp("xen-elsewhere") / "some" / "other checkout"
    ignore = shutil.ignore_patterns("out", "build", ".*.lock")
    shutil.copytree(RECIPES_DIR.parent / "abi", root / "abi")
    shutil.copytree(RECIPES_DIR, root / "image-recipes", ignore=ignore)
    return root / "image-recipes"


def elf_layout(
    data: bytes,
) -> tuple[int, list[tuple[int, int, int, int]], list[tuple[bytes, int, bytes]]]:
    """Return (e_entry, PT_LOADs as (vaddr, flags, filesz, memsz), notes as (name, type, desc))."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4] == 2, "not an ELF64 file"
    (e_entry, e_phoff) = struct.unpack_from("<QQ", data, 24)
    (e_phnum,) = struct.unpack_from("<H", data, 56)
    loads, notes = [], []
    for i in range(e_phnum):
        p_type, flags, off, vaddr, _pa, filesz, memsz, _al = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + 56 * i
        )
        if p_type == PT_LOAD:
            loads.append((vaddr, flags, filesz, memsz))
        elif p_type == PT_NOTE:
            pos = off
            while pos + 12 <= off + filesz:
                namesz, descsz, n_type = struct.unpack_from("<III", data, pos)
                desc = pos + 12 + (namesz + 3) // 4 * 4
                notes.append(
                    (data[pos + 12 : pos + 12 + namesz], n_type, data[desc : desc + descsz])
                )
                pos = desc + (descsz + 3) // 4 * 4
    return e_entry, loads, notes


def test_hello_and_ticker_build_for_xen(built: dict[str, BuiltImage]) -> None:
    for target in XEN_TARGETS:
        assert target in built
        assert built[target].path.stat().st_size < 256 * 1024, target


def test_building_xen_images_twice_gives_identical_bytes(
    built: dict[str, BuiltImage], tmp_path: Path
) -> None:
    for target in XEN_TARGETS:
        name, platform = target.split(".")
        again = build_image(RECIPES_DIR / name, platform, tmp_path / target)
        assert again.sha256 == built[target].sha256, target


def test_building_xen_images_from_another_checkout_gives_identical_bytes(
    built: dict[str, BuiltImage],
    other_tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    monkeypatch.setenv("CFLAGS", "-O0 -g")
    for target in XEN_TARGETS:
        name, platform = target.split(".")
        copy = build_image(other_tree / name, platform, tmp_path / target)
        assert copy.sha256 == built[target].sha256, target


def test_cli_builds_xen_to_image_recipes_out(
    other_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(other_tree / "hello"), "--platform", "xen", "-q"]) == 0
    out = other_tree / "out" / "hello.xen"
    assert capsys.readouterr().out.endswith(f"  {out}\n")
    assert recognise(out.name, out.read_bytes()).kind == "pvh"


def test_xen_image_has_the_pvh_entry_note_inside_an_executable_segment(
    built: dict[str, BuiltImage],
) -> None:
    for target in XEN_TARGETS:
        data = built[target].path.read_bytes()
        e_entry, loads, notes = elf_layout(data)
        pvh = [d for n, t, d in notes if n == b"Xen\x00" and t == XEN_ELFNOTE_PHYS32_ENTRY]
        assert len(pvh) == 1, f"{target}: {notes}"
        # 8 bytes: QEMU reads a 64-bit entry from ELF64 images; the upper half is 0.
        (entry,) = struct.unpack("<Q", pvh[0])
        assert entry == e_entry
        text = [(v, ms) for v, f, _fs, ms in loads if f & PF_X]
        assert len(text) == 1
        assert text[0][0] <= entry < text[0][0] + text[0][1]
        # The other notes Xen's loader reads, and no Solo5 note (this is not an hvt image).
        kinds = {t: d for n, t, d in notes if n == b"Xen\x00"}
        assert kinds[5] == b"xen-3.0\x00"
        assert kinds[8] == b"generic\x00"
        assert not any(n == b"Solo5\x00" for n, _t, _d in notes)
        assert recognise(target, data).kind == "pvh"


def test_xen_image_segments_are_aligned_and_never_writable_and_executable(
    built: dict[str, BuiltImage],
) -> None:
    _entry, loads, _notes = elf_layout(built["ticker.xen"].path.read_bytes())
    assert loads[0][:2] == (0x100000, 5)  # text first, at 1 MiB, R+X
    assert [f for _v, f, _fs, _ms in loads] == [5, 4, 6, 6]
    assert loads[-1][2] == 0
    assert loads[-1][3] > 0
    assert all(v % 4096 == 0 and (v + ms) % 4096 == 0 for v, _f, _fs, ms in loads)
    assert not any(f & PF_W and f & PF_X for _v, f, _fs, _ms in loads)


def test_no_xen_image_contains_sse_instructions(built: dict[str, BuiltImage]) -> None:
    for target in XEN_TARGETS:
        argv = ["objdump", "-d", str(built[target].path)]
        listing = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert "cpuid" in listing, f"{target}: objdump produced no disassembly of the platform"
        bad = [ln for ln in listing.splitlines() if re.search(r"%[xyz]mm|mxcsr|rdtscp", ln)]
        assert not bad, f"{target}: SSE/AVX or rdtscp instructions: {bad[:3]}"


def test_check_image_refuses_an_elf_without_the_pvh_note(built: dict[str, BuiltImage]) -> None:
    data = bytearray(built["hello.xen"].path.read_bytes())
    at = bytes(data).index(struct.pack("<III", 4, 8, XEN_ELFNOTE_PHYS32_ENTRY))
    struct.pack_into("<I", data, at + 8, 99)  # the entry note becomes an unknown note
    with pytest.raises(BuildError, match="exactly one Xen PVH entry note"):
        check_image(bytes(data), "xen")
    with pytest.raises(BuildError, match="ABI1"):
        check_image(built["hello.xen"].path.read_bytes(), "hvt")


def test_check_image_refuses_a_pvh_entry_outside_the_text(built: dict[str, BuiltImage]) -> None:
    data = bytearray(built["hello.xen"].path.read_bytes())
    at = bytes(data).index(struct.pack("<III", 4, 8, XEN_ELFNOTE_PHYS32_ENTRY))
    struct.pack_into("<Q", data, at + 16, 0x4000_0000)  # points into no segment
    with pytest.raises(BuildError, match="not in an executable segment"):
        check_image(bytes(data), "xen")


RECIPE = """name = "{name}"
version = "1.0.0"
sources = ["main.c"]
libos = {libos}
platforms = ["xen"]
memory_mb = 4
"""


@pytest.mark.parametrize(
    ("libos", "devices", "field", "what"),
    [
        ('["console", "block"]', "", "libos", "part 'block' is not available on platform 'xen'"),
        ('["net"]', "", "libos", "part 'net' is not available on platform 'xen'"),
        ('["console"]', '[devices]\nblock = ["storage"]\n', "platforms", "platform 'xen' has no"),
    ],
)
def test_recipe_asking_for_block_or_net_on_xen_is_refused_naming_file_and_field(
    other_tree: Path,
    capsys: pytest.CaptureFixture[str],
    libos: str,
    devices: str,
    field: str,
    what: str,
) -> None:
    name = f"xenblk{len(libos)}{len(devices)}"
    folder = other_tree / name
    folder.mkdir()
    (folder / "recipe.toml").write_text(RECIPE.format(name=name, libos=libos) + devices)
    (folder / "main.c").write_text(
        "int app_main(int c, char **v) { (void)c; (void)v; return 0; }\n"
    )
    assert main(["build", str(folder), "--platform", "xen"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'recipe.toml'}: field '{field}': " in err
    assert what in err
    assert "no block or net front-ends" in err
    assert not (other_tree / "out" / f"{name}.xen").exists()


# ---- the PVH boot path under QEMU TCG (no Xen: COM1 + isa-debug-exit) ------------------------

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


def qemu_pvh(image: Path, append: str) -> tuple[int, str]:
    assert QEMU is not None
    argv = [QEMU, "-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults", "-m", "16"]
    argv += ["-display", "none", "-serial", "stdio", "-nic", "none"]
    argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(image)]
    argv += ["-append", append]
    proc = subprocess.run(argv, capture_output=True, timeout=HANG_GUARD_S, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace")


def guest_lines(out: str) -> list[str]:
    lines = out.replace("\r", "").splitlines()
    return lines[lines.index("Hello, world from edgeagent hello") :]


@needs_qemu
def test_pvh_entry_reaches_long_mode_and_the_app_under_qemu(built: dict[str, BuiltImage]) -> None:
    rc, out = qemu_pvh(built["hello.xen"].path, "alpha beta=2")
    assert rc == 1, out  # isa-debug-exit: (0 << 1) | 1
    assert guest_lines(out) == [
        "Hello, world from edgeagent hello",
        "arg[1]=alpha",
        "arg[2]=beta=2",
        "SUCCESS",
        "EXIT status=0 reason=poweroff",
    ]


@needs_qemu
@pytest.mark.parametrize(
    ("append", "rc", "line"),
    [
        ("exit=3", 7, "EXIT status=3 reason=crash"),
        ("abort", 255, "EXIT status=255 reason=crash"),
    ],
)
def test_exit_status_line_names_status_and_shutdown_reason(
    built: dict[str, BuiltImage], append: str, rc: int, line: str
) -> None:
    got_rc, out = qemu_pvh(built["hello.xen"].path, append)
    assert got_rc == rc, out
    assert guest_lines(out)[-1] == line


@needs_qemu
def test_clock_without_xen_aborts_with_a_clear_message(built: dict[str, BuiltImage]) -> None:
    rc, out = qemu_pvh(built["ticker.xen"].path, "count=1")
    assert rc == 255, out
    assert "clock: the xen platform's clock needs Xen (no Xen CPUID leaves)" in out
    assert "HEARTBEAT" not in out

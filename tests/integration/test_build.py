"""`edgeagent build`: every recipe builds, builds are reproducible, bad recipes fail clearly.

Real gcc and binutils, real files; images go to temporary folders (the build folders live in
the tree's image-recipes/build/, which the build locks per recipe and platform).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from edgeagent.build import BuiltImage, build_image
from edgeagent.cli import main
from edgeagent.recipe import parse_recipe

from .images import RECIPES_DIR, all_targets, built_fixture  # noqa: F401 (fixture)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def other_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of abi/ and image-recipes/ at another, deeper path (a second checkout)."""
    root = tmp_path_factory.mktemp("elsewhere") / "a" / "different checkout"
    ignore = shutil.ignore_patterns("out", "build", ".*.lock")
    shutil.copytree(RECIPES_DIR.parent / "abi", root / "abi")
    shutil.copytree(RECIPES_DIR, root / "image-recipes", ignore=ignore)
    return root / "image-recipes"


def test_every_recipe_builds_for_every_platform(built: dict[str, BuiltImage]) -> None:
    assert sorted(built) == sorted(f"{n}.{p}" for n, p in all_targets())
    for image in built.values():
        assert image.sha256 == sha(image.path)
    for name in ("hello", "ticker"):
        assert f"{name}.qemu" in built
    for case in ("ptr", "len", "hypercall", "port", "wtext", "triplefault", "flood", "cookie"):
        assert f"hostile-{case}.hvt" in built


def test_cli_prints_sha256_line(
    built: dict[str, BuiltImage], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hello.hvt"
    rc = main(["build", str(RECIPES_DIR / "hello"), "--platform", "hvt", "-o", str(out), "-q"])
    assert rc == 0
    assert capsys.readouterr().out == f"sha256 {sha(out)}  {out}\n"


def test_building_twice_gives_identical_bytes(built: dict[str, BuiltImage], tmp_path: Path) -> None:
    for target in ("hello.hvt", "hello.qemu", "kvstore.hvt"):
        name, platform = target.split(".")
        again = build_image(RECIPES_DIR / name, platform, tmp_path / target)
        assert again.sha256 == built[target].sha256, target


def test_building_from_another_checkout_path_gives_identical_bytes(
    built: dict[str, BuiltImage],
    other_tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A different path, working directory and environment must not change a byte.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    monkeypatch.setenv("CFLAGS", "-O0 -g")
    for target in ("hello.hvt", "hello.qemu", "ticker.hvt", "echo.hvt"):
        name, platform = target.split(".")
        copy = build_image(other_tree / name, platform, tmp_path / target)
        assert copy.sha256 == built[target].sha256, target


def test_default_output_is_image_recipes_out(other_tree: Path) -> None:
    image = build_image(other_tree / "hello", "qemu")
    assert image.path == other_tree / "out" / "hello.qemu"


def test_hvt_image_layout_matches_the_abi(built: dict[str, BuiltImage]) -> None:
    data = built["kvstore.hvt"].path.read_bytes()
    (e_entry, e_phoff) = struct.unpack_from("<QQ", data, 24)
    (e_phnum,) = struct.unpack_from("<H", data, 56)
    loads, notes = [], []
    for i in range(e_phnum):
        p_type, flags, off, vaddr, _pa, filesz, memsz, _al = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + 56 * i
        )
        if p_type == 1:
            loads.append((vaddr, flags, filesz, memsz))
        elif p_type == 4:
            notes.append(struct.unpack_from("<III", data, off))
    assert loads[0][:2] == (0x100000, 5)  # text first, R+X
    assert [f for _v, f, _fs, _ms in loads] == [5, 4, 6, 6]  # no W+X anywhere
    assert loads[-1][2] == 0  # BSS: its own PT_LOAD, p_filesz 0
    assert loads[-1][3] > 0
    assert all(v % 4096 == 0 and (v + ms) % 4096 == 0 for v, _f, _fs, ms in loads)
    assert loads[0][0] <= e_entry < loads[0][0] + loads[0][3]
    # ABI1 (target 1, version 2) and MFT1 with the reserved entry plus "storage".
    assert sorted(notes) == [(6, 16, 0x31494241), (6, 4 + 8 + 2 * 104, 0x3154464D)]


def write_recipe(tree: Path, name: str, toml: str, source: str | None = None) -> Path:
    folder = tree / name
    folder.mkdir()
    (folder / "recipe.toml").write_text(toml)
    if source is not None:
        (folder / "main.c").write_text(source)
    return folder


RECIPE = """name = "{name}"
version = "1.0.0"
sources = ["main.c"]
libos = ["console"]
platforms = ["hvt"]
memory_mb = 4
"""


def test_invalid_recipe_is_a_clear_error_and_exit_2(
    other_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_recipe(other_tree, "typo", RECIPE.format(name="typo") + "memroy_mb = 4\n", "")
    assert main(["build", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeagent: error: ")
    assert f"{folder / 'recipe.toml'}: field 'memroy_mb': unknown key" in err


def test_missing_source_is_a_clear_error_and_exit_2(
    other_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_recipe(other_tree, "nosrc", RECIPE.format(name="nosrc"))
    assert main(["build", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "field 'sources[0]': expected an existing file" in err
    assert str(folder / "main.c") in err


def test_recipe_name_must_match_its_folder(
    other_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_recipe(other_tree, "folder", RECIPE.format(name="other"), "")
    assert main(["build", str(folder)]) == 2
    assert "field 'name': expected the recipe folder's name 'folder'" in capsys.readouterr().err


def test_platform_the_recipe_does_not_list_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(RECIPES_DIR / "kvstore"), "--platform", "qemu"]) == 2
    assert "platform 'qemu' is not supported by this recipe" in capsys.readouterr().err


def test_missing_recipe_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tmp_path)]) == 2
    assert "no recipe.toml" in capsys.readouterr().err


def test_compiler_error_is_exit_1_with_the_compiler_output(
    other_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = "int app_main(int argc, char **argv) { return undeclared; }\n"
    folder = write_recipe(other_tree, "broken", RECIPE.format(name="broken"), src)
    assert main(["build", str(folder), "-q"]) == 1
    err = capsys.readouterr().err
    assert "cc broken/main.c failed" in err
    assert "undeclared" in err


def test_app_using_a_part_it_did_not_list_fails_to_link(
    other_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = (
        '#include "libos.h"\n'
        "int app_main(int c, char **v) { (void)c; (void)v; free(malloc(1)); return 0; }\n"
    )
    folder = write_recipe(other_tree, "nolink", RECIPE.format(name="nolink"), src)
    assert main(["build", str(folder), "-q"]) == 1
    assert "undefined reference to `malloc'" in capsys.readouterr().err


def test_shipped_recipes_are_valid_and_documented() -> None:
    readme = (RECIPES_DIR / "README.md").read_text()
    for name, _platform in all_targets():
        recipe = parse_recipe((RECIPES_DIR / name / "recipe.toml").read_bytes())
        assert recipe.name == name
        if not name.startswith("hostile-"):
            assert f"`{name}`" in readme, f"{name} is not described in image-recipes/README.md"


def test_no_image_contains_sse_instructions(built: dict[str, BuiltImage]) -> None:
    # SSE at CPL0 ends the guest on our KVM (shared/docs/hvt-abi.md): -mgeneral-regs-only
    # must keep every xmm/ymm register and MXCSR access out of every image.
    for target, image in sorted(built.items()):
        argv = ["objdump", "-d", str(image.path)]
        if target.endswith(".qemu"):
            argv = ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", str(image.path)]
        listing = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert "xor" in listing, f"{target}: objdump produced no disassembly"
        bad = [ln for ln in listing.splitlines() if re.search(r"%[xy]mm|mxcsr", ln)]
        assert not bad, f"{target}: SSE instructions: {bad[:3]}"

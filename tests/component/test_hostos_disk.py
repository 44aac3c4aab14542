"""The host image's disk assembly keeps holes, and the repro report names what differs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeagent.hostos import layout as lay
from edgeagent.hostos.build import Builder, repro_report
from edgeagent.hostos.recipe import parse_recipe

RECIPE_PATH = Path(__file__).resolve().parents[2] / "host-os" / "recipe.toml"
RECIPE = parse_recipe(RECIPE_PATH.read_bytes(), "recipe.toml")


def _image(path: Path, size: int, data_at: dict[int, bytes]) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        for off, data in data_at.items():
            f.seek(off)
            f.write(data)
    return path


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (Debian fdisk) missing")
def test_disk_holds_partitions_at_their_offsets_and_keeps_zero_blocks_as_holes(
    tmp_path: Path,
) -> None:
    layout = lay.disk_layout(RECIPE)
    esp = _image(tmp_path / "esp.img", 4 << 20, {0: b"ESP!", 3 << 20: b"tail"})
    root = _image(tmp_path / "root.img", 2 << 20, {100: b"ROOT"})
    builder = Builder(RECIPE, RECIPE_PATH, tmp_path / "out", tmp_path / "cache")
    (tmp_path / "out").mkdir()
    disk = builder.disk(layout, {"esp": esp, "root-a": root, "root-b": root})
    assert disk.stat().st_size == layout.size
    data = disk.read_bytes()
    assert data[512:520] == b"EFI PART"  # the GPT header is in LBA 1
    esp_off = layout.partition("esp").offset
    assert data[esp_off : esp_off + 4] == b"ESP!"
    assert data[esp_off + (3 << 20) : esp_off + (3 << 20) + 4] == b"tail"
    for name in ("root-a", "root-b"):
        off = layout.partition(name).offset
        assert data[off + 100 : off + 104] == b"ROOT"
    # Only the GPT and a few 64 KiB blocks hold data; the rest of ~470 MiB is holes.
    assert disk.stat().st_blocks * 512 < 4 << 20


def test_repro_report_names_the_partition_of_a_difference(tmp_path: Path) -> None:
    layout = lay.disk_layout(RECIPE)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    off = layout.partition("data").offset + 0x400
    _image(a / "disk.img", layout.size, {off: b"\x01\x02"})
    _image(b / "disk.img", layout.size, {off: b"\x01\x03"})
    for d in (a, b):
        (d / "manifest.json").write_text("{}")
    report = repro_report(a, b, layout)
    assert "manifest.json: identical" in report
    assert "disk.img: 1 bytes differ" in report
    assert "(partition data +0x401)" in report

"""The flash decision core: block maps, write plans, target safety, watch events, manifests."""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import ConfigError, DigestMismatchError, ExpiredError, SignatureError
from edgeagent.flash.manifest import check_image, verify_manifest
from edgeagent.flash.plan import (
    ALIGN,
    BlockMap,
    TargetFacts,
    Usage,
    WatchState,
    build_plan,
    decide_target,
    extents_from_bmap,
    is_candidate,
    parse_bmap,
    parse_mountinfo,
    parse_swaps,
    progress_line,
    usage_of,
)
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository

MiB = 1024 * 1024

extents_st = st.lists(
    st.tuples(st.integers(0, 1 << 24), st.integers(0, 1 << 20)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=20,
)


@given(extents_st, st.integers(0, 3 * ALIGN))
def test_plan_covers_every_mapped_byte_with_aligned_bounded_chunks(
    extents: list[tuple[int, int]], tail: int
) -> None:
    size = max([e for _, e in extents], default=0) + tail
    plan = build_plan(extents, size, chunk_bytes=64 * 1024)
    chunks = plan.chunks
    for c in chunks:
        assert c.offset % ALIGN == 0
        assert 0 < c.length <= 64 * 1024
        assert c.end <= size
        assert c.length % ALIGN == 0 or c.end == size
    for a, b in itertools.pairwise(chunks):
        assert a.end <= b.offset
    for s, e in extents:
        for byte in {s, e - 1} if e > s else set():
            assert any(c.offset <= byte < c.end for c in chunks), (s, e, byte)
    # What the plan skips and what it writes tile the image exactly.
    spans = sorted([(c.offset, c.end) for c in chunks] + plan.unwritten())
    pos = 0
    for s, e in spans:
        assert s == pos
        pos = e
    assert pos == size


def test_plan_rejects_extent_outside_image() -> None:
    with pytest.raises(ValueError, match="outside the image"):
        build_plan([(0, 10)], 5)


BMAP = b"""<?xml version="1.0" ?>
<bmap version="2.0">
    <ImageSize> 40960 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 10 </BlocksCount>
    <MappedBlocksCount> 4 </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> 0 </BmapFileChecksum>
    <BlockMap>
        <Range chksum="ab"> 0-1 </Range>
        <Range chksum="cd"> 5 </Range>
        <Range chksum="ef"> 9 </Range>
    </BlockMap>
</bmap>
"""


def test_parses_bmaptool_block_map() -> None:
    bmap = parse_bmap(BMAP, "disk.img.bmap")
    assert bmap == BlockMap(40960, 4096, ((0, 1), (5, 5), (9, 9)))
    assert extents_from_bmap(bmap) == [(0, 8192), (20480, 24576), (36864, 40960)]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (BMAP.replace(b"<bmap", b"<foo").replace(b"</bmap", b"</foo"), "<bmap>"),
        (BMAP.replace(b'"2.0"', b'"3.0"'), "version"),
        (BMAP.replace(b"> 4096 <", b"> 1000 <"), "BlockSize"),
        (BMAP.replace(b"> 9 <", b"> 10 <"), "Range"),
        (BMAP.replace(b"> 5 <", b"> 0 <"), "sorted"),
        (BMAP.replace(b"> 40960 <", b"> -1 <"), "ImageSize"),
        (b"<bmap", "XML"),
    ],
)
def test_rejects_malformed_block_map(data: bytes, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_bmap(data, "disk.img.bmap")


def test_rejects_block_map_with_entity_expansion_attack() -> None:
    laughs = b'<?xml version="1.0"?><!DOCTYPE bmap [<!ENTITY a "aaaa">]><bmap version="2.0"/>'
    with pytest.raises(ConfigError, match="DTD"):
        parse_bmap(laughs, "evil.bmap")


@given(st.binary(max_size=300))
def test_block_map_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_bmap(data, "fuzz.bmap")


MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 253:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "40 27 8:17 / /media/usb\\040stick rw - vfat /dev/sdb1 rw\n"
    "41 27 8:2 / /boot rw - ext4 /dev/sda2 rw\n"
    "garbage line\n"
)


def test_mountinfo_and_swaps_parse() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [(m.devnum, m.mountpoint) for m in mounts] == [
        ("0:21", "/proc"),
        ("253:0", "/"),
        ("8:17", "/media/usb stick"),
        ("8:2", "/boot"),
    ]
    swaps = parse_swaps("Filename Type Size Used Priority\n/dev/sdc2 partition 1 0 -2\n")
    assert swaps == ["/dev/sdc2"]


def test_usage_finds_partitions_and_system_mounts() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    usb = usage_of({"8:16", "8:17"}, {"/dev/sdb", "/dev/sdb1"}, mounts, [])
    assert usb == Usage(("/media/usb stick",), ())
    sda = usage_of({"8:0", "8:1", "8:2"}, {"/dev/sda"}, mounts, [])
    assert sda.system == ("/boot",)
    btrfs = [*mounts, parse_mountinfo("50 1 0:45 / /home rw - btrfs /dev/sdd1 rw\n")[0]]
    assert usage_of({"8:48", "8:49"}, {"/dev/sdd", "/dev/sdd1"}, btrfs, []).mounted == ("/home",)
    swap = usage_of({"8:32", "8:34"}, {"/dev/sdc", "/dev/sdc2"}, mounts, ["/dev/sdc2"])
    assert swap.system == ("swap:/dev/sdc2",)


PLAN = build_plan([(0, 8 * MiB)], 16 * MiB)
STICK = TargetFacts("/dev/sdb", True, 32 * MiB, removable=True, serial="S1")


def test_removable_unmounted_big_enough_target_is_allowed() -> None:
    d = decide_target(STICK, PLAN, force=False)
    assert d.allowed
    assert not d.refusals
    assert is_candidate(STICK, PLAN)


def test_refuses_mounted_target_unless_forced() -> None:
    mounted = TargetFacts(
        "/dev/sdb", True, 32 * MiB, removable=True, usage=Usage(("/media/usb",), ())
    )
    d = decide_target(mounted, PLAN, force=False)
    assert not d.allowed
    assert [r.code for r in d.refusals] == ["mounted"]
    assert "/media/usb" in d.refusals[0].message
    forced = decide_target(mounted, PLAN, force=True)
    assert forced.allowed
    assert [r.code for r in forced.overridden] == ["mounted"]
    assert not is_candidate(mounted)


def test_refuses_running_system_disk_even_with_force() -> None:
    system = TargetFacts("/dev/vda", True, 1 << 40, removable=True, usage=Usage(("/",), ("/",)))
    d = decide_target(system, PLAN, force=True)
    assert not d.allowed
    assert d.refusals[0].code == "system"
    assert d.refusals[0].hard


def test_refuses_target_too_small_for_the_data_even_with_force() -> None:
    tiny = TargetFacts("/dev/sdb", True, 4 * MiB, removable=True)
    d = decide_target(tiny, PLAN, force=True)
    assert not d.allowed
    assert d.refusals[0].code == "too-small"


def test_smaller_than_image_but_data_fits_needs_force() -> None:
    small = TargetFacts("/dev/sdb", True, 12 * MiB, removable=True)
    assert [r.code for r in decide_target(small, PLAN, force=False).refusals] == [
        "smaller-than-image"
    ]
    assert decide_target(small, PLAN, force=True).allowed


def test_refuses_internal_disk_and_partition_unless_forced() -> None:
    internal = TargetFacts("/dev/nvme1n1p1", True, 1 << 34, is_partition=True)
    codes = [r.code for r in decide_target(internal, PLAN, force=False).refusals]
    assert codes == ["not-removable", "partition"]
    assert decide_target(internal, PLAN, force=True).allowed


def test_refuses_read_only_target_even_with_force() -> None:
    locked = TargetFacts("/dev/sdb", True, 32 * MiB, removable=True, read_only=True)
    assert not decide_target(locked, PLAN, force=True).allowed


def test_plain_file_target_needs_no_force() -> None:
    assert decide_target(TargetFacts("out.img", False, 0), PLAN, force=False).allowed


def test_watch_flashes_each_inserted_medium_once() -> None:
    w = WatchState()
    w.seed(["sda"])
    assert not w.on_event("change", "sda", 100, True)  # Present at start.
    assert w.on_event("add", "sdb", 100, True)
    assert not w.on_event("change", "sdb", 100, True)  # Same medium, another event.
    assert not w.on_event("change", "sdb", 0, True)  # Card pulled out of the reader.
    assert w.on_event("change", "sdb", 100, True)  # Next card.
    assert not w.on_event("add", "sdc", 100, False)  # Not a candidate (e.g. mounted).
    assert not w.on_event("remove", "sdb", 0, True)
    assert w.on_event("add", "sdb", 100, True)


def test_progress_line_shows_rate_and_eta() -> None:
    line = progress_line("write", 50 * MiB, 200 * MiB, 1.0)
    assert "25%" in line
    assert "50.0 MiB/s" in line
    assert "ETA 3s" in line


# Offline manifests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, Path]:
    tmp = tmp_path_factory.mktemp("manifest")
    repo = Repository.init(tmp / "repo")
    image = tmp / "disk.img"
    image.write_bytes(b"edge" * 1000)
    manifest = repo.sign_manifest(
        [("disk.img", image, target_custom(version="1", kind="host-disk"))]
    )
    return repo.root_path.read_bytes(), manifest, image


NOW = datetime.now(UTC)


def test_manifest_signed_by_targets_key_verifies(signed: tuple[bytes, bytes, Path]) -> None:
    root, manifest, image = signed
    target = verify_manifest(root, manifest, "disk.img", NOW)
    assert target.length == 4000
    import hashlib

    check_image(target, 4000, hashlib.sha256(image.read_bytes()).hexdigest(), "disk.img")


def test_rejects_manifest_with_forged_entry(signed: tuple[bytes, bytes, Path]) -> None:
    root, manifest, _ = signed
    forged = manifest.replace(b'"length": 4000', b'"length": 4001')
    assert forged != manifest
    with pytest.raises(SignatureError, match="threshold"):
        verify_manifest(root, forged, "disk.img", NOW)


def test_rejects_manifest_of_another_registry(
    signed: tuple[bytes, bytes, Path], tmp_path: Path
) -> None:
    _, manifest, _ = signed
    other = Repository.init(tmp_path / "other").root_path.read_bytes()
    with pytest.raises(SignatureError):
        verify_manifest(other, manifest, "disk.img", NOW)


def test_rejects_expired_manifest(signed: tuple[bytes, bytes, Path]) -> None:
    root, manifest, _ = signed
    with pytest.raises(ExpiredError):
        verify_manifest(root, manifest, "disk.img", NOW + timedelta(days=400))


def test_rejects_tampered_image_digest(signed: tuple[bytes, bytes, Path]) -> None:
    root, manifest, _ = signed
    target = verify_manifest(root, manifest, "disk.img", NOW)
    with pytest.raises(DigestMismatchError, match="sha256"):
        check_image(target, 4000, "0" * 64, "disk.img")
    with pytest.raises(DigestMismatchError, match="length"):
        check_image(target, 3999, "0" * 64, "disk.img")

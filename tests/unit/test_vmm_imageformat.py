"""Image format recognition: every kind, the order of checks, and garbage/hostile headers."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import ImageFormatError
from edgeagent.vmm.imageformat import ImageInfo, recognise


def note(name: bytes, n_type: int, desc: bytes, align: int = 4) -> bytes:
    """One ELF note, name and descriptor padded to ``align`` (as readelf lays them out)."""

    def pad(b: bytes, start: int) -> bytes:
        return b + b"\0" * ((-(start + len(b))) % align)

    head = struct.pack("<III", len(name), len(desc), n_type)
    name_part = pad(name, 12)
    return head + name_part + pad(desc, 12 + len(name_part))


def elf(
    *,
    elf_class: int = 2,
    e_type: int = 2,
    machine: int = 62,
    notes: list[tuple[bytes, int]] = (),  # type: ignore[assignment]
    phoff: int | None = None,
) -> bytes:
    """A minimal little-endian ELF with one PT_NOTE segment per (note bytes, p_align)."""
    is64 = elf_class == 2
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    real_phoff = ehsize
    data_off = ehsize + phentsize * len(notes)
    phdrs = b""
    blobs = b""
    for blob, align in notes:
        off = data_off + len(blobs)
        if is64:
            phdrs += struct.pack("<IIQQQQQQ", 4, 4, off, 0, 0, len(blob), len(blob), align)
        else:
            phdrs += struct.pack("<IIIIIIII", 4, off, 0, 0, len(blob), len(blob), 4, align)
        blobs += blob
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9
    use_phoff = real_phoff if phoff is None else phoff
    if is64:
        header = ident + struct.pack(
            "<HHIQQQIHHHHHH",
            e_type,
            machine,
            1,
            0x100000,
            use_phoff,
            0,
            0,
            64,
            56,
            len(notes),
            64,
            0,
            0,
        )
    else:
        header = ident + struct.pack(
            "<HHIIIIIHHHHHH",
            e_type,
            machine,
            1,
            0x100000,
            use_phoff,
            0,
            0,
            52,
            32,
            len(notes),
            40,
            0,
            0,
        )
    return header + phdrs + blobs


def abi1(target: int = 1, version: int = 2) -> tuple[bytes, int]:
    return note(b"Solo5\0", 0x31494241, struct.pack("<IIII", target, version, 0, 0)), 4


def mft1() -> tuple[bytes, int]:
    # The manifest note is 8-aligned, its descriptor at offset 24 (hvt-abi.md section 4).
    return note(b"Solo5\0", 0x3154464D, struct.pack("<II", 1, 1) + b"\0" * 104, align=8), 8


def pvh_note() -> tuple[bytes, int]:
    return note(b"Xen\0", 18, struct.pack("<I", 0x100000)), 4


def multiboot(offset: int = 0, flags: int = 0x10003) -> bytes:
    checksum = (-(0x1BADB002 + flags)) & 0xFFFFFFFF
    return b"\0" * offset + struct.pack("<III", 0x1BADB002, flags, checksum) + b"\0" * 64


def bzimage() -> bytes:
    data = bytearray(4096)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    data[0x206:0x208] = struct.pack("<H", 0x020F)
    return bytes(data)


# Vectors: each known kind is recognised.


def test_hvt_image_with_abi_and_manifest_notes() -> None:
    info = recognise("hello.hvt", elf(notes=[abi1(), mft1()]))
    assert info == ImageInfo(
        kind="hvt", detail="hvt unikernel (Solo5 ABI target 1, version 2)", abi_version=2
    )
    assert info.runner == "tender"


def test_hvt_notes_packed_in_one_segment_are_found() -> None:
    both = abi1()[0] + mft1()[0]
    assert recognise("x", elf(notes=[(both, 4)])).kind == "hvt"


def test_hvt_with_other_abi_version_is_still_hvt_for_the_tender_to_judge() -> None:
    info = recognise("x", elf(notes=[abi1(version=3)]))
    assert (info.kind, info.abi_version) == ("hvt", 3)


def test_linux_bzimage() -> None:
    info = recognise("bzImage", bzimage())
    assert info.kind == "linux"
    assert "2.15" in info.detail
    assert info.runner == "qemu"


@pytest.mark.parametrize("offset", [0, 4, 64, 8192 - 12])
def test_multiboot_header_anywhere_aligned_in_first_8k(offset: int) -> None:
    assert recognise("k", multiboot(offset)).kind == "multiboot"


def test_multiboot_elf32_kernel_is_multiboot_not_pvh() -> None:
    # QEMU tries multiboot before the PVH note, so do we.
    image = elf(elf_class=1, machine=3, notes=[pvh_note()]) + multiboot()
    assert recognise("k", image).kind == "multiboot"


@pytest.mark.parametrize("elf_class", [1, 2])
def test_pvh_note_in_elf32_and_elf64(elf_class: int) -> None:
    info = recognise("vmlinux", elf(elf_class=elf_class, notes=[pvh_note()]))
    assert info.kind == "pvh"
    assert info.runner == "qemu"


def test_solo5_virtio_image_with_multiboot_header_goes_to_qemu() -> None:
    image = elf(notes=[abi1(target=3)]) + multiboot()
    assert recognise("virtio.bin", image).kind == "multiboot"


# Negative tests: wrong or hostile headers are named in a clear error.


def test_solo5_spt_image_is_rejected_naming_the_target() -> None:
    with pytest.raises(ImageFormatError, match=r"app\.spt: .*Solo5 unikernel for the spt target"):
        recognise("app.spt", elf(notes=[abi1(target=2)]))


def test_hvt_note_on_a_shared_object_is_not_hvt() -> None:
    with pytest.raises(ImageFormatError, match="expected an hvt unikernel"):
        recognise("lib.so", elf(e_type=3, notes=[abi1()]))


def test_hvt_note_on_aarch64_elf_is_not_hvt() -> None:
    with pytest.raises(ImageFormatError):
        recognise("arm.hvt", elf(machine=183, notes=[abi1()]))


def test_multiboot_with_bad_checksum_is_rejected() -> None:
    data = bytearray(multiboot())
    data[8] ^= 1
    with pytest.raises(ImageFormatError, match="starts with"):
        recognise("k", bytes(data))


def test_multiboot_header_past_8k_is_ignored() -> None:
    with pytest.raises(ImageFormatError):
        recognise("k", multiboot(8192))


def test_misaligned_multiboot_magic_is_ignored() -> None:
    with pytest.raises(ImageFormatError):
        recognise("k", multiboot(2))


def test_multiboot2_only_kernel_is_explained() -> None:
    head = struct.pack("<IIII", 0xE85250D6, 0, 16, (-(0xE85250D6 + 16)) & 0xFFFFFFFF)
    with pytest.raises(ImageFormatError, match="multiboot2"):
        recognise("mb2", head + b"\0" * 32)


def test_empty_file_is_named() -> None:
    with pytest.raises(ImageFormatError, match=r"^empty\.img: .*the file is empty"):
        recognise("empty.img", b"")


def test_plain_elf_without_boot_note() -> None:
    with pytest.raises(
        ImageFormatError, match="ELF64 file, type 2, machine 62, without a boot note"
    ):
        recognise("a.out", elf())


def test_note_with_huge_descsz_is_not_read_past_the_segment() -> None:
    hostile = struct.pack("<III", 6, 0xFFFFFFF0, 0x31494241) + b"Solo5\0\0\0" + b"\1\0\0\0" * 4
    with pytest.raises(ImageFormatError):
        recognise("x", elf(notes=[(hostile, 4)]))


def test_note_segment_past_end_of_file_is_skipped() -> None:
    image = bytearray(elf(notes=[abi1()]))
    struct.pack_into("<Q", image, 64 + 8, 1 << 40)  # p_offset of the only phdr
    with pytest.raises(ImageFormatError):
        recognise("x", bytes(image))


def test_phdr_table_past_end_of_file_is_skipped() -> None:
    with pytest.raises(ImageFormatError):
        recognise("x", elf(notes=[abi1()], phoff=1 << 62))


def test_truncated_elf_is_explained() -> None:
    with pytest.raises(ImageFormatError, match="truncated or big-endian ELF"):
        recognise("x", b"\x7fELF\2\1\1")


# Properties: garbage never crashes the recogniser, whatever it is fed.


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_garbage_yields_a_kind_or_image_format_error(data: bytes) -> None:
    message = ""
    try:
        info = recognise("fuzz", data)
    except ImageFormatError as exc:
        message = str(exc)
    else:
        assert info.kind in ("hvt", "multiboot", "linux", "pvh")
        return
    assert message.startswith("fuzz: ")


@settings(max_examples=300)
@given(st.data())
def test_mutated_hvt_header_yields_a_kind_or_image_format_error(data: st.DataObject) -> None:
    image = bytearray(elf(notes=[abi1(), mft1(), pvh_note()]))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(image) - 1))
        image[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ImageFormatError):
        recognise("fuzz", bytes(image))

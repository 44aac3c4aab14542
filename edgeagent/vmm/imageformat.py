"""Recognise a guest image's format from its bytes (pure).

`recognise(name, data)` looks at the headers of an image and says which kind of
kernel it is, and therefore which runner boots it (ADR 0005):

========== ================================================================ =========
kind       how it is recognised                                             runner
========== ================================================================ =========
hvt        ELF64 little-endian x86-64 ET_EXEC with a Solo5 ABI1 note whose  tender
           target is 1 (hvt)
linux      Linux x86 boot protocol: "HdrS" at offset 0x202 (bzImage)       qemu
multiboot  multiboot v1 header: magic 0x1BADB002 at a 4-byte aligned        qemu
           offset in the first 8 KiB, magic + flags + checksum == 0
pvh        ELF (32 or 64 bit) with a Xen note of type 18                    qemu
           (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU boots with -kernel
========== ================================================================ =========

The checks run in this order. Linux and multiboot come before PVH because QEMU's
``-kernel`` loader tries them in that order too. A Solo5 image for another target
(spt, virtio, ...) is not hvt; Solo5's virtio images carry a multiboot header and
are recognised as multiboot.

What this module does not do: it does not validate an image fully. The tender
re-checks hvt images strictly (ELF segments, the ABI version, the manifest) and
QEMU checks the others. Here we only decide which runner to hand the file to, and
a malformed header simply fails to match. It reads no files: the shell passes the
image's bytes (all of them, so that notes anywhere in the file can be found).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from edgeagent.errors import ImageFormatError

ImageKind = Literal["hvt", "multiboot", "linux", "pvh"]
RunnerKind = Literal["tender", "qemu"]

#: Which program boots each kind of image.
RUNNER_FOR_KIND: dict[ImageKind, RunnerKind] = {
    "hvt": "tender",
    "multiboot": "qemu",
    "linux": "qemu",
    "pvh": "qemu",
}

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_NOTE = 4

SOLO5_NOTE_NAME = b"Solo5\x00"
SOLO5_NOTE_ABI1 = 0x31494241  # "ABI1" (hvt-abi.md section 4)
SOLO5_TARGETS = {1: "hvt", 2: "spt", 3: "virtio", 4: "muen", 5: "genode", 6: "xen"}
XEN_NOTE_NAME = b"Xen\x00"
XEN_ELFNOTE_PHYS32_ENTRY = 18

MULTIBOOT1_MAGIC = 0x1BADB002
MULTIBOOT1_SEARCH = 8192
MULTIBOOT2_MAGIC = 0xE85250D6
MULTIBOOT2_SEARCH = 32768
LINUX_HDRS_OFFSET = 0x202
LINUX_HDRS_MAGIC = b"HdrS"

#: Upper bound on the number of notes walked per file: a hostile header cannot make us loop long.
MAX_NOTES = 256

_EXPECTED = (
    "expected an hvt unikernel (ELF64 x86-64 executable with a Solo5 ABI1 note for "
    "target 1), a multiboot v1 kernel (magic 0x1BADB002 in the first 8 KiB), a Linux "
    "bzImage ('HdrS' at offset 0x202) or an ELF kernel with a Xen PVH entry note (type 18)"
)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What `recognise` found.

    Attributes:
        kind: the image format.
        detail: a one-line human description (for logs and error messages).
        abi_version: the Solo5 ABI version of an hvt image, else None.
    """

    kind: ImageKind
    detail: str
    abi_version: int | None = None

    @property
    def runner(self) -> RunnerKind:
        """The program that boots this image: "tender" (edge-tender) or "qemu"."""
        return RUNNER_FOR_KIND[self.kind]


@dataclass(frozen=True, slots=True)
class _Elf:
    elf_class: int
    e_type: int
    e_machine: int
    notes: tuple[tuple[bytes, int, bytes], ...]  # (name, type, desc)


def recognise(name: str, data: bytes) -> ImageInfo:
    """Decide what kind of kernel ``data`` (the whole file ``name``) is.

    Args:
        name: the file name, used only in error messages.
        data: the image's bytes.

    Returns:
        The image kind and a short description.

    Raises:
        ImageFormatError: the bytes match none of the known formats; the message names
            the file, what was found, and what was expected.
    """
    elf = _parse_elf(data)
    solo5_target: int | None = None
    if elf is not None:
        for note_name, note_type, desc in elf.notes:
            if note_name == SOLO5_NOTE_NAME and note_type == SOLO5_NOTE_ABI1 and len(desc) >= 8:
                target, version = struct.unpack_from("<II", desc, 0)
                solo5_target = target
                if (
                    target == 1
                    and elf.elf_class == ELFCLASS64
                    and elf.e_machine == EM_X86_64
                    and elf.e_type == ET_EXEC
                ):
                    return ImageInfo(
                        kind="hvt",
                        detail=f"hvt unikernel (Solo5 ABI target 1, version {version})",
                        abi_version=version,
                    )
                break

    if data[LINUX_HDRS_OFFSET : LINUX_HDRS_OFFSET + 4] == LINUX_HDRS_MAGIC:
        proto = int.from_bytes(data[LINUX_HDRS_OFFSET + 4 : LINUX_HDRS_OFFSET + 6], "little")
        return ImageInfo(
            kind="linux",
            detail=f"Linux boot protocol kernel (protocol {proto >> 8}.{proto & 0xFF:02d})",
        )

    mb_offset = _find_multiboot1(data)
    if mb_offset is not None:
        return ImageInfo(kind="multiboot", detail=f"multiboot v1 kernel (header at {mb_offset:#x})")

    if elf is not None:
        for note_name, note_type, _desc in elf.notes:
            if note_name == XEN_NOTE_NAME and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                bits = 64 if elf.elf_class == ELFCLASS64 else 32
                return ImageInfo(kind="pvh", detail=f"ELF{bits} kernel with a Xen PVH entry note")

    raise ImageFormatError(
        f"{name}: unrecognised image format ({_describe_found(data, elf, solo5_target)}); "
        f"{_EXPECTED}"
    )


def _describe_found(data: bytes, elf: _Elf | None, solo5_target: int | None) -> str:
    """Say in a few words what the bytes look like, for the error message."""
    if not data:
        return "the file is empty"
    if solo5_target is not None and solo5_target != 1:
        target = SOLO5_TARGETS.get(solo5_target, f"unknown target {solo5_target}")
        return f"a Solo5 unikernel for the {target} target, not hvt"
    if elf is not None:
        bits = 64 if elf.elf_class == ELFCLASS64 else 32
        return f"an ELF{bits} file, type {elf.e_type}, machine {elf.e_machine}, without a boot note"
    if _find_multiboot2(data):
        return "a multiboot2 kernel, which QEMU's -kernel cannot boot"
    if data.startswith(ELF_MAGIC):
        return "a truncated or big-endian ELF file"
    return f"the file starts with {data[:8].hex()}"


def _find_multiboot1(data: bytes) -> int | None:
    """Return the offset of a valid multiboot v1 header in the first 8 KiB, or None."""
    limit = min(len(data), MULTIBOOT1_SEARCH) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT1_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off
    return None


def _find_multiboot2(data: bytes) -> bool:
    """Whether a multiboot2 header (8-byte aligned, first 32 KiB) is present."""
    limit = min(len(data), MULTIBOOT2_SEARCH) - 16
    for off in range(0, limit + 1, 8):
        magic, arch, length, checksum = struct.unpack_from("<IIII", data, off)
        if magic == MULTIBOOT2_MAGIC and (magic + arch + length + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


def _parse_elf(data: bytes) -> _Elf | None:
    """Parse the little-endian ELF header and the notes of its PT_NOTE segments.

    Returns None when ``data`` is not a little-endian ELF32/ELF64 file with a readable
    header. Out-of-range program headers and notes are skipped, never trusted.
    """
    if len(data) < 52 or not data.startswith(ELF_MAGIC) or data[5] != ELFDATA2LSB:
        return None
    elf_class = data[4]
    if elf_class == ELFCLASS64:
        if len(data) < 64:
            return None
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        (e_phoff,) = struct.unpack_from("<Q", data, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
        min_phent = 56
    elif elf_class == ELFCLASS32:
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        (e_phoff,) = struct.unpack_from("<I", data, 28)
        e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
        min_phent = 32
    else:
        return None
    notes: list[tuple[bytes, int, bytes]] = []
    if e_phentsize >= min_phent:
        for i in range(e_phnum):
            ph = e_phoff + i * e_phentsize
            if ph + min_phent > len(data):
                break
            if elf_class == ELFCLASS64:
                p_type, _flags, p_offset = struct.unpack_from("<IIQ", data, ph)
                (p_filesz,) = struct.unpack_from("<Q", data, ph + 32)
                (p_align,) = struct.unpack_from("<Q", data, ph + 48)
            else:
                p_type, p_offset = struct.unpack_from("<II", data, ph)
                (p_filesz,) = struct.unpack_from("<I", data, ph + 16)
                (p_align,) = struct.unpack_from("<I", data, ph + 28)
            if p_type != PT_NOTE or p_offset + p_filesz > len(data):
                continue
            segment = data[p_offset : p_offset + p_filesz]
            notes.extend(_walk_notes(segment, 8 if p_align == 8 else 4))
            if len(notes) >= MAX_NOTES:
                break
    return _Elf(elf_class=elf_class, e_type=e_type, e_machine=e_machine, notes=tuple(notes))


def _walk_notes(segment: bytes, align: int) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield (name, type, desc) for each well-formed note in a PT_NOTE segment."""
    pos = 0
    for _ in range(MAX_NOTES):
        if pos + 12 > len(segment):
            return
        namesz, descsz, n_type = struct.unpack_from("<III", segment, pos)
        # The descriptor starts at the next ``align`` boundary after the name, as
        # readelf computes it (Solo5's MFT1 note, 8-aligned, has it at offset 24).
        desc_start = pos + _round_up(12 + namesz, align)
        desc_end = desc_start + descsz
        if desc_end > len(segment):
            return
        yield segment[pos + 12 : pos + 12 + namesz], n_type, segment[desc_start:desc_end]
        pos = _round_up(desc_end, align)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align

"""Build plan for one image: recipe + platform -> generated source + tool invocations. [pure]

`plan_build` decides everything about a build: which library OS parts and platform files are
compiled, with which flags, the generated per-recipe assembly (the MFT1 manifest note, the
app name and the default command line), and the link and conversion steps. The shell
(`edgeagent.build`) writes the generated file and runs the commands.

Reproducibility lives here (ADR 0002): every command is run from the image-recipes root with
relative paths only; ``-ffile-prefix-map`` rewrites the absolute root anyway; inputs are
sorted; no debug info; the link uses ``--build-id=none`` and strips all symbols, so the
bytes depend on sources and flags only, not on the checkout path, time or environment.

`check_image` checks the finished bytes' layout. This module runs nothing and reads no files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgeagent.errors import BuildError
from edgeagent.recipe import Recipe

# The freestanding flags every guest object is compiled with (no SSE: it kills guests at
# CPL0 on these machines; no red zone: no interrupts here, but keep it safe for traps).
CFLAGS: tuple[str, ...] = (
    "-ffreestanding",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-pic",
    "-fno-stack-protector",
    "-nostdlib",
    "-static",
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    # gcc would otherwise turn memcpy/memset loops into calls to themselves.
    "-fno-tree-loop-distribute-patterns",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-common",
    "-fcf-protection=none",
)

LDFLAGS: tuple[str, ...] = (
    "-nostdlib",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
    "-Wl,--gc-sections",
    "-Wl,-z,max-page-size=0x1000",
    "-Wl,-z,noexecstack",
    "-Wl,--strip-all",
)

# Platform files (relative to image-recipes/), besides the portable parts.
PLATFORM_SOURCES: dict[str, tuple[str, ...]] = {
    "hvt": ("libos/hvt/abi_note.S", "libos/hvt/platform.c"),
    "qemu": ("libos/qemu/boot.S", "libos/qemu/platform.c"),
    "xen": ("libos/xen/boot.S", "libos/xen/platform.c", "libos/xen/xenstore.c"),
}

# Portable parts a platform replaces with its own file: on Xen the clock is Xen's system
# time from shared_info and sleeping blocks in Xen (ADR 0011).
PLATFORM_PART_OVERRIDES: dict[str, dict[str, str]] = {
    "xen": {"clock": "libos/xen/clock.c"},
}

MFT_ENTRY_SIZE = 104
MFT_TYPE = {"block": 1, "net": 2}
MFT_RESERVED_FIRST = 1 << 30


@dataclass(frozen=True, slots=True)
class Command:
    """One tool invocation, run with the image-recipes root as working directory."""

    what: str  # short progress text, e.g. "cc libos/core.c"
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """Everything the shell needs to build one image."""

    build_dir: str  # relative to the image-recipes root
    generated_path: str  # relative path of the generated assembly file
    generated_source: str
    commands: tuple[Command, ...]
    image_path: str  # relative path of the finished image inside build_dir


def libos_sources(recipe: Recipe, platform: str) -> tuple[str, ...]:
    """Return the library OS sources linked into this image, sorted, relative to the root."""
    parts = sorted({"core", *recipe.libos})
    overrides = PLATFORM_PART_OVERRIDES.get(platform, {})
    portable = [overrides.get(p, f"libos/{p}.c") for p in parts]
    return tuple(sorted(portable + list(PLATFORM_SOURCES[platform])))


def _asm_string(text: str) -> str:
    # Recipe validation limits names and args to characters that need no escaping.
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"unescaped character in {text!r}")
    return f'"{text}"'


def manifest_note(recipe: Recipe) -> str:
    """Return assembly for the MFT1 note (hvt-abi.md section 4, ADR 0002).

    Layout: Elf64_Nhdr (12 bytes), name "Solo5\\0" padded to 8, a 4-byte pad so the
    content starts 8-aligned at offset 24, then struct mft (version 1, entries, then
    104-byte entries). Entry 0 is the reserved entry (empty name, MFT_RESERVED_FIRST).
    n_descsz counts the pad and the content, as the hvt ABI defines it.
    """
    entries = recipe.manifest_entries()
    count = 1 + len(entries)
    descsz = 4 + 8 + count * MFT_ENTRY_SIZE
    lines = [
        '        .section .note.solo5.manifest, "a", @note',
        "        .p2align 3",
        "        .long 6                 /* n_namesz */",
        f"        .long {descsz}          /* n_descsz: pad + struct mft */",
        "        .long 0x3154464d        /* n_type: MFT1 */",
        '        .asciz "Solo5"',
        "        .byte 0, 0",
        "        .long 0                 /* pad: content is 8-aligned */",
        f"        .long 1, {count}         /* version, entries */",
        "        /* entry 0: reserved */",
        "        .fill 68, 1, 0",
        f"        .long {MFT_RESERVED_FIRST:#x}",
        "        .fill 32, 1, 0",
    ]
    for index, (name, kind) in enumerate(entries, start=1):
        lines += [
            f"        /* entry {index}: {kind} {name} */",
            f"        .ascii {_asm_string(name)}",
            f"        .fill {68 - len(name)}, 1, 0",
            f"        .long {MFT_TYPE[kind]}",
            "        .fill 32, 1, 0          /* u, b, attached=false, padding */",
        ]
    return "\n".join(lines) + "\n"


def generated_source(recipe: Recipe, platform: str) -> str:
    """Return the per-recipe assembly: app name, default command line and (hvt) manifest."""
    parts = [
        f"/* Generated by `edgeagent build` from recipe {recipe.name} {recipe.version}"
        f" for platform {platform}. Do not edit. */",
        '        .section .rodata.libos_recipe, "a", @progbits',
        "        .globl libos_app_name",
        "        .globl libos_default_cmdline",
        f"libos_app_name: .asciz {_asm_string(recipe.name)}",
        f"libos_default_cmdline: .asciz {_asm_string(' '.join(recipe.args))}",
        "",
    ]
    text = "\n".join(parts)
    if platform == "hvt":
        text += manifest_note(recipe)
    text += '        .section .note.GNU-stack, "", @progbits\n'
    return text


def plan_build(recipe: Recipe, platform: str, *, root_abs: str) -> BuildPlan:
    """Plan the build of `recipe` for `platform`.

    Args:
        recipe: the validated recipe (its folder is ``<root>/<recipe.name>``).
        platform: one of the recipe's platforms.
        root_abs: the absolute image-recipes root, used only in ``-ffile-prefix-map``.

    Returns:
        The build plan; paths in it are relative to the image-recipes root.

    Raises:
        ValueError: `platform` is not one the recipe supports (a programming error: the
            shell checks and reports it as a `RecipeError` first).
    """
    if platform not in recipe.platforms:
        raise ValueError(f"recipe {recipe.name} does not support platform {platform}")
    build_dir = f"build/{recipe.name}.{platform}"
    gen = f"{build_dir}/gen_recipe.S"
    cflags = (
        *CFLAGS,
        f"-ffile-prefix-map={root_abs}=.",
        "-Ilibos/include",
        "-Ilibos",
        "-I../abi",
        f"-DLIBOS_PLATFORM_{platform.upper()}=1",
    )
    sources = [*libos_sources(recipe, platform)]
    sources += [f"{recipe.name}/{s}" for s in sorted(recipe.sources)]
    sources.append(gen)

    commands: list[Command] = []
    objects: list[str] = []
    for src in sources:
        obj = f"{build_dir}/obj/{src.replace('/', '__')}.o"
        extra = recipe.cflags if src.startswith(f"{recipe.name}/") else ()
        commands.append(Command(f"cc {src}", ("gcc", *cflags, *extra, "-c", src, "-o", obj)))
        objects.append(obj)

    elf = f"{build_dir}/{recipe.name}.elf"
    link = ("gcc", *LDFLAGS, f"-Wl,-T,libos/{platform}/link.lds", "-o", elf, *objects)
    commands.append(Command(f"ld {elf}", link))
    image = elf
    if platform == "qemu":
        # QEMU's multiboot loader refuses 64-bit ELF: ship a flat binary whose multiboot
        # header carries the a.out-kludge load addresses (ADR 0002).
        image = f"{build_dir}/{recipe.name}.bin"
        commands.append(Command(f"objcopy {image}", ("objcopy", "-O", "binary", elf, image)))
    return BuildPlan(
        build_dir=build_dir,
        generated_path=gen,
        generated_source=generated_source(recipe, platform),
        commands=tuple(commands),
        image_path=image,
    )


_PT_LOAD = 1
_PT_NOTE = 4
_PF_X = 1
_PF_W = 2
_MB_MAGIC = 0x1BADB002


def check_image(data: bytes, platform: str) -> None:
    """Check the finished image's layout; the last line of defence against a bad link.

    hvt: an ELF64 x86-64 executable, entry at or above 0x100000, every PT_LOAD 4 KiB
    aligned at both ends, no W+X segment, and exactly one ABI1 and one MFT1 PT_NOTE.
    qemu: a multiboot header (a.out kludge) in the first 8 KiB whose load range matches
    the file.
    xen: the same ELF rules as hvt, but exactly one Xen PVH entry note
    (XEN_ELFNOTE_PHYS32_ENTRY) whose entry lies in an executable PT_LOAD, and no Solo5
    notes (ADR 0011).

    Raises:
        BuildError: the image does not have that layout.
    """
    if platform == "hvt":
        _check_hvt(data)
    elif platform == "xen":
        _check_xen(data)
    else:
        _check_multiboot(data)


_XEN_NOTE_NAME = b"Xen\x00"
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _check_xen(data: bytes) -> None:
    loads, notes = _elf_segments(data)
    entries = [
        desc
        for name, n_type, desc in notes
        if name == _XEN_NOTE_NAME and n_type == _XEN_ELFNOTE_PHYS32_ENTRY
    ]
    if len(entries) != 1 or len(entries[0]) not in (4, 8):
        raise BuildError("image: expected exactly one Xen PVH entry note (type 18, 4 or 8 bytes)")
    if any(name == b"Solo5\x00" for name, _t, _d in notes):
        raise BuildError("image: a xen image must not carry Solo5 notes")
    entry = int.from_bytes(entries[0], "little")
    if not any(v <= entry < v + ms and f & _PF_X for v, f, ms in loads):
        raise BuildError(f"image: PVH entry {entry:#x} is not in an executable segment")


def _elf_segments(
    data: bytes,
) -> tuple[list[tuple[int, int, int]], list[tuple[bytes, int, bytes]]]:
    """Check the ELF rules shared by hvt and xen; return PT_LOADs and all notes.

    Returns:
        (vaddr, flags, memsz) per PT_LOAD, and (name, type, desc) per note (4-aligned).
    """
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError("image: not a little-endian ELF64 file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_type != 2 or e_machine != 62 or e_entry < 0x100000 or e_phentsize != 56:
        raise BuildError("image: expected an x86-64 ET_EXEC with entry >= 0x100000")
    loads: list[tuple[int, int, int]] = []
    notes: list[tuple[bytes, int, bytes]] = []
    for i in range(e_phnum):
        off = e_phoff + i * 56
        if off + 56 > len(data):
            raise BuildError("image: program headers run past the end of the file")
        p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al = struct.unpack_from(
            "<IIQQQQQQ", data, off
        )
        if p_type == _PT_LOAD:
            if p_flags & _PF_W and p_flags & _PF_X:
                raise BuildError(f"image: segment {i} at {p_vaddr:#x} is writable and executable")
            if p_vaddr % 0x1000 or (p_vaddr + p_memsz) % 0x1000 or p_vaddr < 0x100000:
                raise BuildError(f"image: segment {i} at {p_vaddr:#x} is not 4 KiB aligned")
            loads.append((p_vaddr, p_flags, p_memsz))
        elif p_type == _PT_NOTE and p_offset + p_filesz <= len(data):
            notes += _notes(data[p_offset : p_offset + p_filesz])
    return loads, notes


def _notes(segment: bytes) -> list[tuple[bytes, int, bytes]]:
    out: list[tuple[bytes, int, bytes]] = []
    pos = 0
    while pos + 12 <= len(segment):
        namesz, descsz, n_type = struct.unpack_from("<III", segment, pos)
        desc = pos + 12 + (namesz + 3) // 4 * 4
        if desc + descsz > len(segment):
            break
        out.append((segment[pos + 12 : pos + 12 + namesz], n_type, segment[desc : desc + descsz]))
        pos = desc + (descsz + 3) // 4 * 4
    return out


def _check_hvt(data: bytes) -> None:
    _loads, notes = _elf_segments(data)
    if sorted(n_type for _name, n_type, _desc in notes) != [0x31494241, 0x3154464D]:
        raise BuildError("image: expected exactly one ABI1 and one MFT1 note")


def _check_multiboot(data: bytes) -> None:
    for off in range(0, min(len(data), 8192) - 32 + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic != _MB_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF or not flags & 0x10000:
            raise BuildError("image: bad multiboot checksum or no a.out-kludge addresses")
        header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from(
            "<IIIII", data, off + 12
        )
        if header_addr - load_addr != off or load_end - load_addr != len(data):
            raise BuildError("image: multiboot load addresses do not match the file")
        if not load_addr <= entry < load_end or bss_end < load_end:
            raise BuildError("image: multiboot entry or BSS end out of range")
        return
    raise BuildError("image: no multiboot header in the first 8 KiB")

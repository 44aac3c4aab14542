"""recipe.toml parsing: valid recipes round-trip, every malformed field is a clear RecipeError.

Also covers the pure build plan (`edgeagent.buildplan`): the generated MFT1 manifest note and
the path-independence of the planned commands, which reproducible builds rest on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.buildplan import check_image, manifest_note, plan_build
from edgeagent.errors import BuildError, RecipeError
from edgeagent.recipe import LIBOS_PARTS, Devices, Recipe, parse_recipe

GOOD = b"""
name = "demo"
version = "1.2.3"
description = "A demo image."
sources = ["main.c", "lib/util.c"]
libos = ["console", "clock"]
platforms = ["hvt", "qemu"]
memory_mb = 4
args = ["interval_ms=10", "count=3"]
cflags = ["-DDEMO=1", "-Wshadow"]

[devices]
block = []
net = []
"""

MINIMAL = b"""
name = "m"
version = "1"
sources = ["m.c"]
platforms = ["hvt"]
memory_mb = 2
"""


SRCS = b'sources = ["main.c", "lib/util.c"]'


def replace(doc: bytes, old: bytes, new: bytes) -> bytes:
    assert old in doc
    return doc.replace(old, new, 1)


def error_of(doc: bytes) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(doc, filename="image-recipes/demo/recipe.toml")
    return str(info.value)


def test_good_recipe_parses_to_frozen_fields() -> None:
    r = parse_recipe(GOOD, filename="x/recipe.toml")
    assert r == Recipe(
        name="demo",
        version="1.2.3",
        description="A demo image.",
        sources=("main.c", "lib/util.c"),
        libos=("console", "clock"),
        platforms=("hvt", "qemu"),
        memory_mb=4,
        devices=Devices(),
        args=("interval_ms=10", "count=3"),
        cflags=("-DDEMO=1", "-Wshadow"),
    )
    with pytest.raises(AttributeError):
        r.name = "other"  # type: ignore[misc]


def test_optional_fields_have_empty_defaults() -> None:
    r = parse_recipe(MINIMAL)
    assert (r.description, r.libos, r.devices, r.args, r.cflags) == ("", (), Devices(), (), ())


def test_devices_become_manifest_entries_block_first() -> None:
    doc = replace(
        MINIMAL, b"memory_mb = 2", b'memory_mb = 2\n[devices]\nnet = ["n0"]\nblock = ["b0"]'
    )
    assert parse_recipe(doc).manifest_entries() == (("b0", "block"), ("n0", "net"))


@pytest.mark.parametrize("field", ["name", "version", "sources", "platforms", "memory_mb"])
def test_missing_required_field_is_named(field: str) -> None:
    lines = [ln for ln in GOOD.split(b"\n") if not ln.startswith(field.encode() + b" =")]
    msg = error_of(b"\n".join(lines))
    assert f"field '{field}': missing" in msg
    assert "image-recipes/demo/recipe.toml" in msg


def test_unknown_top_level_key_is_rejected() -> None:
    msg = error_of(GOOD.replace(b"memory_mb = 4", b"memory_mb = 4\nmemroy = 4"))
    assert "field 'memroy': unknown key" in msg


def test_unknown_devices_key_is_rejected() -> None:
    msg = error_of(GOOD.replace(b"net = []", b"net = []\nserial = []"))
    assert "field 'devices.serial': unknown key" in msg


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        (b'name = "demo"', b"name = 3", "name", "a name of lowercase"),
        (b'name = "demo"', b'name = "Demo"', "name", "a name of lowercase"),
        (b'name = "demo"', b'name = "-demo"', "name", "a name of lowercase"),
        (b'name = "demo"', b'name = "de mo"', "name", "a name of lowercase"),
        (b'version = "1.2.3"', b"version = 1", "version", "a version string"),
        (b'version = "1.2.3"', b'version = ""', "version", "a version string"),
        (b'description = "A demo image."', b"description = 5", "description", "printable"),
        (b'description = "A demo image."', b'description = "a\\nb"', "description", "printable"),
        (b"memory_mb = 4", b"memory_mb = true", "memory_mb", "an even integer"),
        (b"memory_mb = 4", b'memory_mb = "4"', "memory_mb", "an even integer"),
        (b"memory_mb = 4", b"memory_mb = 3", "memory_mb", "an even integer"),
        (b"memory_mb = 4", b"memory_mb = 0", "memory_mb", "an even integer"),
        (b"memory_mb = 4", b"memory_mb = 8192", "memory_mb", "an even integer"),
        (b"memory_mb = 4", b"memory_mb = 4.0", "memory_mb", "an even integer"),
        (SRCS, b'sources = "main.c"', "sources", "a list"),
        (SRCS, b"sources = []", "sources", "at least one"),
        (
            b'sources = ["main.c", "lib/util.c"]',
            b'sources = ["/etc/x.c"]',
            "sources[0]",
            "relative",
        ),
        (SRCS, b'sources = ["../x.c"]', "sources[0]", "relative"),
        (
            b'sources = ["main.c", "lib/util.c"]',
            b'sources = ["a/../x.c"]',
            "sources[0]",
            "relative",
        ),
        (SRCS, b'sources = ["main.py"]', "sources[0]", ".c or .S"),
        (SRCS, b"sources = [1]", "sources[0]", "relative"),
        (SRCS, b'sources = ["a.c", "a.c"]', "sources[1]", "once"),
        (b'libos = ["console", "clock"]', b'libos = ["posix"]', "libos[0]", "a library part"),
        (b'libos = ["console", "clock"]', b'libos = "console"', "libos", "a list"),
        (b'platforms = ["hvt", "qemu"]', b'platforms = ["virtio"]', "platforms[0]", "a platform"),
        (b'platforms = ["hvt", "qemu"]', b"platforms = []", "platforms", "at least one"),
        (b'platforms = ["hvt", "qemu"]', b'platforms = ["hvt", "hvt"]', "platforms[1]", "once"),
        (b'args = ["interval_ms=10", "count=3"]', b'args = ["a b"]', "args[0]", "an argument"),
        (b'args = ["interval_ms=10", "count=3"]', b'args = ["\\"q"]', "args[0]", "an argument"),
        (b'args = ["interval_ms=10", "count=3"]', b'args = [""]', "args[0]", "an argument"),
        (b'args = ["interval_ms=10", "count=3"]', b"args = [1]", "args[0]", "an argument"),
        (b'cflags = ["-DDEMO=1", "-Wshadow"]', b'cflags = ["-I/usr"]', "cflags[0]", "compiler"),
        (b'cflags = ["-DDEMO=1", "-Wshadow"]', b'cflags = ["-fplugin=x"]', "cflags[0]", "compiler"),
        (b"block = []", b'block = ["bad name"]', "devices.block[0]", "a device name"),
        (b"block = []", b'block = ["' + b"x" * 68 + b'"]', "devices.block[0]", "a device name"),
        (b"block = []", b"block = [7]", "devices.block[0]", "a device name"),
        (b"block = []", b'block = "storage"', "devices.block", "a list"),
    ],
)
def test_bad_field_names_file_field_and_expectation(
    old: bytes, new: bytes, field: str, expected: str
) -> None:
    doc = replace(GOOD, old, new)
    if b"devices.block" in field.encode() or field.startswith("devices"):
        doc = doc.replace(b'platforms = ["hvt", "qemu"]', b'platforms = ["hvt"]')
    msg = error_of(doc)
    assert "image-recipes/demo/recipe.toml" in msg
    assert f"field '{field}'" in msg, msg
    assert expected in msg, msg


def test_devices_must_be_a_table() -> None:
    doc = replace(GOOD, b"[devices]\nblock = []\nnet = []", b"devices = 3")
    assert "field 'devices': expected a table" in error_of(doc)


def test_device_name_used_twice_is_rejected() -> None:
    doc = replace(GOOD, b'platforms = ["hvt", "qemu"]', b'platforms = ["hvt"]')
    doc = replace(doc, b"block = []\nnet = []", b'block = ["d"]\nnet = ["d"]')
    assert "field 'devices.net'" in error_of(doc)


def test_more_than_63_devices_is_rejected() -> None:
    names = ", ".join(f'"b{i}"' for i in range(64)).encode()
    doc = replace(GOOD, b'platforms = ["hvt", "qemu"]', b'platforms = ["hvt"]')
    doc = replace(doc, b"block = []", b"block = [" + names + b"]")
    assert "at most 63 devices" in error_of(doc)


def test_devices_on_the_qemu_platform_are_rejected() -> None:
    doc = replace(GOOD, b"block = []", b'block = ["storage"]')
    assert "platform 'qemu' has no devices" in error_of(doc)


@pytest.mark.parametrize("part", ["block", "net"])
def test_hvt_only_part_on_qemu_is_rejected(part: str) -> None:
    doc = replace(GOOD, b'libos = ["console", "clock"]', f'libos = ["{part}"]'.encode())
    assert f"part '{part}' is not available on platform 'qemu'" in error_of(doc)


def test_invalid_toml_names_the_file() -> None:
    msg = error_of(b"name = \n")
    assert msg.startswith("image-recipes/demo/recipe.toml: not valid TOML")


def test_non_utf8_names_the_file() -> None:
    assert "not UTF-8" in error_of(b'name = "\xff"\n')


def test_command_line_longer_than_the_hvt_area_is_rejected() -> None:
    args = ", ".join(['"' + "a" * 256 + '"'] * 40).encode()
    doc = replace(GOOD, b'args = ["interval_ms=10", "count=3"]', b"args = [" + args + b"]")
    assert "at most 8191 characters" in error_of(doc)


# ---- property tests ------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
DEVICE = st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True)
ARG = st.from_regex(r"[A-Za-z0-9_.,:=/+@%-]{1,20}", fullmatch=True)
SOURCE = st.from_regex(r"[a-z_][a-z0-9_]{0,8}(/[a-z_][a-z0-9_]{0,8}){0,2}\.(c|S)", fullmatch=True)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@st.composite
def recipes(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    platforms = draw(st.sampled_from([["hvt"], ["qemu"], ["hvt", "qemu"], ["qemu", "hvt"]]))
    allowed = sorted(p for p, plats in LIBOS_PARTS.items() if set(platforms) <= plats)
    fields: dict[str, object] = {
        "name": draw(NAMES),
        "version": draw(st.from_regex(r"[0-9][0-9.]{0,8}", fullmatch=True)),
        "sources": draw(st.lists(SOURCE, min_size=1, max_size=4, unique=True)),
        "libos": draw(st.lists(st.sampled_from(allowed), unique=True)),
        "platforms": platforms,
        "memory_mb": draw(st.integers(1, 2048)) * 2,
        "args": draw(st.lists(ARG, max_size=5)),
    }
    devices: tuple[list[str], list[str]] = ([], [])
    if platforms == ["hvt"]:
        names = draw(st.lists(DEVICE, max_size=6, unique=True))
        cut = draw(st.integers(0, len(names)))
        devices = (names[:cut], names[cut:])
    text = "\n".join(
        f"{k} = {toml_list(v) if isinstance(v, list) else repr(v).replace(chr(39), chr(34))}"
        for k, v in fields.items()
    )
    text += f"\n[devices]\nblock = {toml_list(devices[0])}\nnet = {toml_list(devices[1])}\n"
    fields["devices"] = devices
    return text.encode(), fields


@given(recipes())
@settings(max_examples=200)
def test_any_valid_recipe_round_trips(case: tuple[bytes, dict[str, object]]) -> None:
    data, fields = case
    r = parse_recipe(data)
    assert r.name == fields["name"]
    assert r.version == fields["version"]
    assert list(r.sources) == fields["sources"]
    assert list(r.libos) == fields["libos"]
    assert list(r.platforms) == fields["platforms"]
    assert r.memory_mb == fields["memory_mb"]
    assert list(r.args) == fields["args"]
    devices = fields["devices"]
    assert isinstance(devices, tuple)
    block, net = devices
    assert (list(r.devices.block), list(r.devices.net)) == (block, net)


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_arbitrary_bytes_give_a_recipe_or_a_recipe_error(data: bytes) -> None:
    with contextlib.suppress(RecipeError):
        parse_recipe(data)


@given(recipes(), st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
@settings(max_examples=300)
def test_mutated_recipe_gives_a_recipe_or_a_recipe_error(
    case: tuple[bytes, dict[str, object]], where: int, junk: bytes
) -> None:
    data = case[0]
    pos = where % len(data)
    with contextlib.suppress(RecipeError):
        parse_recipe(data[:pos] + junk + data[pos + len(junk) :])


# ---- build plan (pure) ------------------------------------------------------------------


def mft_recipe(block: tuple[str, ...], net: tuple[str, ...]) -> Recipe:
    return dataclasses.replace(parse_recipe(MINIMAL), devices=Devices(block=block, net=net))


def assemble_note(asm: str) -> bytes:
    """A tiny interpreter for the directives manifest_note emits (.long, .asciz, ...)."""
    out = b""
    for raw in asm.splitlines():
        line = raw.split("/*")[0].strip()
        if not line or line.startswith((".section", ".p2align")):
            continue
        op, _, rest = line.partition(" ")
        args = [a.strip() for a in rest.split(",")]
        if op == ".long":
            out += b"".join(struct.pack("<I", int(a, 0)) for a in args)
        elif op == ".byte":
            out += bytes(int(a, 0) for a in args)
        elif op == ".fill":
            out += b"\0" * int(args[0])
        elif op in (".ascii", ".asciz"):
            out += rest.strip('"').encode() + (b"\0" if op == ".asciz" else b"")
        else:
            raise AssertionError(f"unexpected directive {line!r}")
    return out


@pytest.mark.parametrize(
    ("block", "net"), [((), ()), (("storage",), ()), (("a", "b"), ("service",))]
)
def test_manifest_note_has_the_hvt_layout(block: tuple[str, ...], net: tuple[str, ...]) -> None:
    note = assemble_note(manifest_note(mft_recipe(block, net)))
    namesz, descsz, n_type = struct.unpack_from("<III", note, 0)
    assert (namesz, n_type, note[12:18]) == (6, 0x3154464D, b"Solo5\0")
    count = 1 + len(block) + len(net)
    assert descsz == 4 + 8 + count * 104
    assert len(note) == 20 + descsz
    version, entries = struct.unpack_from("<II", note, 24)
    assert (version, entries) == (1, count)
    kinds = [(n, 1) for n in block] + [(n, 2) for n in net]
    for i in range(count):
        e = note[32 + i * 104 : 32 + (i + 1) * 104]
        name = e[:68].rstrip(b"\0").decode()
        (typ,) = struct.unpack_from("<I", e, 68)
        assert e[96] == 0  # attached is false in the file
        if i == 0:
            assert (name, typ) == ("", 1 << 30)
        else:
            assert (name, typ) == kinds[i - 1]


def test_planned_commands_use_relative_paths_only() -> None:
    r = parse_recipe(GOOD.replace(b'name = "demo"', b'name = "hello"'))
    plan = plan_build(r, "hvt", root_abs="/some/checkout/image-recipes")
    other = plan_build(r, "hvt", root_abs="/elsewhere/image-recipes")
    for a, b in zip(plan.commands, other.commands, strict=True):
        diff = [(x, y) for x, y in zip(a.argv, b.argv, strict=True) if x != y]
        assert all(x.startswith("-ffile-prefix-map=") for x, _ in diff)
    assert any("libos/core.c" in c.argv for c in plan.commands)
    assert not any(c.argv[0] == "objcopy" for c in plan.commands)
    assert plan_build(r, "qemu", root_abs="/x").commands[-1].argv[0] == "objcopy"


def test_planned_libos_parts_are_exactly_the_listed_ones() -> None:
    plan = plan_build(parse_recipe(MINIMAL), "hvt", root_abs="/r")
    compiled = {a for c in plan.commands for a in c.argv if a.startswith("libos/")}
    assert compiled == {"libos/core.c", "libos/hvt/abi_note.S", "libos/hvt/platform.c"}


def test_check_image_rejects_a_file_that_is_not_an_image() -> None:
    with pytest.raises(BuildError):
        check_image(b"\x7fELF" + b"\0" * 100, "hvt")
    with pytest.raises(BuildError, match="no multiboot header"):
        check_image(b"\0" * 9000, "qemu")

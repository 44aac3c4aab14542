"""``edgeagent flash`` end to end on plain files and REAL loop devices (root needed).

Every loop device, mount and server these tests create is released in a ``finally``. Images are
small (16 MiB sparse, ~5 MiB of data) so the whole file runs in seconds. The one failure that
cannot be produced for real here (a device node that vanishes with ENODEV: the kernel keeps a
detached loop device alive while it is open) uses a small test double for ``os.pwrite``; a
medium that fails mid-write (EIO/ENOSPC) is produced for real with a loop device whose backing
file lives on a tiny tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import edgeagent.cli as cli
from edgeagent.flash import writer
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository

MiB = 1024 * 1024
IMAGE_SIZE = 16 * MiB
# (offset, length) of data in the test image; the rest is holes.
DATA = [(0, 64 * 1024), (3 * MiB, 3 * MiB + 5000), (12 * MiB, 8192)]
PATTERN = b"\xaa"

CLI = "import edgeagent.cli as c\nraise SystemExit(c.main())\n"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
    reason="needs root and loop devices (losetup)",
)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["flash", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flash")


@pytest.fixture(scope="module")
def image(work: Path) -> Path:
    path = work / "disk.img"
    with path.open("wb") as f:
        f.truncate(IMAGE_SIZE)
        for i, (offset, length) in enumerate(DATA):
            f.seek(offset)
            f.write(bytes([i + 1]) * 17 + os.urandom(length - 17))
    return path


@pytest.fixture(scope="module")
def repo(work: Path) -> Repository:
    return Repository.init(work / "repo")


@pytest.fixture(scope="module")
def manifest(work: Path, repo: Repository, image: Path) -> Path:
    path = work / "disk.img.manifest.json"
    custom = target_custom(version="1.0", kind="host-disk")
    path.write_bytes(repo.sign_manifest([("disk.img", image, custom)]))
    return path


def _trust(repo: Repository, manifest: Path) -> list[str]:
    return ["--manifest", str(manifest), "--trust", str(repo.root_path)]


@contextmanager
def loop_device(backing: Path, size: int = IMAGE_SIZE, fill: bytes = PATTERN) -> Iterator[str]:
    """A real loop device over ``backing`` (filled with ``fill``), always detached."""
    if not backing.exists():
        backing.write_bytes(fill * size)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _mapped(image: Path) -> list[tuple[int, int]]:
    fd = os.open(image, os.O_RDONLY)
    try:
        return writer.image_extents(fd, IMAGE_SIZE)
    finally:
        os.close(fd)


def test_sparse_image_to_plain_file_is_identical_and_stays_sparse(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    out_file = work / "out.img"
    code, out, err = _run(capsys, str(image), str(out_file), *_trust(repo, manifest))
    assert code == 0, err
    assert out.startswith(f"PASS {out_file} serial unknown: disk.img sha256:")
    assert out_file.read_bytes() == image.read_bytes()
    mapped = sum(e - s for s, e in _mapped(image))
    assert out_file.stat().st_blocks * 512 <= mapped + 64 * 1024  # Holes were not written.
    assert "readback" in err
    assert "ETA" in err


def test_loop_device_gets_only_mapped_blocks_and_read_back_passes_with_serial(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    backing = work / "stick-a.img"
    with loop_device(backing) as dev:
        code, out, err = _run(
            capsys,
            str(image),
            dev,
            *_trust(repo, manifest),
            "--yes",
            "--loop-backing",
            str(backing),
        )
        assert code == 0, err
    assert out.startswith(f"PASS {dev} serial loop:{backing}: disk.img")
    assert "written and read back" in out
    written = backing.read_bytes()
    src = image.read_bytes()
    for start, end in _mapped(image):
        assert written[start:end] == src[start:end]
    # Bytes outside the (4 KiB aligned) mapped ranges were never written.
    assert written[8 * MiB : 12 * MiB] == PATTERN * 4 * MiB
    assert written[-MiB:] == PATTERN * MiB


def test_tampered_image_is_refused_before_writing_a_byte(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    tampered = work / "tampered" / "disk.img"
    tampered.parent.mkdir()
    data = bytearray(image.read_bytes())
    data[3 * MiB + 100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    backing = work / "stick-b.img"
    with loop_device(backing) as dev:
        before = _sha(backing.read_bytes())
        code, out, err = _run(
            capsys,
            str(tampered),
            dev,
            *_trust(repo, manifest),
            "--yes",
            "--loop-backing",
            str(backing),
        )
    assert code == 1
    assert out.startswith(f"FAIL {dev} serial loop:{backing}:")
    assert "does not match the signed sha256" in err
    assert "writeback" not in err
    assert "write " not in err  # The write phase never started.
    assert _sha(backing.read_bytes()) == before


def test_block_map_hiding_data_is_refused_before_writing(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    lying = work / "lying.bmap"
    lying.write_text(
        '<?xml version="1.0" ?>\n<bmap version="2.0"><ImageSize>16777216</ImageSize>'
        "<BlockSize>4096</BlockSize><BlockMap><Range>0-15</Range></BlockMap></bmap>\n"
    )
    out_file = work / "out-lying.img"
    code, _out, err = _run(
        capsys,
        str(image),
        str(out_file),
        *_trust(repo, manifest),
        "--bmap",
        str(lying),
    )
    assert code == 1
    assert "block map omits data" in err
    assert not out_file.exists()


def test_mounted_target_is_refused(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    backing = work / "mounted.img"
    backing.write_bytes(b"")
    os.truncate(backing, IMAGE_SIZE)
    mnt = work / "mnt"
    mnt.mkdir()
    with loop_device(backing) as dev:
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True)
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            code, out, err = _run(
                capsys,
                str(image),
                dev,
                *_trust(repo, manifest),
                "--yes",
                "--loop-backing",
                str(backing),
            )
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    assert code == 1
    assert f"{dev} is mounted ({mnt})" in out
    assert "--force" in err
    # Mounting changed the superblock, so compare with the image's marker bytes instead.
    written = backing.read_bytes()
    for i, (offset, _) in enumerate(DATA):
        assert written[offset : offset + 17] != bytes([i + 1]) * 17


def test_too_small_target_is_refused_even_with_force(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    backing = work / "small.img"
    with loop_device(backing, size=4 * MiB) as dev:
        code, out, _err = _run(capsys, str(image), dev, *_trust(repo, manifest), "--yes", "--force")
    assert code == 1
    assert "too small" in out
    assert "never flashed" not in out
    assert backing.read_bytes() == PATTERN * 4 * MiB


def test_medium_failing_mid_write_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    # The backing file lives on a 2 MiB tmpfs: the device accepts the first writes, then the
    # kernel fails them (EIO/ENOSPC), as a dying card would.
    small_fs = work / "tiny-fs"
    small_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small_fs)], check=True)
    try:
        backing = small_fs / "dying.img"
        with backing.open("wb") as f:
            f.truncate(IMAGE_SIZE)
        with loop_device(backing) as dev:
            code, out, err = _run(
                capsys, str(image), dev, *_trust(repo, manifest), "--yes", "--force"
            )
    finally:
        subprocess.run(["umount", str(small_fs)], check=True)
    assert code == 1
    assert out.startswith(f"FAIL {dev}")
    assert "target disappeared or failed during" in err
    assert "do not use it" in err


def test_device_vanishing_mid_write_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    work: Path,
    image: Path,
    repo: Repository,
    manifest: Path,
) -> None:
    # Test double (see the module docstring): the second write finds the device gone.
    real = os.pwrite
    calls = []

    def vanishing(fd: int, data: object, offset: int) -> int:
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", vanishing)
    code, _out, err = _run(capsys, str(image), str(work / "vanish.img"), *_trust(repo, manifest))
    assert code == 1
    assert "target disappeared or failed during write at offset" in err
    assert "No such device" in err


def test_candidate_list_shows_size_and_serial(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path
) -> None:
    backing = work / "listed.img"
    with loop_device(backing) as dev:
        code, out, _ = _run(capsys, str(image), "--loop-backing", str(backing))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith(dev))
    assert "0.02 GiB" in line
    assert f"serial loop:{backing}" in line


def test_watch_flashes_newly_attached_loop_device(
    work: Path, image: Path, repo: Repository, manifest: Path
) -> None:
    slot = work / "station"
    slot.mkdir()
    backing = slot / "card-1.img"
    backing.write_bytes(PATTERN * IMAGE_SIZE)
    argv = [sys.executable, "-c", CLI, "flash", str(image), "--watch", "--yes", "--count", "1"]
    argv += [*_trust(repo, manifest), "--loop-backing", f"{slot}/card-*.img"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "watching kernel uevents" in line or "watching udev uevents" in line, line
        with loop_device(backing) as dev:
            out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith(f"PASS {dev} serial loop:{backing}: disk.img")
    written = backing.read_bytes()
    for start, end in _mapped(image):
        assert written[start:end] == image.read_bytes()[start:end]


@contextmanager
def served(repo_dir: Path) -> Iterator[str]:
    """``edgeagent repo serve`` on a free port; yields its URL; always stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "repo", "serve", str(repo_dir), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving "), line
        yield line.rsplit(" at ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_flash_verifies_image_against_registry_target(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path
) -> None:
    reg = Repository.init(work / "registry")
    reg.add_target(image, "edge-disk.img", target_custom(version="7", kind="host-disk"))
    tampered = work / "tampered-reg.img"
    data = bytearray(image.read_bytes())
    data[100] ^= 1
    tampered.write_bytes(bytes(data))
    with served(work / "registry") as url:
        trust = ["--registry", url, "--trust", str(reg.root_path), "--name", "edge-disk.img"]
        code, out, err = _run(capsys, str(image), str(work / "reg-out.img"), *trust)
        assert code == 0, err
        assert out.startswith(f"PASS {work / 'reg-out.img'}")
        code, out, err = _run(capsys, str(tampered), str(work / "reg-bad.img"), *trust)
        assert code == 1
        assert "does not match the signed sha256" in err
        assert not (work / "reg-bad.img").exists()
        code, out, err = _run(
            capsys, str(image), str(work / "x.img"), *trust[:4], "--name", "nonexistent"
        )
        assert code == 1
        assert "not listed by any trusted targets role" in err


def test_repo_add_host_publishes_signed_slot_target(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    reg = Repository.init(work / "hostrepo")
    slot = work / "slot-v2.img"
    slot.write_bytes(b"squashfs+uki" * 1000)
    code = cli.main(["repo", "add-host", str(reg.path), str(slot), "--version", "2.0"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out == f"host-slot 12000 sha256:{_sha(slot.read_bytes())}\n"
    target = Repository.open(reg.path).targets.signed.targets["host-slot"]
    assert target.custom["edgeagent"]["kind"] == "host-slot"
    assert target.custom["edgeagent"]["version"] == "2.0"
    assert target.length == 12000


@pytest.fixture(scope="module")
def bmapped(work: Path, image: Path, repo: Repository) -> tuple[Path, Path]:
    """A copy of the image with a real ``bmaptool create`` map, both signed in a manifest."""
    if shutil.which("bmaptool") is None:
        pytest.fail("bmaptool missing: apt-get install bmap-tools (Debian)")
    folder = work / "bmapped"
    folder.mkdir()
    img = folder / "disk.img"
    shutil.copyfile(image, img)
    subprocess.run(["bmaptool", "-q", "create", "-o", f"{img}.bmap", str(img)], check=True)
    manifest = folder / "manifest.json"
    code = cli.main(
        [
            "repo",
            "sign-manifest",
            str(repo.path),
            str(manifest),
            "--version",
            "1",
            "--disk",
            str(img),
        ]
    )
    assert code == 0
    return img, manifest


def test_signed_block_map_verifies_only_mapped_ranges(
    capsys: pytest.CaptureFixture[str], work: Path, repo: Repository, bmapped: tuple[Path, Path]
) -> None:
    capsys.readouterr()
    img, manifest = bmapped
    out_file = work / "out-bmap.img"
    code, out, err = _run(capsys, str(img), str(out_file), *_trust(repo, manifest))
    assert code == 0, err
    assert "disk.img signed bmap sha256:" in out
    assert out_file.read_bytes() == img.read_bytes()


def test_tampered_mapped_range_fails_signed_block_map_before_writing(
    capsys: pytest.CaptureFixture[str], work: Path, repo: Repository, bmapped: tuple[Path, Path]
) -> None:
    img, manifest = bmapped
    evil = work / "evil-bmap"
    evil.mkdir()
    shutil.copyfile(f"{img}.bmap", evil / "disk.img.bmap")
    data = bytearray(img.read_bytes())
    data[12 * MiB + 10] ^= 0x55
    (evil / "disk.img").write_bytes(bytes(data))
    target = work / "evil-out.img"
    code, _, err = _run(capsys, str(evil / "disk.img"), str(target), *_trust(repo, manifest))
    assert code == 1
    assert "do not match the sha256 in the signed block map" in err
    assert not target.exists()


def test_tampered_block_map_is_refused(
    capsys: pytest.CaptureFixture[str], work: Path, repo: Repository, bmapped: tuple[Path, Path]
) -> None:
    img, manifest = bmapped
    bad = work / "edited.bmap"
    text = Path(f"{img}.bmap").read_text()
    bad.write_text(text.replace("<BlockMap>", "<BlockMap>\n<!-- edited -->", 1))
    code, _, err = _run(
        capsys,
        str(img),
        str(work / "x-bmap.img"),
        *_trust(repo, manifest),
        "--bmap",
        str(bad),
        "--name",
        "disk.img",
    )
    # The edited map is not the signed one: it is only an untrusted hint (whole-image sha256).
    assert code == 0, err
    signed_name = work / "disk.img.bmap"
    signed_name.write_text(text.replace("<BlockMap>", "<BlockMap>\n<!-- edited -->", 1))
    code, _, err = _run(
        capsys,
        str(img),
        str(work / "y-bmap.img"),
        *_trust(repo, manifest),
        "--bmap",
        str(signed_name),
    )
    assert code == 1
    assert "disk.img.bmap: length 2" in err
    assert "does not match the signed length" in err


def test_host_build_manifest_format_is_accepted(
    capsys: pytest.CaptureFixture[str], work: Path, image: Path, repo: Repository
) -> None:
    from edgeagent.hostos import manifest as mft
    from edgeagent.publisher import keys as keystore

    keyid = repo.root.signed.roles["targets"].keyids[0]
    pair = keystore.load_key(repo.keys_dir, keyid)
    assert pair is not None
    disk = mft.Artifact("disk.img", IMAGE_SIZE, _sha(image.read_bytes()))
    signed = mft.signed_part(
        name="edgeos",
        version="1",
        created="2026-01-01T00:00:00Z",
        kernel="linux",
        disk=disk,
        bmap=mft.Artifact("disk.img.bmap", 1, "0" * 64),
        slots={},
        ukis={},
        partitions=[],
    )
    manifest = work / "host-manifest.json"
    manifest.write_bytes(mft.sign_manifest(signed, [pair.signer]))
    code, out, err = _run(
        capsys, str(image), str(work / "host-out.img"), *_trust(repo, manifest), "--bmap", "none"
    )
    assert code == 0, err
    assert out.startswith("PASS")
    forged = manifest.read_bytes().replace(disk.sha256.encode(), b"1" * 64)
    manifest.write_bytes(forged)
    code, _, err = _run(capsys, str(image), str(work / "host-bad.img"), *_trust(repo, manifest))
    assert code == 1
    assert "signature" in err


@pytest.mark.parametrize("signed_bmap", [False, True])
async def test_image_swapped_after_verification_fails_read_back(
    work: Path, image: Path, bmapped: tuple[Path, Path], signed_bmap: bool
) -> None:
    from edgeagent.commands.flash import make_plan
    from edgeagent.errors import FlashError
    from edgeagent.flash.plan import signed_ranges

    img = work / f"swap-{signed_bmap}.img"
    shutil.copyfile(image, img)
    bmap_file = str(bmapped[0]) + ".bmap"
    fd = os.open(img, os.O_RDWR)
    try:
        plan, parsed = make_plan(fd, str(img), bmap_file)
        assert parsed is not None
        ranges = signed_ranges(parsed) if signed_bmap else None
        assert not signed_bmap or ranges

        def swap_after_check(length: int, sha256: str) -> None:
            # The trust check passed; now an attacker changes the image before the write.
            os.pwrite(fd, b"\x00evil", 3 * MiB + 4096)

        with pytest.raises(FlashError, match="read-back mismatch in bytes"):
            await writer.flash_image(
                fd,
                str(img),
                str(work / f"swap-out-{signed_bmap}.img"),
                plan,
                swap_after_check,
                ranges=ranges,
            )
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct", [True, False])
async def test_unaligned_image_tail_and_buffered_writes_are_read_back(
    work: Path, direct: bool
) -> None:
    from edgeagent.commands.flash import make_plan

    img = work / f"odd-{direct}.img"
    with img.open("wb") as f:
        f.truncate(5 * MiB + 1000)
        f.write(os.urandom(8192))
        f.seek(5 * MiB - 100)
        f.write(os.urandom(1100))
    out_file = work / f"odd-out-{direct}.img"
    seen: list[tuple[int, str]] = []
    fd = os.open(img, os.O_RDONLY)
    try:
        plan, _ = make_plan(fd, str(img), None)
        assert plan.chunks[-1].end == 5 * MiB + 1000
        result = await writer.flash_image(
            fd,
            str(img),
            str(out_file),
            plan,
            lambda length, sha: seen.append((length, sha)),
            direct=direct,
        )
    finally:
        os.close(fd)
    assert seen == [(5 * MiB + 1000, _sha(img.read_bytes()))]
    assert result.direct is direct
    assert "readback" in result.seconds
    assert out_file.read_bytes() == img.read_bytes()

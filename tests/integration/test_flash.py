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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

import edgeagent.cli as cli
from edgeagent.flash import writer
from edgeagent.flash.pipeline import Poll
from edgeagent.flash.plan import Group
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
    code, out, err = _run(capsys, str(evil / "disk.img"), str(target), *_trust(repo, manifest))
    assert code == 1
    assert out.startswith(f"FAIL {target}")
    assert "do not match the sha256 in the signed block map" in err
    assert f"nothing was written to {target}" in err
    assert not target.exists()


def _bmap_xml(ranges: list[tuple[int, int]], block: int, data: bytes) -> str:
    rows = "".join(
        f'<Range chksum="{_sha(data[f * block : (last + 1) * block])}">{f}-{last}</Range>'
        for f, last in ranges
    )
    return (
        f'<?xml version="1.0" ?>\n<bmap version="2.0"><ImageSize>{len(data)}</ImageSize>'
        f"<BlockSize>{block}</BlockSize><ChecksumType>sha256</ChecksumType>"
        f"<BlockMap>{rows}</BlockMap></bmap>\n"
    )


@pytest.fixture(scope="module")
def three_ranges(work: Path, repo: Repository) -> tuple[Path, Path, bytes]:
    """A sparse image with three 1 MiB ranges at 1, 5 and 9 MiB, its signed bmap and manifest."""
    folder = work / "three"
    folder.mkdir()
    img = folder / "disk.img"
    data = bytearray(IMAGE_SIZE)
    for at in (1, 5, 9):
        data[at * MiB : (at + 1) * MiB] = os.urandom(MiB)
    with img.open("wb") as f:
        f.truncate(IMAGE_SIZE)
        for at in (1, 5, 9):
            f.seek(at * MiB)
            f.write(data[at * MiB : (at + 1) * MiB])
    blocks = MiB // 4096
    ranges = [(at * blocks, (at + 1) * blocks - 1) for at in (1, 5, 9)]
    Path(f"{img}.bmap").write_text(_bmap_xml(ranges, 4096, bytes(data)))
    manifest = folder / "manifest.json"
    argv = ["repo", "sign-manifest", str(repo.path), str(manifest), "--version", "1"]
    assert cli.main([*argv, "--disk", str(img)]) == 0
    return img, manifest, bytes(data)


def _tamper_copy(src: Path, dest: Path, offset: int) -> None:
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(f"{src}.bmap", f"{dest}.bmap")
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x55
    dest.write_bytes(bytes(data))


def test_tampered_range_mid_stream_leaves_only_verified_ranges_and_fails(
    capsys: pytest.CaptureFixture[str],
    work: Path,
    repo: Repository,
    three_ranges: tuple[Path, Path, bytes],
) -> None:
    img, manifest, data = three_ranges
    evil = work / "evil-mid" / "disk.img"
    _tamper_copy(img, evil, 5 * MiB + 12345)
    capsys.readouterr()
    backing = work / "stick-mid.img"
    with loop_device(backing) as dev:
        code, out, err = _run(
            capsys,
            str(evil),
            dev,
            *_trust(repo, manifest),
            "--yes",
            "--loop-backing",
            str(backing),
            "--stream",
        )
    assert code == 1
    assert out.startswith(f"FAIL {dev} serial loop:{backing}:")
    assert f"bytes {5 * MiB}-{6 * MiB - 1} do not match the sha256 in the signed block map" in err
    assert "the 1.0 MiB of verified data before it were written" in err
    assert "the target is incomplete, do not use it" in err
    written = backing.read_bytes()
    # The range before the bad one is written; the bad range and the one after are not.
    assert written[1 * MiB : 2 * MiB] == data[1 * MiB : 2 * MiB]
    assert written[5 * MiB : 6 * MiB] == PATTERN * MiB
    assert written[9 * MiB : 10 * MiB] == PATTERN * MiB
    assert "readback" not in err


def test_tampered_last_range_is_found_before_writing_and_leaves_target_untouched(
    capsys: pytest.CaptureFixture[str],
    work: Path,
    repo: Repository,
    three_ranges: tuple[Path, Path, bytes],
) -> None:
    img, manifest, _ = three_ranges
    evil = work / "evil-last" / "disk.img"
    _tamper_copy(img, evil, 10 * MiB - 1)
    capsys.readouterr()
    backing = work / "stick-vf.img"
    with loop_device(backing) as dev:
        code, out, err = _run(
            capsys,
            str(evil),
            dev,
            *_trust(repo, manifest),
            "--yes",
            "--loop-backing",
            str(backing),
        )
    assert code == 1
    assert out.startswith(f"FAIL {dev}")
    assert f"bytes {9 * MiB}-{10 * MiB - 1} do not match the sha256" in err
    assert "nothing was written" in err
    assert backing.read_bytes() == PATTERN * IMAGE_SIZE


@pytest.mark.parametrize("stream", [False, True])
def test_signed_ranges_flash_passes_in_both_modes(
    capsys: pytest.CaptureFixture[str],
    work: Path,
    repo: Repository,
    three_ranges: tuple[Path, Path, bytes],
    stream: bool,
) -> None:
    img, manifest, data = three_ranges
    capsys.readouterr()
    out_file = work / f"modes-out-{stream}.img"
    mode = ["--stream"] if stream else []
    code, out, err = _run(capsys, str(img), str(out_file), *_trust(repo, manifest), *mode)
    assert code == 0, err
    assert "signed bmap sha256:" in out
    # Streaming has no separate verify phase: ranges are checked as they are written.
    assert ("(verify " in out) is not stream
    assert out_file.read_bytes() == data


def test_nonzero_padding_outside_signed_small_block_ranges_is_refused(
    capsys: pytest.CaptureFixture[str], work: Path, repo: Repository
) -> None:
    # A map with 512-byte blocks: its range 1-1 is written as the whole 4 KiB block 0-4095, so
    # bytes 0-511 and 1024-4095 go to the target although no signed sha256 covers them. They
    # must be zero (as the signed map says); an attacker's boot sector there is refused.
    folder = work / "small-blocks"
    folder.mkdir()
    img = folder / "disk.img"
    data = bytearray(64 * 1024)
    data[512:1024] = os.urandom(512)
    Path(f"{img}.bmap").write_text(_bmap_xml([(1, 1)], 512, bytes(data)))
    img.write_bytes(bytes(data))
    manifest = folder / "manifest.json"
    argv = ["repo", "sign-manifest", str(repo.path), str(manifest), "--version", "1"]
    assert cli.main([*argv, "--disk", str(img)]) == 0
    capsys.readouterr()
    good = folder / "good-out.img"
    code, _, err = _run(capsys, str(img), str(good), *_trust(repo, manifest))
    assert code == 0, err
    assert good.read_bytes() == bytes(data)
    data[0:4] = b"\xebboo"
    img.write_bytes(bytes(data))
    bad = folder / "bad-out.img"
    code, _, err = _run(capsys, str(img), str(bad), *_trust(repo, manifest))
    assert code == 1
    assert "bytes 0-511 must be zero" in err
    assert not bad.exists()


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


@pytest.mark.parametrize("mode", ["stream-held", "stream-reread", "verify-first"])
def test_image_swapped_after_range_check_never_passes(
    monkeypatch: pytest.MonkeyPatch, work: Path, three_ranges: tuple[Path, Path, bytes], mode: str
) -> None:
    from edgeagent.commands.flash import make_plan
    from edgeagent.errors import FlashError
    from edgeagent.flash.plan import signed_ranges

    img, _, data = three_ranges
    if mode == "stream-reread":
        # Groups too big to hold in memory are checked, then re-read for the write.
        monkeypatch.setattr(writer, "HOLD_BYTES", 0)
    copy = work / f"swap-range-{mode}.img"
    shutil.copyfile(img, copy)
    out_file = work / f"swap-range-out-{mode}.img"
    fd = os.open(copy, os.O_RDWR)
    real_check = writer._ImageReader.check_group
    swapped = []

    def check_then_swap(
        self: writer._ImageReader, group: Group, buffers: object, poll: Poll
    ) -> None:
        real_check(self, group, buffers, poll)  # type: ignore[arg-type]
        if group.offset == 1 * MiB:
            # The range matched its signed sha256; now an attacker changes the image.
            swapped.append(os.pwrite(fd, b"\x00evil", 1 * MiB + 4096))

    monkeypatch.setattr(writer._ImageReader, "check_group", check_then_swap)
    try:
        plan, parsed = make_plan(fd, str(copy), f"{img}.bmap")
        assert parsed is not None
        run = partial(
            writer.flash_blocking,
            fd,
            str(copy),
            str(out_file),
            plan,
            lambda length, sha: None,
            ranges=signed_ranges(parsed),
            stream=mode.startswith("stream"),
        )
        if mode == "stream-held":
            # The bytes written are the very bytes that were hashed: the swap never lands.
            result = run()
            assert result.written == 3 * MiB
            assert out_file.read_bytes() == data
        else:
            # The re-read bytes differ from the checked ones: the read-back catches it.
            with pytest.raises(FlashError, match=f"read-back mismatch in bytes {MiB}-"):
                run()
        assert swapped
    finally:
        os.close(fd)


async def test_image_swapped_after_whole_image_verification_fails_read_back(
    work: Path, image: Path
) -> None:
    from edgeagent.commands.flash import make_plan
    from edgeagent.errors import FlashError

    img = work / "swap-whole.img"
    shutil.copyfile(image, img)
    fd = os.open(img, os.O_RDWR)
    try:
        plan, _ = make_plan(fd, str(img), None)

        def swap_after_check(length: int, sha256: str) -> None:
            # The trust check passed; now an attacker changes the image before the write.
            os.pwrite(fd, b"\x00evil", 3 * MiB + 4096)

        with pytest.raises(FlashError, match="read-back mismatch in bytes"):
            await writer.flash_image(
                fd, str(img), str(work / "swap-whole-out.img"), plan, swap_after_check
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


async def test_cancelled_flash_stops_before_writing_and_closes_the_target(
    work: Path, image: Path
) -> None:
    import trio

    from edgeagent.commands.flash import make_plan

    out_file = work / "cancelled-out.img"
    fd = os.open(image, os.O_RDONLY)
    try:
        plan, _ = make_plan(fd, str(image), None)
        with trio.CancelScope() as scope:

            def cancel_on_check(length: int, sha256: str) -> None:
                # Runs in the flash's thread: an operator's Ctrl-C or a station shutting down.
                trio.from_thread.run_sync(partial(scope.cancel, reason="test: station stops"))

            await writer.flash_image(fd, str(image), str(out_file), plan, cancel_on_check)
    finally:
        os.close(fd)
    assert scope.cancelled_caught
    # The flash polls for cancellation before each chunk: nothing was written.
    assert not out_file.exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("flash-")]

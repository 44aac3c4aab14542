"""Build the host OS disk image from ``host-os/recipe.toml`` (``make host-image``).

What it does, in order (docs/host-os.md has the long form):

1. ``mmdebstrap --variant=apt`` a Debian root filesystem into ``out/work/rootfs`` from the build
   machine's apt sources (debs cached in ``host-os/cache/apt``);
2. adds the payload: the pinned wheels (``pip install --no-index --target``, wheels cached in
   ``host-os/cache/wheels``), the agent copied from this checkout, edge-tender, /sbin/edge-init,
   the agent config, the registry's trust root and the network settings; byte-compiles Python
   with unchecked-hash .pyc files (the root is read-only, so nothing is compiled at boot);
3. packs the root as a zstd squashfs with fixed timestamps (the slot image) and enforces the
   size budget;
4. unpacks the pinned kernel package (``apt-get download`` + ``dpkg -x``), builds a busybox
   initramfs (sorted newc cpio, zstd) and one unified kernel image per slot by
   ``objcopy`` onto systemd's EFI stub;
5. makes the ESP (``mkfs.vfat --invariant`` + mtools), the data partition (``mkfs.ext4``),
   the GPT (``sfdisk`` on a plain file) and copies every partition into ``out/disk.img`` keeping
   zero blocks as holes;
6. writes ``out/disk.img.bmap`` (``bmaptool create``: bmaptool's XML format) and the signed
   ``out/manifest.json`` (`edgeagent.hostos.manifest`).

It never mounts anything and never uses loop devices. It does not flash (``edgeagent flash``)
or publish the slot image as an OTA target (``edgeagent repo add-host``). ``--repro`` builds a
second time into ``out/repro/`` and writes ``out/repro-report.txt`` listing the bytes that differ.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from edgeagent.errors import BuildError, ConfigError, EdgeAgentError
from edgeagent.hostos import debpkg
from edgeagent.hostos import layout as lay
from edgeagent.hostos import manifest as mft
from edgeagent.hostos.recipe import HostRecipe, parse_recipe, with_hypervisor, with_overrides

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]
HOSTOS = CHECKOUT / "host-os"
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
BOOTLOADER = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SITE = "usr/lib/edgeagent/site"
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "objcopy": "binutils",
    "cpio": "cpio",
    "bmaptool": "bmap-tools",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "zstd": "zstd",
}


def _run(argv: Sequence[str | Path], **kw: object) -> None:
    log.debug("run: %s", " ".join(str(a) for a in argv))
    try:
        subprocess.run([str(a) for a in argv], check=True, **kw)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{Path(str(argv[0])).name} failed with status {exc.returncode}") from exc
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]}: not found: {exc}") from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _artifact(path: Path, out: Path) -> mft.Artifact:
    return mft.Artifact(str(path.relative_to(out)), path.stat().st_size, _sha256(path))


def check_tools() -> None:
    """Raise BuildError naming the Debian packages to install when a build tool is missing."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    for path, pkg in ((STUB, "systemd-boot-efi"), (BOOTLOADER, "systemd-boot-efi")):
        if not path.exists():
            missing.append(pkg)
    if missing:
        raise BuildError(
            "missing build tools; install them with: apt-get install --no-install-recommends "
            + " ".join(sorted(set(missing)))
        )


class Builder:
    """One build of the recipe into ``out`` (see the module docstring for the steps)."""

    def __init__(self, recipe: HostRecipe, recipe_path: Path, out: Path, cache: Path) -> None:
        self.recipe = recipe
        self.recipe_dir = recipe_path.parent
        self.out = out
        self.work = out / "work"
        self.cache = cache
        self.epoch = recipe.source_date_epoch
        self.env = dict(os.environ, SOURCE_DATE_EPOCH=str(self.epoch), LC_ALL="C", TZ="UTC")
        self.timings: dict[str, float] = {}
        self.agent_src = CHECKOUT / "edgeagent"

    def _step(self, name: str, start: float) -> None:
        self.timings[name] = round(time.monotonic() - start, 1)
        log.info("%s: %.1f s", name, self.timings[name])

    # -- 1 + 2: root filesystem ------------------------------------------------------------

    def rootfs(self) -> Path:
        root = self.work / "rootfs"
        if root.exists():
            shutil.rmtree(root)
        apt_cache = self.cache / "apt"
        apt_cache.mkdir(parents=True, exist_ok=True)
        deb = self.recipe.debian
        argv: list[str | Path] = [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=apt",
            "--include=" + ",".join(lay.root_packages(self.recipe)),
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt=path-exclude={p}" for p in deb.exclude),
            "--skip=download/empty",
            "--skip=essential/unlink",
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}",
            deb.suite,
            root,
            deb.sources,
        ]
        _run(argv, env=self.env)
        return root

    def _wheels(self) -> Path:
        wheels = self.cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        have = {
            p.name.split("-")[0].lower().replace("_", "-") + "==" + p.name.split("-")[1]
            for p in wheels.glob("*.whl")
        }
        want = [w for w in self.recipe.wheels if w.lower().replace("_", "-") not in have]
        if want:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--python-version",
                    "3.11",
                    "--implementation",
                    "cp",
                    "--platform",
                    "manylinux_2_34_x86_64",
                    "--platform",
                    "manylinux_2_28_x86_64",
                    "--platform",
                    "manylinux_2_17_x86_64",
                    "--dest",
                    wheels,
                    *want,
                ]
            )
        return wheels

    def payload(self, root: Path, trust_root: bytes) -> None:
        r = self.recipe
        site = root / SITE
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--disable-pip-version-check",
                "--find-links",
                self._wheels(),
                "--target",
                site,
                *r.wheels,
            ],
            env=self.env,
        )
        for junk in site.glob("*.dist-info"):
            for name in ("RECORD", "INSTALLER", "direct_url.json", "REQUESTED"):
                (junk / name).unlink(missing_ok=True)
        shutil.copytree(
            self.agent_src,
            site / "edgeagent",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        libdir = root / "usr/lib/edgeagent"
        tender = (self.recipe_dir / r.tender_path).resolve()
        if not tender.is_file():
            raise BuildError(f"{tender}: edge-tender is not built (run `make tender`)")
        shutil.copy2(tender, libdir / "edge-tender")
        init = root / "sbin/edge-init"
        shutil.copy2(HOSTOS / "rootfs/sbin/edge-init", init)
        init.chmod(0o755)
        etc = root / "etc/edgeagent"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "agent.toml").write_text(lay.agent_config(r))
        (etc / "root.json").write_bytes(trust_root)
        (etc / "host.env").write_text(lay.host_env(r))
        (root / "etc/hostname").write_text(r.agent.device_id + "\n")
        (root / "etc/os-release").unlink(missing_ok=True)
        (root / "etc/os-release").write_text(lay.os_release(r))
        for d in ("data", "efi", "run", "tmp", "var/lib/edgeagent"):
            (root / d).mkdir(parents=True, exist_ok=True)
        # State that is rebuilt anyway, and the apt lists, are not part of the slot image.
        for d in ("var/cache/apt", "var/lib/apt/lists", "var/log"):
            shutil.rmtree(root / d, ignore_errors=True)
            (root / d).mkdir(parents=True, exist_ok=True)
        for f in ("etc/machine-id", "var/lib/dbus/machine-id"):
            p = root / f
            if p.exists():
                p.write_text("")
        # Unchecked-hash .pyc files do not depend on mtimes; the read-only root never
        # recompiles. The image's own interpreter compiles (same magic number by definition).
        _run(
            [
                "chroot",
                root,
                "python3",
                "-m",
                "compileall",
                "-q",
                "-f",
                "-j",
                "0",
                "--invalidation-mode",
                "unchecked-hash",
                "/usr/lib/python3.11",
                "/usr/lib/python3/dist-packages",
                "/" + SITE,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        self.smoke(root)

    def smoke(self, root: Path) -> None:
        """Run the image's runners inside the root once: a missing library or a file the
        recipe's ``exclude`` dropped by mistake fails the build here, not on a device."""
        checks = [["/usr/lib/edgeagent/edge-tender", "--version"]]
        if (root / "usr/bin/qemu-system-x86_64").exists():
            checks.append(["/usr/bin/qemu-system-x86_64", "--version"])
        for argv in checks:
            done = subprocess.run(
                ["chroot", str(root), *argv], env=self.env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise BuildError(
                    f"{argv[0]} does not run in the image (exit {done.returncode}): "
                    f"{(done.stderr or done.stdout).strip()[-300:]}"
                )
            log.info("smoke: %s", (done.stdout.splitlines() or ["?"])[0])

    def squashfs(self, root: Path) -> Path:
        slot = self.out / "slot.squashfs"
        slot.unlink(missing_ok=True)
        _run(
            [
                "mksquashfs",
                root,
                slot,
                "-comp",
                "zstd",
                "-Xcompression-level",
                "19",
                "-b",
                "256K",
                "-noappend",
                "-no-progress",
                "-quiet",
                "-all-root",
                "-all-time",
                str(self.epoch),
                "-mkfs-time",
                str(self.epoch),
                "-processors",
                "2",
            ],
            # mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time/-mkfs-time.
            env={k: v for k, v in self.env.items() if k != "SOURCE_DATE_EPOCH"},
            stdout=subprocess.DEVNULL,
        )
        size = slot.stat().st_size
        budget = self.recipe.slot_budget_mb * 1000 * 1000
        if size > budget:
            raise BuildError(
                f"{slot}: the compressed slot image is {size / 1e6:.1f} MB, over the budget of "
                f"{self.recipe.slot_budget_mb} MB (recipe field 'image.slot_budget_mb'); "
                "drop packages or files"
            )
        if size > self.recipe.partitions.root_mb * lay.MIB:
            raise BuildError(f"{slot}: {size} bytes do not fit in partitions.root_mb")
        return slot

    # -- 4: kernel, initramfs, UKIs ----------------------------------------------------------

    def _unpack(self, pkg: str, dest: Path) -> Path:
        """``pkg``'s .deb (downloaded into the cache once) unpacked into a fresh ``dest``."""
        deb = debpkg.fetch([pkg], self.cache / "debs")[pkg]
        if dest.exists():
            shutil.rmtree(dest)
        debpkg.unpack(deb, dest)
        return deb

    def kernel(self) -> tuple[Path, Path, str]:
        kdir = self.work / "kernel"
        deb = self._unpack(self.recipe.kernel.package, kdir)
        vmlinuz = sorted((kdir / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BuildError(f"{deb}: no boot/vmlinuz-* inside")
        kver = vmlinuz[0].name.removeprefix("vmlinuz-")
        # The package ships no modules.dep (depmod runs at install time); make it here.
        _run(["depmod", "-b", kdir, kver])
        return vmlinuz[0], kdir / "lib/modules" / kver, deb.name

    def xen_efi(self) -> tuple[Path, str]:
        """Xen's EFI binary from the recipe's xen-hypervisor package."""
        assert self.recipe.xen is not None
        xdir = self.work / "xen"
        deb = self._unpack(self.recipe.xen.package, xdir)
        efi = sorted((xdir / "boot").glob("xen-*.efi"))
        if not efi:
            raise BuildError(f"{deb}: no boot/xen-*.efi inside (recipe field 'xen.package')")
        return efi[0], deb.name

    def initramfs(self, root: Path, moddir: Path) -> Path:
        ird = self.work / "initramfs"
        if ird.exists():
            shutil.rmtree(ird)
        (ird / "bin").mkdir(parents=True)
        shutil.copy2(root / "bin/busybox", ird / "bin/busybox")
        shutil.copy2(HOSTOS / "initramfs/init", ird / "init")
        (ird / "init").chmod(0o755)
        dep_text = (moddir / "modules.dep").read_text()
        builtin = (moddir / "modules.builtin").read_text()
        source = str(moddir / "modules.dep")
        k = self.recipe.kernel
        wanted = lay.initramfs_modules(self.recipe)
        order = lay.module_load_order(dep_text, builtin, wanted, source=source)
        fallback = [
            m
            for m in lay.module_load_order(dep_text, builtin, k.fallback_modules, source=source)
            if m not in order
        ]
        listed: list[str] = []
        for rel in order + fallback:
            src = moddir / rel
            name = rel.rsplit("/", 1)[-1]
            dst = ird / "lib/modules" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".xz"):
                _run(["sh", "-c", f"xz -dc '{src}' > '{dst.with_suffix('')}'"])
                name = name.removesuffix(".xz")
            else:
                shutil.copy2(src, dst)
            listed.append(name)
        (ird / "modules.list").write_text("\n".join(listed[: len(order)]) + "\n")
        (ird / "modules.fallback").write_text("".join(f"{m}\n" for m in listed[len(order) :]))
        for d in ("proc", "sys", "dev", "newroot"):
            (ird / d).mkdir()
        for p in ird.rglob("*"):
            os.utime(p, (self.epoch, self.epoch), follow_symlinks=False)
        files = sorted(str(p.relative_to(ird)) for p in ird.rglob("*"))
        raw = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
            input=("\n".join(files) + "\n").encode(),
            cwd=ird,
            capture_output=True,
            check=True,
        ).stdout
        # zstd: ~20 % smaller than gzip (less for OVMF to read) and faster to unpack.
        out = self.work / "initrd.img"
        out.write_bytes(
            subprocess.run(
                ["zstd", "-19", "-q", "-c"], input=raw, capture_output=True, check=True
            ).stdout
        )
        return out

    def xen_uki(self, xen_efi: Path, vmlinuz: Path, initrd: Path, slot: str) -> Path:
        """Slot ``slot``'s unified Xen EFI image: xen.efi + ``.osrel`` (so systemd-boot lists it
        like a UKI and counts its boots) + ``.config`` (xen.cfg) + ``.kernel`` + ``.ramdisk``.

        Xen 4.16+ finds these sections in its own loaded image. They go after Xen's last section
        on 2 MiB boundaries, in Xen's virtual address range (ADR 0013).
        """
        r = self.recipe
        tmp = self.work / f"uki-{slot}"
        tmp.mkdir(exist_ok=True)
        (tmp / "osrel").write_text(lay.os_release(r))
        (tmp / "xen.cfg").write_text(lay.xen_config(r, slot))
        sections = [
            (".osrel", tmp / "osrel"),
            (".config", tmp / "xen.cfg"),
            (".kernel", vmlinuz),
            (".ramdisk", initrd),
        ]
        vma = lay.xen_sections_start(_pe_sections_end(xen_efi))
        argv: list[str | Path] = ["objcopy"]
        for name, path in sections:
            argv += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
            vma = lay.align_2m(vma + path.stat().st_size)
        out = self.work / f"{r.name}-{slot}.efi"
        _run([*argv, xen_efi, out])
        out.write_bytes(lay.pe_set_timestamp(out.read_bytes(), self.epoch))
        return out

    def uki(self, vmlinuz: Path, initrd: Path, slot: str) -> Path:
        r = self.recipe
        tmp = self.work / f"uki-{slot}"
        tmp.mkdir(exist_ok=True)
        (tmp / "osrel").write_text(lay.os_release(r))
        (tmp / "cmdline").write_text(lay.uki_cmdline(r, slot) + "\n")
        kernel_vma = 0x2000000
        initrd_vma = kernel_vma + ((vmlinuz.stat().st_size + lay.MIB - 1) // lay.MIB) * lay.MIB
        out = self.work / f"{r.name}-{slot}.efi"
        _run(
            [
                "objcopy",
                "--add-section",
                f".osrel={tmp / 'osrel'}",
                "--change-section-vma",
                ".osrel=0x20000",
                "--add-section",
                f".cmdline={tmp / 'cmdline'}",
                "--change-section-vma",
                ".cmdline=0x30000",
                "--add-section",
                f".linux={vmlinuz}",
                "--change-section-vma",
                f".linux={kernel_vma:#x}",
                "--add-section",
                f".initrd={initrd}",
                "--change-section-vma",
                f".initrd={initrd_vma:#x}",
                STUB,
                out,
            ]
        )
        out.write_bytes(lay.pe_set_timestamp(out.read_bytes(), self.epoch))
        return out

    # -- 5: partitions and the disk ------------------------------------------------------------

    def esp(self, ukis: dict[str, Path], layout: lay.DiskLayout) -> Path:
        r = self.recipe
        img = self.work / "esp.img"
        img.unlink(missing_ok=True)
        part = layout.partition("esp")
        volid = lay.stable_uuid(r, "esp-volume").replace("-", "")[:8]
        _run(
            [
                "mkfs.vfat",
                "--invariant",
                "-F",
                "32",
                "-n",
                "ESP",
                "-i",
                volid,
                "-C",
                img,
                str(part.size // 1024),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        stage = self.work / "esp"
        if stage.exists():
            shutil.rmtree(stage)
        (stage / "loader").mkdir(parents=True)
        (stage / "loader/loader.conf").write_text(lay.loader_conf(r))
        shutil.copy2(BOOTLOADER, stage / "BOOTX64.EFI")
        for slot, path in ukis.items():
            shutil.copy2(path, stage / lay.uki_name(r, slot, counting=slot == lay.FIRST_SLOT))
        for p in stage.rglob("*"):
            os.utime(p, (self.epoch, self.epoch))
        env = dict(self.env, MTOOLS_SKIP_CHECK="1")
        for d in ("::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader"):
            _run(["mmd", "-i", img, d], env=env)
        _run(["mcopy", "-m", "-i", img, stage / "BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI"], env=env)
        _run(["mcopy", "-m", "-i", img, stage / "loader/loader.conf", "::/loader/"], env=env)
        for slot in sorted(ukis):
            name = lay.uki_name(r, slot, counting=slot == lay.FIRST_SLOT)
            _run(["mcopy", "-m", "-i", img, stage / name, f"::/EFI/Linux/{name}"], env=env)
        return img

    def data(self, layout: lay.DiskLayout) -> Path:
        # An empty file system: the initramfs creates /data/{etc,var}/{upper,work} on first
        # boot. (Populating with `mkfs.ext4 -d` stamps the build time into inode ctimes on
        # bookworm's e2fsprogs 1.47.0, which made the partition differ between builds.)
        img = self.work / "data.img"
        img.unlink(missing_ok=True)
        part = layout.partition("data")
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "data",
                "-U",
                lay.stable_uuid(self.recipe, "data-fs"),
                "-E",
                f"hash_seed={lay.stable_uuid(self.recipe, 'data-hash')}",
                img,
                f"{part.size // 1024}k",
            ],
            env=dict(self.env, E2FSPROGS_FAKE_TIME=str(self.epoch)),
            stdout=subprocess.DEVNULL,
        )
        return img

    def disk(self, layout: lay.DiskLayout, images: dict[str, Path]) -> Path:
        disk = self.out / "disk.img"
        disk.unlink(missing_ok=True)
        with disk.open("wb") as f:
            f.truncate(layout.size)
        _run(
            ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk],
            input=lay.sfdisk_script(layout).encode(),
            stdout=subprocess.DEVNULL,
        )
        block = 64 * 1024
        with disk.open("r+b") as f:
            for name, src in images.items():
                part = layout.partition(name)
                if src.stat().st_size > part.size:
                    raise BuildError(f"{src}: larger than partition {name} ({part.size} bytes)")
                with src.open("rb") as s:
                    pos = part.offset
                    while chunk := s.read(block):
                        # Zero blocks stay holes: the block map and flashing skip them.
                        if chunk.count(0) != len(chunk):
                            f.seek(pos)
                            f.write(chunk)
                        pos += len(chunk)
        return disk

    # -- the whole build -------------------------------------------------------------------------

    def trust_root(self) -> tuple[bytes, Path]:
        repo_dir = (self.recipe_dir / self.recipe.agent.repository).resolve()
        root_file = repo_dir / "metadata/1.root.json"
        if not root_file.exists():
            from edgeagent.publisher.repo import Repository

            log.info("no repository at %s: creating a demo one (demo keys)", repo_dir)
            Repository.init(repo_dir)
        return root_file.read_bytes(), repo_dir

    def signers(self, repo_dir: Path, root_json: bytes) -> list[mft.Signer]:
        from tuf.api.metadata import Metadata, Root  # type: ignore[attr-defined]

        from edgeagent.publisher import keys

        root = Metadata[Root].from_bytes(root_json).signed
        role = root.roles["targets"]
        out: list[mft.Signer] = []
        for keyid in role.keyids:
            pair = keys.load_key(repo_dir / "keys", keyid)
            if pair is not None:
                out.append(pair.signer)
        if len(out) < role.threshold:
            raise BuildError(
                f"{repo_dir / 'keys'}: only {len(out)} of the targets role's keys are here "
                f"(threshold {role.threshold}); cannot sign the image manifest"
            )
        return out[: role.threshold]

    def use_agent_source(self, src: Path) -> None:
        """Copy the agent from ``src`` instead of the live checkout (``--repro`` snapshots it)."""
        self.agent_src = src

    def build(self) -> dict[str, object]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        r = self.recipe
        t0 = time.monotonic()
        root_json, repo_dir = self.trust_root()
        signers = self.signers(repo_dir, root_json)
        t = time.monotonic()
        root = self.rootfs()
        self._step("rootfs", t)
        t = time.monotonic()
        self.payload(root, root_json)
        self._step("payload", t)
        t = time.monotonic()
        slot = self.squashfs(root)
        self._step("squashfs", t)
        t = time.monotonic()
        vmlinuz, moddir, kdeb = self.kernel()
        initrd = self.initramfs(root, moddir)
        if r.hypervisor == "xen":
            xen_efi, xdeb = self.xen_efi()
            ukis = {s: self.xen_uki(xen_efi, vmlinuz, initrd, s) for s in lay.SLOTS}
            kdeb = f"{xdeb} {kdeb}"
        else:
            ukis = {s: self.uki(vmlinuz, initrd, s) for s in lay.SLOTS}
        self._step("kernel+initramfs+uki", t)
        t = time.monotonic()
        layout = lay.disk_layout(r)
        images = {
            "esp": self.esp(ukis, layout),
            "root-a": slot,
            "root-b": slot,
            "data": self.data(layout),
        }
        disk = self.disk(layout, images)
        self._step("disk", t)
        t = time.monotonic()
        bmap = self.out / "disk.img.bmap"
        bmap.unlink(missing_ok=True)
        _run(["bmaptool", "-q", "create", "-o", bmap, disk])
        for path in ukis.values():
            shutil.copy2(path, self.out / path.name)
        created = datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        signed = mft.signed_part(
            name=r.name,
            version=r.version,
            created=created,
            kernel=kdeb,
            disk=_artifact(disk, self.out),
            bmap=_artifact(bmap, self.out),
            slots={s: _artifact(slot, self.out) for s in lay.SLOTS},
            ukis={s: _artifact(self.out / ukis[s].name, self.out) for s in lay.SLOTS},
            partitions=[
                {
                    "name": p.name,
                    "start": p.offset,
                    "size": p.size,
                    "uuid": p.uuid,
                    "type": p.type_guid,
                }
                for p in layout.partitions
            ],
        )
        (self.out / "manifest.json").write_bytes(mft.sign_manifest(signed, signers))
        (self.out / "root.json").write_bytes(root_json)
        self._step("bmap+manifest", t)
        self.timings["total"] = round(time.monotonic() - t0, 1)
        info: dict[str, object] = {
            "timings_s": self.timings,
            "slot_image_bytes": slot.stat().st_size,
            "disk_image_bytes": disk.stat().st_size,
            "disk_allocated_bytes": disk.stat().st_blocks * 512,
            "uki_bytes": ukis[lay.FIRST_SLOT].stat().st_size,
            "registry_url": r.agent.registry_url,
            "repository": str(repo_dir),
            "hypervisor": r.hypervisor,
        }
        (self.out / "build-info.json").write_text(json.dumps(info, indent=1, sort_keys=True))
        shutil.rmtree(self.work / "rootfs", ignore_errors=True)
        return info


ARTIFACTS = ("slot.squashfs", "disk.img", "disk.img.bmap", "manifest.json")


def _pe_sections_end(path: Path) -> int:
    """The highest virtual address any section of PE image ``path`` covers (objdump -h)."""
    out = subprocess.run(
        ["objdump", "-h", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return lay.pe_sections_end(out, source=str(path))


def _diff_ranges(a: Path, b: Path) -> tuple[int, list[tuple[int, int]]]:
    """Count differing bytes of two files and return up to 20 differing ranges."""
    diff = 0
    ranges: list[tuple[int, int]] = []
    block = 1 << 20
    pos = 0
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            ca, cb = fa.read(block), fb.read(block)
            if not ca and not cb:
                break
            if ca != cb:
                for i in range(max(len(ca), len(cb))):
                    x = ca[i] if i < len(ca) else -1
                    y = cb[i] if i < len(cb) else -1
                    if x != y:
                        diff += 1
                        off = pos + i
                        if ranges and ranges[-1][1] == off:
                            ranges[-1] = (ranges[-1][0], off + 1)
                        elif len(ranges) < 20:
                            ranges.append((off, off + 1))
            pos += block
    return diff, ranges


def repro_report(first: Path, second: Path, layout: lay.DiskLayout) -> str:
    """Compare two builds' artifacts; name the partition of each differing disk range."""
    lines = [f"reproducibility: {first} vs {second}"]
    for name in (*ARTIFACTS, *(p.name for p in sorted(first.glob("*.efi")))):
        a, b = first / name, second / name
        if not a.exists() or not b.exists():
            lines.append(f"{name}: missing in one build")
            continue
        if _sha256(a) == _sha256(b):
            lines.append(f"{name}: identical ({a.stat().st_size} bytes)")
            continue
        n, ranges = _diff_ranges(a, b)
        lines.append(f"{name}: {n} bytes differ")
        for lo, hi in ranges:
            where = ""
            if name == "disk.img":
                for p in layout.partitions:
                    if p.offset <= lo < p.offset + p.size:
                        where = f" (partition {p.name} +{lo - p.offset:#x})"
                if lo < layout.partitions[0].offset:
                    where = " (GPT)"
            lines.append(f"  [{lo:#x}, {hi:#x}){where}")
    return "\n".join(lines) + "\n"


def load_recipe(path: Path) -> HostRecipe:
    """Read and validate the recipe, applying EDGE_HOSTOS_REGISTRY_URL / EDGE_HOSTOS_REPO."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    recipe = parse_recipe(data, str(path))
    return with_overrides(
        recipe,
        registry_url=os.environ.get("EDGE_HOSTOS_REGISTRY_URL"),
        repository=os.environ.get("EDGE_HOSTOS_REPO"),
        source="environment",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgeagent.hostos.build [--recipe F] [--out D] [--check] [--repro]``."""
    p = argparse.ArgumentParser(
        prog="python -m edgeagent.hostos.build",
        description="Build host-os/out/disk.img from host-os/recipe.toml (docs/host-os.md). "
        "EDGE_HOSTOS_REGISTRY_URL and EDGE_HOSTOS_REPO (a repository folder with its keys) "
        "override the baked-in registry and trust root.",
    )
    p.add_argument("--recipe", type=Path, default=HOSTOS / "recipe.toml")
    p.add_argument("--out", type=Path, default=HOSTOS / "out")
    p.add_argument("--cache", type=Path, default=HOSTOS / "cache")
    p.add_argument(
        "--hypervisor",
        choices=("kvm", "xen"),
        help="override the recipe's image.hypervisor (xen: Xen boots first, the host is dom0)",
    )
    p.add_argument("--check", action="store_true", help="only validate the recipe and tools")
    p.add_argument(
        "--repro", action="store_true", help="build twice and write OUT/repro-report.txt"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="host-image: %(message)s"
    )
    try:
        recipe = load_recipe(args.recipe)
        if args.hypervisor is not None:
            recipe = with_hypervisor(recipe, args.hypervisor, source="--hypervisor")
        check_tools()
        if args.check:
            print(f"{args.recipe}: ok ({recipe.name} {recipe.version})")
            return 0
        if os.geteuid() != 0:
            raise BuildError("the host image build needs root (mmdebstrap --mode=root, chroot)")
        out = args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        # Two builds into one folder would delete each other's work: the second one waits.
        lock = (out / ".build.lock").open("w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        first = Builder(recipe, args.recipe.resolve(), out, args.cache.resolve())
        if args.repro:
            # Both builds copy one snapshot of the agent: the checkout may change meanwhile.
            snapshot = out / "repro-agent-src"
            shutil.rmtree(snapshot, ignore_errors=True)
            shutil.copytree(
                CHECKOUT / "edgeagent",
                snapshot,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
            first.use_agent_source(snapshot)
        info = first.build()
        print(json.dumps(info, indent=1, sort_keys=True))
        if args.repro:
            second = out / "repro"
            if second.exists():
                shutil.rmtree(second)
            again = Builder(recipe, args.recipe.resolve(), second, args.cache.resolve())
            again.use_agent_source(out / "repro-agent-src")
            again.build()
            report = repro_report(out, second, lay.disk_layout(recipe))
            (out / "repro-report.txt").write_text(report)
            print(report, end="")
    except EdgeAgentError as exc:
        print(f"host-image: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

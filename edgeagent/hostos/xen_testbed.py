"""Build the Xen test bed (``make xen-testbed``) from Debian packages only.

What it builds, into ``host-os/xen-testbed/out/`` (docs: host-os/xen-testbed/README.md):

- ``xen.bin``: Debian's Xen 4.17 hypervisor (``boot/xen-4.17-amd64.gz`` unzipped: a 32-bit ELF
  with a multiboot1 header that QEMU's ``-kernel`` loads directly);
- ``vmlinuz``: the Debian kernel, booted as the PV dom0 (the same pinned package as the host
  image, ``host-os/recipe.toml``) and also usable as a Linux PV guest;
- ``dom0-base.cpio``: the dom0 root as an initramfs: busybox, the Xen tools (xl, xenstored,
  xenconsoled, xen-init-dom0, ...), their libraries, the Xen kernel modules, Debian's
  python3.11 and the agent's pinned wheels (the host image's list and wheel cache), byte
  compiled; ``host-os/xen-testbed/init`` as /init;
- ``guest-initrd.cpio``: a tiny busybox initramfs for the Linux PV control guest (it prints a
  line, lists a few facts and powers off).

Packages are fetched with ``apt-get download`` into ``host-os/xen-testbed/cache/`` (the host
image's caches are searched first) and unpacked with ``dpkg-deb -x``: nothing is installed on
the build machine. A second build with unchanged inputs only checks a stamp and returns.

What it does not do: put the agent into the base archive (every boot appends the checkout's
current ``edgeagent/`` as a second cpio archive, `edgeagent.hostos.xen_boot`), boot anything,
or build guest images (``make images``).
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
from pathlib import Path

from edgeagent.errors import BuildError, EdgeAgentError
from edgeagent.hostos import debpkg
from edgeagent.hostos.layout import module_load_order
from edgeagent.hostos.recipe import parse_recipe

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]
HOSTOS = CHECKOUT / "host-os"
TESTBED = HOSTOS / "xen-testbed"
OUT = TESTBED / "out"
CACHE = TESTBED / "cache"
XEN_BIN_DIR = "usr/lib/xen-4.17/bin"

XEN_PACKAGES = (
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xenstore-utils",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenmisc4.17",
    "libxenstore4",
    "libxentoollog1",
    "libxendevicemodel1",
    "libxenhypfs1",
    "libxentoolcore1",
    "libyajl2",
    "libext2fs2",
    "libcom-err2",
    "libncurses6",
    "libtinfo6",
)
BASE_PACKAGES = (
    "busybox-static",
    "libc6",
    "libgcc-s1",
    "liblzma5",
    "libuuid1",
    "zlib1g",
    "libzstd1",
)
PYTHON_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libexpat1",
    "libssl3",
    "libffi8",
    "libbz2-1.0",
    "libcrypt1",
    "libsqlite3-0",
)
# Xen's dom0 drivers (xen-notes.md); bridge and netback are there for guests with a vif.
DOM0_MODULES = (
    "xen_evtchn",
    "xen_gntdev",
    "xen_gntalloc",
    "xen_privcmd",
    "xenfs",
    "xen_netback",
    "bridge",
)
# Xen tools kept in the root (the rest of xen-utils is left out to keep the archive small).
XEN_TOOLS = (
    "xl",
    "xenstored",
    "xenconsoled",
    "xen-init-dom0",
    "libxl-save-helper",
    "xenconsole",
)
# Trimmed from the staged root: documentation and parts of the standard library the agent
# never imports.
PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/xen-4.17/boot",
    "usr/lib/xen-4.17/lib/python",
    "usr/lib/xen-4.17/lib/x86_64-linux-gnu",
    "usr/share/xen",
)
# Standard library extensions that need libraries the root leaves out (never imported).
PRUNE_EXTENSIONS = ("_dbm", "_curses", "_curses_panel", "readline", "nis")


def _run(argv: Sequence[str | Path], **kw: object) -> None:
    log.debug("run: %s", " ".join(str(a) for a in argv))
    try:
        subprocess.run([str(a) for a in argv], check=True, **kw)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{Path(str(argv[0])).name} failed with status {exc.returncode}") from exc
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]}: not found: {exc}") from exc


def cpio_archive(root: Path, out: Path, *, epoch: int) -> None:
    """Pack ``root`` as an uncompressed newc cpio (sorted names, owner 0:0, fixed mtimes).

    Uncompressed on purpose: under TCG, dom0 would spend seconds unpacking gzip or zstd.
    """
    for p in root.rglob("*"):
        os.utime(p, (epoch, epoch), follow_symlinks=False)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        _run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
            input=("\n".join(names) + "\n").encode(),
            cwd=root,
            stdout=f,
        )
    os.replace(tmp, out)


def compile_python(paths: Sequence[Path]) -> None:
    """Byte-compile with unchecked-hash .pyc files (valid whatever the mtimes; Python 3.11)."""
    if sys.version_info[:2] != (3, 11):
        raise BuildError(
            f"the dom0 root runs Debian's Python 3.11; build with a 3.11 interpreter, "
            f"not {sys.version.split()[0]}"
        )
    _run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-f",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            *paths,
        ],
        stdout=subprocess.DEVNULL,
    )


class TestbedBuilder:
    """One build of the test bed's base artefacts into ``out`` (see the module docstring)."""

    def __init__(self, out: Path = OUT, cache: Path = CACHE) -> None:
        self.out = out
        self.cache = cache
        recipe_path = HOSTOS / "recipe.toml"
        self.recipe = parse_recipe(recipe_path.read_bytes(), str(recipe_path))
        self.epoch = self.recipe.source_date_epoch
        self.packages = (*XEN_PACKAGES, *BASE_PACKAGES, *PYTHON_PACKAGES)
        # Shared with the host image build (same pinned wheels, same kernel and base debs).
        self.wheel_cache = HOSTOS / "cache" / "wheels"
        self.deb_caches = [HOSTOS / "cache" / "apt", HOSTOS / "cache" / "debs"]

    def _stamp_text(self) -> str:
        h = hashlib.sha256()
        for f in (Path(__file__), Path(debpkg.__file__), TESTBED / "init", TESTBED / "xtb-guest"):
            h.update(f.read_bytes())
        doc = {
            "packages": list(self.packages),
            "kernel": self.recipe.kernel.package,
            "wheels": list(self.recipe.wheels),
            "inputs": h.hexdigest(),
        }
        return json.dumps(doc, sort_keys=True)

    def up_to_date(self) -> bool:
        stamp = self.out / "stamp.json"
        return (
            stamp.exists()
            and stamp.read_text() == self._stamp_text()
            and all((self.out / n).exists() for n in ARTEFACTS)
        )

    def debs(self) -> dict[str, Path]:
        return debpkg.fetch(
            [*self.packages, self.recipe.kernel.package], self.cache / "debs", also=self.deb_caches
        )

    def hypervisor(self, deb: Path) -> Path:
        tmp = self.out / "work" / "xen"
        shutil.rmtree(tmp, ignore_errors=True)
        debpkg.unpack(deb, tmp)
        found = sorted((tmp / "boot").glob("xen-4.17*-amd64.gz"))
        if not found:
            raise BuildError(f"{deb}: no boot/xen-4.17*-amd64.gz inside")
        out = self.out / "xen.bin"
        with out.open("wb") as f:
            _run(["zcat", found[0]], stdout=f)
        shutil.rmtree(tmp)
        return out

    def kernel(self, deb: Path) -> tuple[Path, Path]:
        kdir = self.out / "work" / "kernel"
        shutil.rmtree(kdir, ignore_errors=True)
        debpkg.unpack(deb, kdir)
        vmlinuz = sorted((kdir / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BuildError(f"{deb}: no boot/vmlinuz-* inside")
        kver = vmlinuz[0].name.removeprefix("vmlinuz-")
        _run(["depmod", "-b", kdir, kver])
        shutil.copy2(vmlinuz[0], self.out / "vmlinuz")
        return self.out / "vmlinuz", kdir / "lib/modules" / kver

    def modules(self, moddir: Path, root: Path) -> None:
        order = module_load_order(
            (moddir / "modules.dep").read_text(),
            (moddir / "modules.builtin").read_text(),
            DOM0_MODULES,
            source=str(moddir / "modules.dep"),
        )
        dst = root / "lib/modules"
        dst.mkdir(parents=True, exist_ok=True)
        names = []
        for rel in order:
            name = rel.rsplit("/", 1)[-1]
            if name.endswith(".xz"):
                with (dst / name.removesuffix(".xz")).open("wb") as f:
                    _run(["xz", "-dc", moddir / rel], stdout=f)
                name = name.removesuffix(".xz")
            else:
                shutil.copy2(moddir / rel, dst / name)
            names.append(name)
        (dst / "load.list").write_text("".join(f"{n}\n" for n in names))

    def wheels(self, root: Path) -> Path:
        wheels = self.wheel_cache
        wheels.mkdir(parents=True, exist_ok=True)
        site = root / "usr/lib/edgeagent/site"
        pip = [sys.executable, "-m", "pip"]
        base = ["--quiet", "--disable-pip-version-check"]
        have = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
        want = [w for w in self.recipe.wheels if w.split("==")[0].lower() not in have]
        if want:
            plat = ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64"]
            _run(
                [
                    *pip,
                    "download",
                    *base,
                    "--no-deps",
                    "--only-binary=:all:",
                    "--python-version",
                    "3.11",
                    "--implementation",
                    "cp",
                    *(a for p in plat for a in ("--platform", p)),
                    "--dest",
                    wheels,
                    *want,
                ]
            )
        _run(
            [
                *pip,
                "install",
                *base,
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--find-links",
                wheels,
                "--target",
                site,
                *self.recipe.wheels,
            ]
        )
        return site

    def dom0_root(self, debs: dict[str, Path], moddir: Path) -> Path:
        root = self.out / "work" / "dom0"
        shutil.rmtree(root, ignore_errors=True)
        for name in (*XEN_PACKAGES[1:], *BASE_PACKAGES, *PYTHON_PACKAGES):
            debpkg.unpack(debs[name], root)
        for rel in PRUNE:
            shutil.rmtree(root / rel, ignore_errors=True)
        dynload = root / "usr/lib/python3.11/lib-dynload"
        for ext in PRUNE_EXTENSIONS:
            for f in dynload.glob(f"{ext}.cpython-311-*.so"):
                f.unlink()
        xbin = root / XEN_BIN_DIR
        for tool in xbin.iterdir():
            if tool.name not in XEN_TOOLS:
                tool.unlink()
        missing = [t for t in XEN_TOOLS if not (xbin / t).exists()]
        if missing:
            raise BuildError(f"xen-utils-4.17: {', '.join(missing)} not in {XEN_BIN_DIR}")
        # Keep the default interpreter name and drop the wrapper scripts that look for an
        # installed Xen (the PATH in /init puts the versioned tools first).
        (root / "usr/bin/python3").symlink_to("python3.11")
        for d in ("proc", "sys", "dev", "run", "tmp", "var", "etc", "root", "testbed"):
            (root / d).mkdir(exist_ok=True)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
        (root / "etc/xen").mkdir(exist_ok=True)
        (root / "etc/xen/xl.conf").write_text('autoballoon="off"\n')
        shutil.copy2(TESTBED / "init", root / "init")
        (root / "init").chmod(0o755)
        local = root / "usr/local/bin"
        local.mkdir(parents=True)
        shutil.copy2(TESTBED / "xtb-guest", local / "xtb-guest")
        (local / "xtb-guest").chmod(0o755)
        (local / "edgeagent").write_text('#!/bin/sh\nexec python3 -m edgeagent "$@"\n')
        (local / "edgeagent").chmod(0o755)
        self.modules(moddir, root)
        site = self.wheels(root)
        compile_python([root / "usr/lib/python3.11", site])
        elves = [
            *xbin.iterdir(),
            root / "usr/bin/python3.11",
            *(root / "usr/lib/python3.11/lib-dynload").glob("*.so"),
            *site.rglob("*.so"),
        ]
        debpkg.check_libraries(root, elves)
        return root

    def guest_initrd(self, busybox_deb: Path) -> Path:
        root = self.out / "work" / "guest"
        shutil.rmtree(root, ignore_errors=True)
        debpkg.unpack(busybox_deb, root / "pkg")
        (root / "bin").mkdir()
        shutil.move(root / "pkg/bin/busybox", root / "bin/busybox")
        shutil.rmtree(root / "pkg")
        for d in ("proc", "sys", "dev"):
            (root / d).mkdir()
        init = root / "init"
        init.write_text(
            "#!/bin/busybox sh\n"
            "/bin/busybox --install -s /bin\n"
            "mount -t proc proc /proc\n"
            'echo "linux-pv-guest: hello from $(uname -r) uptime=$(cut -d" " -f1 /proc/uptime)"\n'
            "poweroff -f\n"
        )
        init.chmod(0o755)
        out = self.out / "guest-initrd.cpio"
        cpio_archive(root, out, epoch=self.epoch)
        shutil.rmtree(root)
        return out

    def host_xl(self, root: Path) -> Path:
        """Keep the unpacked Xen tools and a wrapper ``out/bin/xl`` runnable on the build host.

        Outside Xen, ``xl`` fails for real (no /proc/xen, no xenstored): the agent's tests use
        it as a genuinely failing ``xl``.
        """
        tools = self.out / "xen-tools"
        shutil.rmtree(tools, ignore_errors=True)
        shutil.copytree(root / XEN_BIN_DIR, tools / "bin", symlinks=True)
        libs = tools / "lib"
        libs.mkdir()
        for lib in (root / "usr/lib/x86_64-linux-gnu").iterdir():
            if lib.name.startswith(("libxen", "libxl", "libyajl", "libext2fs", "libcom_err")):
                shutil.copy2(lib, libs / lib.name, follow_symlinks=False)
        wrapper = self.out / "bin" / "xl"
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(
            "#!/bin/sh\n# Debian's xl from the Xen test bed, run outside Xen (it fails there).\n"
            'here=$(dirname "$(readlink -f "$0")")/../xen-tools\n'
            'LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" '
            'exec "$here/bin/xl" "$@"\n'
        )
        wrapper.chmod(0o755)
        return wrapper

    def build(self, *, force: bool = False) -> dict[str, object]:
        """Build unless up to date; concurrent builds (tests, helpers) wait for each other."""
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / ".build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build(force=force)

    def _build(self, *, force: bool) -> dict[str, object]:
        if not force and self.up_to_date():
            log.info("%s: up to date (delete stamp.json to rebuild)", self.out)
            return json.loads((self.out / "build-info.json").read_text())  # type: ignore[no-any-return]
        t0 = time.monotonic()
        (self.out / "stamp.json").unlink(missing_ok=True)
        log.info("fetching %d Debian packages (cache %s)", len(self.packages) + 1, self.cache)
        debs = self.debs()
        log.info("unpacking Xen -> xen.bin, the kernel -> vmlinuz")
        self.hypervisor(debs["xen-hypervisor-4.17-amd64"])
        _, moddir = self.kernel(debs[self.recipe.kernel.package])
        log.info("staging the dom0 root (Xen tools, python3.11, wheels, modules)")
        root = self.dom0_root(debs, moddir)
        log.info("packing dom0-base.cpio")
        cpio_archive(root, self.out / "dom0-base.cpio", epoch=self.epoch)
        self.guest_initrd(debs["busybox-static"])
        self.host_xl(root)
        shutil.rmtree(self.out / "work")
        info: dict[str, object] = {
            "seconds": round(time.monotonic() - t0, 1),
            "bytes": {n: (self.out / n).stat().st_size for n in ARTEFACTS},
            "debs": sorted(p.name for p in debs.values()),
        }
        (self.out / "build-info.json").write_text(json.dumps(info, indent=1, sort_keys=True))
        (self.out / "stamp.json").write_text(self._stamp_text())
        return info


ARTEFACTS = ("xen.bin", "vmlinuz", "dom0-base.cpio", "guest-initrd.cpio")


def ensure_built() -> Path:
    """Build the test bed when it is missing or stale; return its output folder."""
    TestbedBuilder().build()
    return OUT


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgeagent.hostos.xen_testbed [--force] [-v]``."""
    p = argparse.ArgumentParser(
        prog="python -m edgeagent.hostos.xen_testbed",
        description="Build the Xen test bed (Xen 4.17, the Debian kernel as PV dom0, a dom0 "
        "initramfs with the Xen tools and python3) from Debian packages into "
        f"{OUT.relative_to(CHECKOUT)}/. Boot it with `python -m edgeagent.hostos.xen_boot`.",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="xen-testbed: %(message)s"
    )
    try:
        info = TestbedBuilder().build(force=args.force)
    except EdgeAgentError as exc:
        print(f"xen-testbed: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fetch Debian packages into a cache and unpack them without installing anything.

What it does: finds ``NAME_VERSION_ARCH.deb`` files in a cache folder (and in read-only extra
folders such as the host image's caches), downloads the missing ones with ``apt-get download``
from the build machine's configured archive, unpacks them with ``dpkg-deb -x`` into a staging
folder, and checks that every ELF program or library in a staging root finds its shared
libraries there (``readelf -d``), so a missing package is a build error naming the file and
the library instead of a failure at boot.

What it does not do: resolve package dependencies (callers list the packages they need; the
library check catches omissions), run maintainer scripts, or touch the build machine's dpkg
database. Used by the Xen test bed (`edgeagent.hostos.xen_testbed`) and by the host image
build for its kernel and Xen packages (`edgeagent.hostos.build`).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgeagent.errors import BuildError

log = logging.getLogger(__name__)

_NEEDED_RE = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")
_LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64")


def _candidates(name: str, folders: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.glob(f"{name}_*.deb") if p.name.count("_") == 2]
    return found


def _newest(debs: list[Path]) -> Path:
    """The deb with the highest version (``dpkg --compare-versions`` order)."""
    best = debs[0]
    for deb in debs[1:]:
        a = best.name.split("_")[1].replace("%3a", ":")
        b = deb.name.split("_")[1].replace("%3a", ":")
        newer = subprocess.run(["dpkg", "--compare-versions", b, "gt", a], check=False)
        if newer.returncode == 0:
            best = deb
    return best


def fetch(names: Sequence[str], cache: Path, *, also: Sequence[Path] = ()) -> dict[str, Path]:
    """Return ``{package: .deb path}``, downloading what neither ``cache`` nor ``also`` hold.

    Args:
        names: binary package names (``apt-get download`` picks the candidate version).
        cache: the folder downloads go to (created when missing).
        also: extra folders searched first, never written (e.g. host-os/cache/apt).

    Raises:
        BuildError: ``apt-get download`` failed or left no file for a package.
    """
    cache.mkdir(parents=True, exist_ok=True)
    folders = [cache, *also]
    missing = [n for n in names if not _candidates(n, folders)]
    if missing:
        log.info("apt-get download %s", " ".join(missing))
        proc = subprocess.run(
            ["apt-get", "download", "-q", *missing],
            cwd=cache,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(
                f"apt-get download {' '.join(missing)} failed ({proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
    out: dict[str, Path] = {}
    for n in names:
        debs = _candidates(n, folders)
        if not debs:
            raise BuildError(f"apt-get download {n} left no {n}_*.deb in {cache}")
        out[n] = _newest(debs)
    return out


def unpack(deb: Path, dest: Path) -> None:
    """``dpkg-deb -x deb dest`` (raises BuildError naming the package)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()[-300:]}")


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed_libraries(readelf_output: str) -> list[str]:
    """The ``DT_NEEDED`` names in ``readelf -d`` output. [pure]"""
    return _NEEDED_RE.findall(readelf_output)


def check_libraries(root: Path, files: Iterable[Path]) -> None:
    """Check that each ELF file in ``files`` finds its ``DT_NEEDED`` libraries under ``root``.

    Raises:
        BuildError: lists every file and the libraries it misses (add the package that ships
            them).
    """
    present: set[str] = set()
    for d in _LIB_DIRS:
        folder = root / d
        if folder.is_dir():
            present |= {p.name for p in folder.iterdir()}
    problems: list[str] = []
    for f in files:
        if not _is_elf(f) or f.is_symlink():
            continue
        text = subprocess.run(
            ["readelf", "-d", str(f)], capture_output=True, text=True, check=False
        ).stdout
        # Wheels bundle their own libraries next to the extension (auditwheel's *.libs).
        local = {p.name for p in f.parent.iterdir()}
        bundled = f.parent.parent / (f.parent.name + ".libs")
        if bundled.is_dir():
            local |= {p.name for p in bundled.iterdir()}
        for sib in f.parent.parent.glob("*.libs"):
            local |= {p.name for p in sib.iterdir()}
        lost = [n for n in needed_libraries(text) if n not in present and n not in local]
        if lost:
            problems.append(f"{f.relative_to(root)} needs {', '.join(lost)}")
    if problems:
        raise BuildError(
            f"{root}: shared libraries missing from the staged root (add the Debian packages "
            "that ship them): " + "; ".join(problems)
        )

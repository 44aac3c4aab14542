"""Benchmark ``edgeagent flash`` against ``bmaptool copy`` and ``dd`` onto a loop device.

``python bench/bench_flash.py`` (also run by ``make bench`` through bench/run.py) builds, in a
temporary folder under /var/tmp: a 1 GiB sparse image with 200 MiB of random data in 10 extents,
its bmap (``bmaptool create``), a throw-away registry key set and a manifest signed with it, and a
1 GiB loop device. Then, in the same run, alternating tools, several times each (wall time of the
whole command, process start included; the image is in the page cache for every tool):

- ``edgeagent flash IMAGE LOOP --manifest M --trust ROOT --yes``: manifest signature, bmap digest
  and every range of the signed bmap checked against its signed sha256 before the first write
  (the hashing overlaps the trust check); O_DIRECT writes of the mapped blocks only, fsync,
  read-back of every written range against the signed sha256 (ADR-0009 §1);
- the same with ``--stream``: each range written as soon as it matches, from the memory that was
  hashed (the image is read once);
- ``bmaptool copy --bmap IMAGE.bmap IMAGE LOOP``: mapped blocks, per-range sha256 of the source
  while copying, fsync; no read-back (bmaptool#56);
- ``dd if=IMAGE of=LOOP bs=4M conv=sparse,fsync``: reads the whole image, skips writing all-zero
  blocks, no verification;
- ``dd if=IMAGE of=LOOP bs=4M conv=fsync``: plain dd, writes all 1 GiB, no verification.

bmaptool comes from Debian's ``bmap-tools``; if it is missing this script installs it with
apt-get (and says so). Writes bench/results/flash.json and bench/results/flash.md (medians and
ratios to bmaptool). Everything it creates is removed at the end (the loop device detached).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MIB = 1024 * 1024
IMAGE_MIB = 1024
EXTENTS = 10
EXTENT_MIB = 20
RUNS = 3
GOAL_RATIO = 1.0

CLI = "import edgeagent.cli as c\nraise SystemExit(c.main())\n"


def _edgeagent(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def _ensure_bmaptool() -> str:
    found = shutil.which("bmaptool")
    if found:
        return found
    print("bench_flash: bmaptool missing: apt-get install -y bmap-tools", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "bmap-tools"], check=True)
    found = shutil.which("bmaptool")
    if not found:
        raise SystemExit("bench_flash: bmaptool still missing after apt-get")
    return found


def _make_image(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(IMAGE_MIB * MIB)
        step = IMAGE_MIB // EXTENTS
        for i in range(EXTENTS):
            f.seek(i * step * MIB)
            for _ in range(EXTENT_MIB):
                f.write(os.urandom(MIB))


CPU_SECONDS: dict[str, list[float]] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], cwd: Path, name: str = "") -> float:
    cpu = _children_cpu()
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if name:
        # CPU of the process and its threads (not of the kernel's loop worker): under load from
        # other work, wall time tends towards CPU time / free cores.
        CPU_SECONDS.setdefault(name, []).append(_children_cpu() - cpu)
    if proc.returncode != 0:
        raise SystemExit(
            f"bench_flash: {' '.join(argv[:1] + argv[3:])} failed ({proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return elapsed


def _version(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "?"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/flash.{json,md}."""
    runs = RUNS
    if argv and argv[0].isdigit():
        runs = int(argv[0])
    bmaptool = _ensure_bmaptool()
    work = Path(tempfile.mkdtemp(prefix="edgeagent-bench-flash-", dir="/var/tmp"))
    loop = ""
    try:
        image = work / "disk.img"
        _make_image(image)
        subprocess.run([bmaptool, "create", "-o", f"{image}.bmap", str(image)], check=True)
        subprocess.run(_edgeagent("repo", "init", str(work / "repo")), check=True, stdout=2)
        manifest = work / "disk.img.manifest.json"
        subprocess.run(
            _edgeagent(
                "repo",
                "sign-manifest",
                str(work / "repo"),
                str(manifest),
                "--version",
                "bench",
                "--disk",
                str(image),
            ),
            check=True,
            stdout=2,
        )
        target = work / "target.img"
        with target.open("wb") as f:
            f.truncate(IMAGE_MIB * MIB)
        loop = subprocess.run(
            ["losetup", "-f", "--show", str(target)], check=True, capture_output=True, text=True
        ).stdout.strip()
        flash = _edgeagent(
            "flash",
            str(image),
            loop,
            "--manifest",
            str(manifest),
            "--trust",
            str(work / "repo" / "metadata" / "1.root.json"),
            "--yes",
            "--loop-backing",
            str(target),
        )
        tools = {
            "edgeagent flash": flash,
            "edgeagent flash --stream": [*flash, "--stream"],
            "bmaptool copy": [bmaptool, "-q", "copy", "--bmap", f"{image}.bmap", str(image), loop],
            "dd conv=sparse,fsync": [
                "dd",
                f"if={image}",
                f"of={loop}",
                "bs=4M",
                "conv=sparse,fsync",
                "status=none",
            ],
            "dd conv=fsync": [
                "dd",
                f"if={image}",
                f"of={loop}",
                "bs=4M",
                "conv=fsync",
                "status=none",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in tools}
        load_before = os.getloadavg()[0]
        for _ in range(runs):
            for name, cmd in tools.items():
                times[name].append(_timed(cmd, work, name))
        startup = statistics.median(
            _timed(_edgeagent("flash", "--help"), work) for _ in range(runs)
        )
        # The last edgeagent run must have left an exact copy of the image's mapped data.
        last = subprocess.run(
            tools["edgeagent flash"], check=True, capture_output=True, text=True
        ).stdout.strip()
        same = subprocess.run(["cmp", "-s", str(image), str(target)], check=False).returncode
        load_after = os.getloadavg()[0]
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    cpu_med = {name: statistics.median(v) for name, v in CPU_SECONDS.items()}
    base = med["bmaptool copy"]
    # Each round runs every tool once, back to back: the ratio within a round is less exposed
    # to other load on the machine than the ratio of medians.
    paired = {
        name: statistics.median(t / b for t, b in zip(v, times["bmaptool copy"], strict=True))
        for name, v in times.items()
    }
    result = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "image_mib": IMAGE_MIB,
        "mapped_mib": EXTENTS * EXTENT_MIB,
        "runs": runs,
        "bmaptool_version": _version([bmaptool, "--version"]),
        "seconds": times,
        "median_s": med,
        "cpu_seconds": CPU_SECONDS,
        "median_cpu_s": cpu_med,
        "ratio_to_bmaptool": {name: m / base for name, m in med.items()},
        "paired_ratio_to_bmaptool": paired,
        "loadavg_1min_before_after": [load_before, load_after],
        "goal_ratio": GOAL_RATIO,
        "target_identical_after_edgeagent": same == 0,
        "edgeagent_flash_help_startup_s": startup,
        "edgeagent_pass_line": last,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flash.json").write_text(json.dumps(result, indent=2) + "\n")
    notes = {
        "edgeagent flash": "signed manifest + bmap, every range's sha256 checked before the "
        "first write; O_DIRECT, fsync, read-back of every range",
        "edgeagent flash --stream": "the same, but each range written as soon as it matches, "
        "from the hashed memory (image read once)",
        "bmaptool copy": "per-range sha256 while copying, fsync, no read-back",
        "dd conv=sparse,fsync": "reads all, skips zero blocks, no verification",
        "dd conv=fsync": "writes all 1 GiB, no verification",
    }
    lines = [
        "### edgeagent flash: 1 GiB image, 200 MiB mapped, onto a loop device",
        "",
        f"Measured {result['measured_at']} on {result['host']} ({result['cpus']} CPUs); "
        f"{result['bmaptool_version']}; wall time of the whole command (process start "
        f"included), {runs} rounds, each running every tool once; image in the page cache; "
        "loop device backed by a file in /var/tmp. 1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after (other work shares the machine).",
        "",
        "| tool | median s | min-max s | median / bmaptool's | per-round ratio (median) "
        "| CPU s (median) | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in tools:
        goal = f" (goal <= {GOAL_RATIO:.1f}x)" if name.startswith("edgeagent") else ""
        lines.append(
            f"| {name} | {med[name]:.2f} | {min(times[name]):.2f}-{max(times[name]):.2f} | "
            f"{med[name] / base:.2f}x{goal} | {paired[name]:.2f}x | {cpu_med[name]:.2f} | "
            f"{notes[name]} |"
        )
    lines.append(
        f"| (edgeagent CLI start-up alone, `edgeagent flash --help`) | {startup:.2f} | | "
        f"{startup / base:.2f}x | | | interpreter + the flash command's imports |"
    )
    phases = last[last.rfind("(") + 1 : -1] if last.endswith(")") else "?"
    lines.append("")
    lines.append(f"In-process phases of the last edgeagent run (s): {phases}.")
    lines.append(
        "After the runs the target was "
        + ("byte-identical" if same == 0 else "NOT identical")
        + " to the image (cmp)."
    )
    (RESULTS / "flash.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark the host OS image: build time, image sizes, boot-to-health under TCG.

``python bench/bench_hostos.py [--boots N] [--no-build]`` (also run by ``make bench`` through
bench/run.py) measures, in one run on this machine:

1. Build time of ``make host-image`` with a warm cache (host-os/cache/: debs and wheels are
   not downloaded again; mmdebstrap still resolves against the archive), split by step.
   ``--no-build`` reuses host-os/out/ and its recorded timings.
2. Sizes: the compressed slot image (zstd squashfs; budget 80 MB), one UKI, the disk image
   and the bytes it really holds (its block map).
3. Boot-to-health, N boots (default 3) of a private copy of the disk in QEMU (q35, OVMF,
   `-accel tcg -cpu max`, 1 vCPU) with its NIC on a TAP in a fresh network namespace where a
   registry serves a signed ``ticker``: seconds from QEMU's start to the agent's first JSON
   status line on the serial console, and to the status line that shows ticker running and
   healthy (pulled, verified and booted under nested KVM). Medians and ranges.

Writes bench/results/hostos.json and bench/results/hostos.md. Needs root, `make tender images`.
"""

# No "from __future__ import annotations": bench/run.py loads this file without
# registering it in sys.modules.
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeagent.hostos.qemuboot import boot_to_health  # noqa: E402

OUT = ROOT / "host-os" / "out"
RESULTS = ROOT / "bench" / "results"
TICKER = ROOT / "image-recipes" / "out" / "ticker.hvt"
EDGEAGENT = Path(sys.executable).parent / "edgeagent"
REGISTRY_ADDR = "10.0.2.2"
GOAL_BOOT_S = 15.0
TRIAL_SYSTEMD_S = "33-51"


def _build() -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "edgeagent.hostos.build"], cwd=ROOT, check=True)
    return time.monotonic() - start


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:.1f} s ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str]) -> int:
    """Measure, write bench/results/hostos.{json,md}, print the table."""
    p = argparse.ArgumentParser(prog="bench_hostos.py")
    p.add_argument("--boots", type=int, default=3)
    p.add_argument("--no-build", action="store_true", help="reuse host-os/out/")
    args = p.parse_args(argv)

    wall = None if args.no_build else _build()
    info = json.loads((OUT / "build-info.json").read_text())
    firsts: list[float] = []
    healthy: list[float] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-hostos-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(info["repository"], repo)
        subprocess.run(
            [
                str(EDGEAGENT),
                "repo",
                "add",
                str(repo),
                str(TICKER),
                "--name",
                "ticker",
                "--version",
                "1",
                "--mem",
                "4",
                "--arg",
                "interval_ms=1000",
            ],
            check=True,
            capture_output=True,
        )
        for i in range(args.boots):
            r = boot_to_health(
                OUT / "disk.img",
                repo,
                Path(tmp) / f"vm{i}",
                edgeagent=EDGEAGENT,
                registry_addr=REGISTRY_ADDR,
            )
            print(f"boot {i + 1}: first status {r.first_status_s}, ticker {r.workload_healthy_s}")
            if r.first_status_s is not None:
                firsts.append(r.first_status_s)
            if r.workload_healthy_s is not None:
                healthy.append(r.workload_healthy_s)
            else:
                failures += 1
                print(r.console_tail, file=sys.stderr)

    disk = OUT / "disk.img"
    result = {
        "build_wall_s": round(wall, 1) if wall is not None else None,
        "build_steps_s": info["timings_s"],
        "slot_image_bytes": info["slot_image_bytes"],
        "uki_bytes": info["uki_bytes"],
        "disk_image_bytes": disk.stat().st_size,
        "disk_allocated_bytes": _allocated(disk),
        "boots": args.boots,
        "boot_failures": failures,
        "first_status_s": [round(x, 2) for x in firsts],
        "ticker_healthy_s": [round(x, 2) for x in healthy],
        "goal_boot_to_health_s": GOAL_BOOT_S,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hostos.json").write_text(json.dumps(result, indent=1) + "\n")
    build = (
        f"{result['build_wall_s']} s"
        if wall is not None
        else f"{info['timings_s']['total']} s (recorded)"
    )
    steps = ", ".join(f"{k} {v}" for k, v in info["timings_s"].items() if k != "total")
    md = "\n".join(
        [
            "### Host OS image (`python bench/bench_hostos.py`)",
            "",
            "| measure | result | goal / peer |",
            "|---|---|---|",
            f"| `make host-image`, warm cache | {build} | steps: {steps} |",
            f"| compressed slot image (zstd squashfs) | {info['slot_image_bytes'] / 1e6:.1f} MB "
            "| < 80 MB |",
            f"| UKI (kernel + initramfs + cmdline) | {info['uki_bytes'] / 1e6:.1f} MB | |",
            f"| disk image, size / data in it | {disk.stat().st_size / 2**20:.0f} MiB / "
            f"{_allocated(disk) / 2**20:.0f} MiB | |",
            f"| QEMU start -> agent's first status line (TCG, OVMF, {args.boots} boots) | "
            f"{_fmt(firsts)} | < {GOAL_BOOT_S:.0f} s; trial systemd image {TRIAL_SYSTEMD_S} s |",
            f"| QEMU start -> ticker pulled, running, healthy (nested KVM) | {_fmt(healthy)} "
            f"| failures: {failures} |",
            "",
        ]
    )
    (RESULTS / "hostos.md").write_text(md)
    print(md)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark guest starts on Xen: our PVH hello vs a Linux PV guest, and the agent's overhead.

``python bench/bench_xen.py [--rounds N]`` (also run by ``make bench`` through bench/run.py)
boots the Xen test bed once (Xen 4.17 + PV dom0 under QEMU TCG, `edgeagent.hostos.xen_boot`)
and runs host-os/xen-testbed/bench_starts.py in dom0, which per round measures:

- from ``xl create`` to the guest's first console byte in xenconsoled's log, for our
  ``hello`` built for the xen platform and for the Linux PV control guest (the Debian kernel
  and a busybox initrd), in the same boot, interleaved;
- the same for hello started through the agent's xen runner (config render + atomic write,
  ownership record, ``xl create``, ``xl domid``), and when the runner reported it running;
- once: rendering + writing a domain config, one ``xl list -v`` and one ``xl domid`` call.

Writes bench/results/xen.json and bench/results/xen.md. The goal (issue 6): hello's first line
at least 5x sooner than the Linux PV guest's. Everything runs emulated (TCG, 2 shared cores),
so absolute numbers are far above real hardware; the ratio is the point. Needs
`make xen-testbed images`.
"""

# No "from __future__ import annotations": bench/run.py loads this file without
# registering it in sys.modules.
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeagent.hostos.xen_boot import boot  # noqa: E402
from edgeagent.hostos.xen_testbed import OUT, TESTBED  # noqa: E402

RESULTS = ROOT / "bench" / "results"
HELLO = ROOT / "image-recipes" / "out" / "hello.xen"
GOAL_RATIO = 5.0


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str]) -> int:
    """Measure, write bench/results/xen.{json,md}, print the table."""
    p = argparse.ArgumentParser(prog="bench_xen.py")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if not HELLO.exists():
        print(f"bench_xen: {HELLO} missing: run `make images`", file=sys.stderr)
        return 1
    files = {
        "hello.xen": HELLO,
        "vmlinuz": OUT / "vmlinuz",
        "guest-initrd.cpio": OUT / "guest-initrd.cpio",
        "bench_starts.py": TESTBED / "bench_starts.py",
    }
    script = f"python3 /testbed/bench_starts.py {args.rounds}\n"
    results: list[dict[str, object]] = []
    boot_s = None
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-xen-") as tmp:
        for t, line in boot(Path(tmp), script, files, deadline_s=900.0):
            if line.startswith("XTB: xen daemons up") and boot_s is None:
                boot_s = t
            if line.startswith("XTB-BENCH "):
                doc = json.loads(line.removeprefix("XTB-BENCH "))
                print(f"[{t:6.1f}] {doc}", flush=True)
                results.append(doc)
    wall = time.monotonic() - start
    if not any(r["kind"] == "done" for r in results):
        print("bench_xen: the dom0 script did not finish", file=sys.stderr)
        return 1

    def first(kind: str, guest: str) -> list[float]:
        return [
            float(r["first_line_s"])  # type: ignore[arg-type]
            for r in results
            if r["kind"] == kind
            and str(r["guest"]).startswith(guest)
            and r.get("first_line_s") is not None
        ]

    def field(kind: str, name: str) -> list[float]:
        return [float(r[name]) for r in results if r["kind"] == kind and r.get(name) is not None]  # type: ignore[arg-type]

    hello = first("bare", "hello")
    linux = first("bare", "linux")
    hello_create = [
        float(r["xl_create_s"])  # type: ignore[arg-type]
        for r in results
        if r["kind"] == "bare" and str(r["guest"]).startswith("hello") and r.get("xl_create_s")
    ]
    agent_first = first("agent", "hello")
    agent_running = field("agent", "running_s")
    cfg = field("config_write", "median_s")
    calls = {str(r["call"]): float(r["median_s"]) for r in results if r["kind"] == "xl_call"}  # type: ignore[arg-type]
    mh, ml = _med(hello), _med(linux)
    ratio = ml / mh if mh and ml else None
    ma, mc = _med(agent_running), _med(hello_create)
    overhead = ma - mc if ma is not None and mc is not None else None
    doc = {
        "rounds": args.rounds,
        "accel": "tcg (-cpu max,-smap), 2 shared host cores; Xen 4.17, PV dom0 (1 vCPU)",
        "testbed_daemons_up_s": boot_s,
        "wall_s": round(wall, 1),
        "first_line_s": {"hello_xen": hello, "linux_pv": linux, "hello_via_agent": agent_first},
        "xl_create_return_s": {"hello_xen": hello_create},
        "agent_running_s": agent_running,
        "agent_overhead_s": overhead,
        "config_write_s": cfg[0] if cfg else None,
        "xl_call_s": calls,
        "ratio_linux_over_hello": ratio,
        "goal_ratio": GOAL_RATIO,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "xen.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    rows = [
        "### Xen guest start (QEMU TCG test bed)",
        "",
        f"{args.rounds} rounds in one boot; from `xl create` to the guest's first console byte "
        "(xenconsoled log); median (min-max).",
        "",
        "| what | time |",
        "|---|---|",
        f"| hello (xen platform, PVH) | {_fmt(hello)} |",
        f"| Linux PV guest (Debian 6.1 + busybox initrd) | {_fmt(linux)} |",
        f"| ratio Linux / hello (goal >= {GOAL_RATIO:.0f}x) | "
        + (f"{ratio:.1f}x |" if ratio else "n/a |"),
        f"| hello through the agent's xen runner | {_fmt(agent_first)} |",
        f"| `xl create` returns (hello, bare) | {_fmt(hello_create)} |",
        "| agent: create -> running (config, record, xl create, xl domid) | "
        f"{_fmt(agent_running)} |",
        "| agent overhead per start (runner running - bare xl create) | "
        + (f"{overhead:.2f} s |" if overhead is not None else "n/a |"),
        "| config render + atomic write | " + (f"{cfg[0] * 1000:.1f} ms |" if cfg else "n/a |"),
        *(f"| one `xl {c}` call | {s:.2f} s |" for c, s in sorted(calls.items())),
        "",
    ]
    (RESULTS / "xen.md").write_text("\n".join(rows))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

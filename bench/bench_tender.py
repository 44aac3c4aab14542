"""Benchmark edge-tender: boot latency against QEMU and the KVM floor, memory, density.

``python bench/bench_tender.py [--quick]`` (also run by ``make bench`` through
bench/run.py) measures, in one run on this machine:

1. Boot latency, process start -> guest exit and -> first console byte, medians of
   many runs, all timed by the same C harness (bench/floor/spawntime.c, posix_spawn
   plus a pipe): edge-tender booting ``hello.hvt``; QEMU booting ``hello.qemu`` (the
   multiboot build of the same app) under KVM and under TCG, with the flags
   `edgeagent boot` uses; and the floor (bench/floor/floor.c: a process that creates
   a KVM VM, runs ``out; hlt`` and exits). Ratios: QEMU / tender (goal >= 20x) and
   tender / floor (goal <= 1.5x).
2. Tender memory: VmRSS and VmHWM of a running ``ticker`` guest minus the guest pages
   it touched (the Rss of the guest RAM mapping in /proc/PID/smaps); PSS too, since
   libc pages are shared between tenders. Stripped binary size.
3. Density: N=500 ``ticker`` guests (4 MiB, interval 1000 ms) started at once; when
   every one has printed a heartbeat, the total RSS and PSS of the tenders and the
   drop in MemAvailable (which includes the kernel's KVM structures) are recorded.
   Then more guests are added (750, 1000, ...) until a guest fails, memory gets
   low, or the time box ends. Every guest is killed at the end, whatever happens.

Writes bench/results/tender.json and bench/results/tender.md. It measures; it does
not judge beyond printing each goal next to its ratio. Needs ``make tender images``.
"""

# No "from __future__ import annotations": bench/run.py loads this file without
# registering it in sys.modules, and dataclasses need that for string annotations.
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR_DIR = ROOT / "bench" / "floor"
BUILD = FLOOR_DIR / "build"
RESULTS = ROOT / "bench" / "results"
TENDER = ROOT / "host-os" / "tender" / "edge-tender"
OUT = ROOT / "image-recipes" / "out"
QEMU = "qemu-system-x86_64"
GUEST_MEM_MB = 4

QEMU_COMMON = [
    "-m", "128", "-nographic", "-no-reboot", "-display", "none", "-monitor", "none",
    "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-nic", "none",
]  # fmt: skip
QEMU_ACCEL = {
    "kvm": ["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
    "tcg": ["-accel", "tcg", "-cpu", "max"],
}


@dataclass(frozen=True)
class Runs:
    fast: int  # floor and tender
    qemu_tcg: int
    qemu_kvm: int
    density_start: int
    density_steps: tuple[int, ...]
    density_box_s: float


FULL = Runs(200, 20, 5, 500, (750, 1000, 1500, 2000, 2500), 240.0)
QUICK = Runs(30, 5, 2, 100, (), 60.0)
#: A step whose guests have not all printed a heartbeat by then is "saturated" (interval 1 s).
STEP_WAIT_S = 20.0
#: A step slower than this (start + first heartbeats) means the CPUs are saturated: stop.
SATURATED_S = 15.0
#: Seconds over which the fleet's CPU use is sampled at each step.
CPU_SAMPLE_S = 3.0
#: Latency runs are interleaved over this many rounds.
LATENCY_ROUNDS = 5


def pause(seconds: float) -> None:
    """Sleep; this script is synchronous (no trio loop), so time.sleep is right here."""
    time.sleep(seconds)  # noqa: TID251


def log(msg: str) -> None:
    print(f"[bench tender] {msg}", flush=True)


def build_helpers() -> tuple[Path, Path]:
    """Compile the floor program and the timing harness into bench/floor/build/."""
    BUILD.mkdir(parents=True, exist_ok=True)
    flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    out = []
    for name, binary in (("floor.c", "kvm-floor"), ("spawntime.c", "spawntime")):
        target = BUILD / binary
        subprocess.run(["cc", *flags, "-o", str(target), str(FLOOR_DIR / name)], check=True)
        out.append(target)
    return out[0], out[1]


@dataclass(frozen=True)
class Latency:
    name: str
    runs: int
    first_ms: float | None
    exit_ms: float
    exit_p10_ms: float
    exit_p90_ms: float
    statuses: tuple[int, ...]


def spawn_rows(spawntime: Path, runs: int, argv: list[str]) -> list[tuple[int, ...]]:
    """Run ``argv`` ``runs`` times under the harness: (first ns, exit ns, status) each."""
    proc = subprocess.run(
        [str(spawntime), str(runs), *argv], capture_output=True, text=True, check=True
    )
    return [tuple(int(x) for x in line.split()) for line in proc.stdout.splitlines()]


def summarise(name: str, rows: list[tuple[int, ...]]) -> Latency:
    firsts = [r[0] / 1e6 for r in rows if r[0] >= 0]
    exits = sorted(r[1] / 1e6 for r in rows)
    deciles = statistics.quantiles(exits, n=10) if len(exits) >= 2 else [exits[0]] * 9
    result = Latency(
        name=name,
        runs=len(rows),
        first_ms=statistics.median(firsts) if firsts else None,
        exit_ms=statistics.median(exits),
        exit_p10_ms=deciles[0],
        exit_p90_ms=deciles[-1],
        statuses=tuple(sorted({r[2] for r in rows})),
    )
    log(
        f"{name}: exit median {result.exit_ms:.2f} ms, first byte "
        f"{'-' if result.first_ms is None else f'{result.first_ms:.2f} ms'}, "
        f"statuses {result.statuses}"
    )
    return result


def measure_latency(spawntime: Path, plan: dict[str, tuple[int, list[str]]]) -> dict[str, Latency]:
    """Time every command of ``plan`` (name -> (runs, argv)), interleaved in rounds.

    The machine is shared, so runs of each command are spread over `LATENCY_ROUNDS`
    rounds: a burst of load then hits all commands alike. Each command's first run
    is a warm-up (page cache, KVM module state) and is dropped.
    """
    rows: dict[str, list[tuple[int, ...]]] = {name: [] for name in plan}
    for _runs, argv in plan.values():
        spawn_rows(spawntime, 1, argv)
    for round_no in range(LATENCY_ROUNDS):
        for name, (runs, argv) in plan.items():
            share = runs // LATENCY_ROUNDS + (1 if round_no < runs % LATENCY_ROUNDS else 0)
            if share:
                rows[name] += spawn_rows(spawntime, share, argv)
    return {name: summarise(name, rows[name]) for name in plan}


def status_of(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status we use."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


def pss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def guest_rss_kb(pid: int, mem_kb: int) -> int | None:
    """Rss of the guest RAM: the run of adjacent anonymous mappings totalling mem_kb."""
    maps: list[tuple[int, int, int]] = []  # (start, end, rss_kb) of anonymous mappings
    in_anonymous = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].endswith(":"):
            # A mapping header: "start-end perms offset dev inode [path]".
            in_anonymous = len(fields) == 5
            if in_anonymous:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                maps.append((start, end, 0))
        elif in_anonymous and fields[:1] == ["Rss:"]:
            maps[-1] = (maps[-1][0], maps[-1][1], int(fields[1]))
    i = 0
    while i < len(maps):
        j, size, rss = i, 0, 0
        while j < len(maps) and (j == i or maps[j][0] == maps[j - 1][1]):
            size += (maps[j][1] - maps[j][0]) // 1024
            rss += maps[j][2]
            if size == mem_kb:
                return rss
            if size > mem_kb:
                break
            j += 1
        i += 1
    return None


def cpu_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; guest time is inside user."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def ticker_argv(interval_ms: int = 1000) -> list[str]:
    return [
        str(TENDER),
        f"--mem={GUEST_MEM_MB}",
        "--",
        str(OUT / "ticker.hvt"),
        f"interval_ms={interval_ms}",
    ]


def wait_for_heartbeat(path: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if b"HEARTBEAT" in path.read_bytes():
            return True
        pause(0.05)
    return False


def measure_memory() -> dict[str, object]:
    """RSS of one running ticker guest beyond the guest pages it touched."""
    with tempfile.TemporaryDirectory() as tmp:
        console = Path(tmp) / "ticker.out"
        with console.open("wb") as out:
            proc = subprocess.Popen(ticker_argv(200), stdout=out, stderr=subprocess.DEVNULL)
        try:
            if not wait_for_heartbeat(console, time.monotonic() + 30):
                raise RuntimeError(f"ticker printed no heartbeat: {console.read_text()!r}")
            pause(0.5)  # A few more heartbeats: steady state.
            status = status_of(proc.pid)
            guest = guest_rss_kb(proc.pid, GUEST_MEM_MB * 1024)
            pss = pss_of(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    stripped = Path(tempfile.mkdtemp()) / "edge-tender.stripped"
    try:
        subprocess.run(["strip", "-o", str(stripped), str(TENDER)], check=True)
        stripped_size = stripped.stat().st_size
    finally:
        shutil.rmtree(stripped.parent)
    result: dict[str, object] = {
        **{f"{k}_kb": v for k, v in status.items()},
        "pss_kb": pss,
        "guest_touched_kb": guest,
        "rss_beyond_guest_kb": None if guest is None else status["VmRSS"] - guest,
        "hwm_beyond_guest_kb": None if guest is None else status["VmHWM"] - guest,
        "binary_bytes": TENDER.stat().st_size,
        "stripped_binary_bytes": stripped_size,
    }
    log(f"memory: {result}")
    return result


class Fleet:
    """Many ticker tenders, consoles in files; always killed by `kill_all`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> int:
        """Start ``count`` more guests; return how many started."""
        started = 0
        for _ in range(count):
            index = len(self.procs)
            console = self.workdir / f"t{index}.out"
            try:
                with console.open("wb") as out:
                    proc = subprocess.Popen(
                        ticker_argv(), stdout=out, stderr=subprocess.STDOUT, close_fds=True
                    )
            except OSError as exc:
                log(f"density: spawn {index} failed: {exc}")
                break
            self.procs.append(proc)
            started += 1
        return started

    def wait_heartbeats(self, deadline: float) -> tuple[int, int, int]:
        """Wait until every guest printed a heartbeat; return (ok, exited, late)."""
        pending = set(range(len(self.procs)))
        exited = 0
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                if b"HEARTBEAT" in (self.workdir / f"t{i}.out").read_bytes():
                    pending.discard(i)
                elif self.procs[i].poll() is not None:
                    pending.discard(i)
                    exited += 1
            if pending:
                pause(0.2)
        late = len(pending)
        return len(self.procs) - exited - late, exited, late

    def memory(self) -> tuple[int, int]:
        """Total (RSS, PSS) in kB of the live tenders."""
        rss = pss = 0
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    rss += status_of(proc.pid)["VmRSS"]
                    pss += pss_of(proc.pid)
                except (FileNotFoundError, KeyError, ProcessLookupError):
                    pass
        return rss, pss

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()


def measure_density(runs: Runs) -> dict[str, object]:
    """Start ticker guests in steps until one fails, the CPU saturates or time runs out."""
    steps: list[dict[str, float]] = []
    box_end = time.monotonic() + runs.density_box_s
    stop_reason = "all steps done"
    baseline = mem_available_kb()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp))
        try:
            for target in (runs.density_start, *runs.density_steps):
                if time.monotonic() > box_end:
                    stop_reason = f"time box of {runs.density_box_s:.0f} s"
                    break
                if mem_available_kb() < 1024 * 1024:
                    stop_reason = "MemAvailable below 1 GiB"
                    break
                t0 = time.monotonic()
                wanted = target - len(fleet.procs)
                started = fleet.start(wanted)
                spawn_s = time.monotonic() - t0
                ok, exited, late = fleet.wait_heartbeats(time.monotonic() + STEP_WAIT_S)
                elapsed = time.monotonic() - t0
                pause(1.0)  # Let every guest settle into its heartbeat loop.
                rss, pss = fleet.memory()
                avail_drop = baseline - mem_available_kb()
                busy0, total0 = cpu_busy_ticks()
                pause(CPU_SAMPLE_S)
                busy1, total1 = cpu_busy_ticks()
                cpu = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
                live = max(len(fleet.procs) - exited, 1)
                step: dict[str, float] = {
                    "guests": len(fleet.procs),
                    "heartbeating": ok,
                    "exited": exited,
                    "late": late,
                    "seconds_to_spawn": round(spawn_s, 2),
                    "seconds_to_all_heartbeats": round(elapsed, 2),
                    "total_rss_kb": rss,
                    "total_pss_kb": pss,
                    "per_guest_rss_kb": round(rss / live),
                    "per_guest_pss_kb": round(pss / live),
                    "mem_available_drop_kb": avail_drop,
                    "per_guest_system_kb": round(avail_drop / live),
                    "cpu_cores_busy": round(cpu, 2),  # whole machine, other users included
                }
                log(f"density: {step}")
                steps.append(step)
                if started < wanted:
                    stop_reason = f"only {started} of {wanted} more guests could be spawned"
                    break
                if exited:
                    stop_reason = f"{exited} guests exited at {len(fleet.procs)}"
                    break
                if late:
                    stop_reason = (
                        f"CPU saturated: {late} of {len(fleet.procs)} guests had not "
                        f"printed a heartbeat {STEP_WAIT_S:.0f} s after they were started"
                    )
                    break
                if elapsed > SATURATED_S:
                    # Going further only makes a shared 2-CPU machine unusable for a while.
                    stop_reason = (
                        f"CPU saturated: the step to {len(fleet.procs)} guests took "
                        f"{elapsed:.0f} s (> {SATURATED_S:.0f} s) to reach all heartbeats"
                    )
                    break
        finally:
            fleet.kill_all()
    return {"steps": steps, "stopped_because": stop_reason}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def write_results(data: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tender.json").write_text(json.dumps(data, indent=2) + "\n")
    lat: dict[str, Latency] = {k: Latency(**v) for k, v in data["latency"].items()}  # type: ignore[attr-defined]
    mem: dict[str, int | None] = data["memory"]  # type: ignore[assignment]
    dens: dict[str, object] = data["density"]  # type: ignore[assignment]
    tender, floor = lat["tender"], lat["floor"]
    lines = [
        "### edge-tender boot latency, memory and density",
        "",
        f"Measured {data['date']} on {data['host']} ({data['mode']} run; medians; "
        "process start to guest exit and to first console byte, one C harness for all).",
        "",
        "| runner | image | runs | first byte | exit (median) | p10-p90 | vs tender |",
        "|---|---|---|---|---|---|---|",
    ]
    images = {
        "floor": "out; hlt",
        "tender": "hello.hvt",
        "qemu_kvm": "hello.qemu",
        "qemu_tcg": "hello.qemu",
    }
    names = {
        "floor": "floor (KVM VM, out; hlt)",
        "tender": "edge-tender",
        "qemu_kvm": "QEMU -accel kvm",
        "qemu_tcg": "QEMU -accel tcg",
    }
    for key in ("floor", "tender", "qemu_tcg", "qemu_kvm"):
        r = lat[key]
        lines.append(
            f"| {names[key]} | {images[key]} | {r.runs} | {fmt(r.first_ms, ' ms')} | "
            f"{fmt(r.exit_ms, ' ms')} | {fmt(r.exit_p10_ms)}-{fmt(r.exit_p90_ms, ' ms')} | "
            f"{fmt(ratio(r.exit_ms, tender.exit_ms), 'x', 1)} |"
        )
    lines += [
        "",
        "| ratio | value | goal |",
        "|---|---|---|",
        f"| QEMU KVM / edge-tender (exit) | {fmt(ratio(lat['qemu_kvm'].exit_ms, tender.exit_ms), 'x', 1)} | >= 20x |",  # noqa: E501
        f"| QEMU TCG / edge-tender (exit) | {fmt(ratio(lat['qemu_tcg'].exit_ms, tender.exit_ms), 'x', 1)} | >= 20x |",  # noqa: E501
        f"| QEMU TCG / edge-tender (first byte) | {fmt(ratio(lat['qemu_tcg'].first_ms, tender.first_ms), 'x', 1)} | |",  # noqa: E501
        f"| edge-tender / floor (exit) | {fmt(ratio(tender.exit_ms, floor.exit_ms), 'x')} | <= 1.5x |",  # noqa: E501
        f"| edge-tender / floor (first byte) | {fmt(ratio(tender.first_ms, floor.first_ms), 'x')} | |",  # noqa: E501
        "",
        "| tender memory (ticker, 4 MiB guest) | value | goal |",
        "|---|---|---|",
        f"| VmRSS / VmHWM | {mem.get('VmRSS_kb')} / {mem.get('VmHWM_kb')} KiB | |",
        f"| guest pages touched | {mem.get('guest_touched_kb')} KiB | |",
        f"| RSS beyond guest pages (HWM) | {mem.get('rss_beyond_guest_kb')} "
        f"({mem.get('hwm_beyond_guest_kb')}) KiB | < 2048 KiB |",
        f"| of which shared files (libc, tender text) | {mem.get('RssFile_kb')} KiB | |",
        f"| PSS | {mem.get('pss_kb')} KiB | |",
        f"| stripped binary | {mem.get('stripped_binary_bytes')} bytes | < 153600 |",
        "",
        "| density: ticker guests (4 MiB, 1 s) | heartbeating | exited / late | start "
        "(spawn) to all heartbeats | total RSS | per guest RSS / PSS | MemAvailable drop "
        "per guest | CPU cores busy (machine) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step in dens["steps"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {step['guests']} | {step['heartbeating']} | {step['exited']} / {step['late']} | "
            f"{step['seconds_to_all_heartbeats']} s ({step['seconds_to_spawn']} s) | "
            f"{step['total_rss_kb'] // 1024} MiB | "
            f"{step['per_guest_rss_kb']} / {step['per_guest_pss_kb']} KiB | "
            f"{step['per_guest_system_kb']} KiB | {step['cpu_cores_busy']} |"
        )
    lines += ["", f"Density stopped because: {dens['stopped_because']}.", ""]
    (RESULTS / "tender.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, density 100 only")
    args = parser.parse_args(argv)
    runs = QUICK if args.quick else FULL
    missing = [
        str(p)
        for p in (TENDER, OUT / "hello.hvt", OUT / "hello.qemu", OUT / "ticker.hvt")
        if not p.exists()
    ]
    if missing:
        print(f"bench tender: missing {', '.join(missing)}: run `make tender images`",
              file=sys.stderr)  # fmt: skip
        return 1
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("bench tender: /dev/kvm is not usable", file=sys.stderr)
        return 1
    started = time.monotonic()
    floor, spawntime = build_helpers()
    qemu = shutil.which(QEMU) or QEMU
    qemu_kernel = ["-kernel", str(OUT / "hello.qemu")]
    latency = measure_latency(
        spawntime,
        {
            "floor": (runs.fast, [str(floor)]),
            "tender": (
                runs.fast,
                [str(TENDER), f"--mem={GUEST_MEM_MB}", "--", str(OUT / "hello.hvt")],
            ),
            "qemu_tcg": (runs.qemu_tcg, [qemu, *QEMU_ACCEL["tcg"], *QEMU_COMMON, *qemu_kernel]),
            "qemu_kvm": (runs.qemu_kvm, [qemu, *QEMU_ACCEL["kvm"], *QEMU_COMMON, *qemu_kernel]),
        },
    )
    # Every run must have booted the guest to a clean exit (QEMU: debug-exit 0 -> 1).
    expected = {"floor": (0,), "tender": (0,), "qemu_tcg": (1,), "qemu_kvm": (1,)}
    for key, result in latency.items():
        if result.statuses != expected[key]:
            print(f"bench tender: {key} exit statuses {result.statuses}", file=sys.stderr)
            return 1
    memory = measure_memory()
    density = measure_density(runs)
    data: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": f"{os.uname().nodename} ({os.cpu_count()} CPUs)",
        "mode": "quick" if args.quick else "full",
        "latency": {k: v.__dict__ for k, v in latency.items()},
        "memory": memory,
        "density": density,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_results(data)
    log(f"done in {data['seconds']} s: {RESULTS / 'tender.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

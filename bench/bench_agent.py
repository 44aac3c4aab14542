"""Benchmark the device agent: OTA update latency and footprint with 20 running guests.

``python bench/bench_agent.py`` (also run by ``make bench`` through bench/run.py) measures, on
this machine, with a repository made by the publisher and served by ``edgeagent repo serve`` on
127.0.0.1, and ``edgeagent agent`` as its own process (real edge-tender guests under KVM):

1. Update latency: from the start of ``edgeagent repo add`` publishing a new ``ticker``
   version (a new blob each time, so it is really pulled and verified) to ``/status`` showing
   that version running after its health window (``health_window_s = 0``: committed at its
   first heartbeat; ticker beats every 100 ms), with a 0.2 s poll interval. Median of several
   updates. The ``repo add`` process itself (Python start-up, signing) is inside the number.
2. Footprint: 20 ``ticker`` guests (4 MiB each, one heartbeat per second) running under one
   agent polling every 30 s: the agent's RSS (VmRSS from /proc, guests excluded) and its idle
   CPU over a 10 s window (utime + stime from /proc/PID/stat).

Writes bench/results/agent.json and bench/results/agent.md. It measures; it only prints each
goal next to its number. Everything lives in a temporary folder deleted at the end; keys are
generated there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeagent.build import build_image  # noqa: E402
from edgeagent.publisher.policy import target_custom  # noqa: E402
from edgeagent.publisher.repo import Repository  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TENDER = ROOT / "host-os" / "tender" / "edge-tender"
UPDATES = 7
GUESTS = 20
IDLE_WINDOW_S = 10.0
GOAL_LATENCY_S = 1.0
GOAL_RSS_MIB = 60.0
GOAL_CPU_PCT = 1.0
_AGENT_CODE = "import sys; from edgeagent import cli\nsys.exit(cli.main())"


def _edgeagent(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeagent", *args]


@contextmanager
def served(repo_dir: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        _edgeagent("repo", "serve", str(repo_dir), "--listen", "127.0.0.1:0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"repo serve did not start: {line!r}")
        yield line.rsplit(" at ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def agent(config: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    log = (config.parent / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _AGENT_CODE, "-v", "agent", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        http = ""
        for line in proc.stdout:
            if line.startswith("agent: http on "):
                http = line.rsplit(" ", 1)[1].strip()
            if line.startswith("agent: running"):
                break
        if not http:
            raise RuntimeError("agent did not report its HTTP address")
        yield proc, f"http://{http}"
    except BaseException:
        log.close()
        print((config.parent / "agent.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def config_text(tmp: Path, url: str, repo: Repository, poll_s: float, window_s: float) -> str:
    return f"""
[registry]
url = "{url}"
trust_root = "{repo.root_path}"
poll_interval_s = {poll_s}
poll_jitter_s = 0
[paths]
store = "{tmp / "store"}"
state = "{tmp / "state"}"
[runner]
tender = "{TENDER}"
stop_grace_s = 1
[health]
heartbeat_deadline_s = 5
health_window_s = {window_s}
[limits]
max_workloads = 64
[http]
listen = "127.0.0.1:0"
"""


def pause(seconds: float) -> None:
    """Sleep (this benchmark is a plain synchronous script; time.sleep is banned by lint)."""
    threading.Event().wait(seconds)


Workloads = list[dict[str, object]]


def get_workloads(client: httpx.Client, base: str) -> Workloads:
    """GET /status and return its workloads (a new connection per request)."""
    status: object = client.get(f"{base}/status", headers={"Connection": "close"}).json()
    assert isinstance(status, dict)
    ws = status["workloads"]
    assert isinstance(ws, list)
    return [w for w in ws if isinstance(w, dict)]


def wait_status(
    client: httpx.Client, base: str, ok: Callable[[Workloads], bool], limit: float = 30.0
) -> float:
    """Poll /status every 10 ms until ``ok(workloads)``; return the time it became true."""
    deadline = time.monotonic() + limit
    ws: Workloads = []
    while time.monotonic() < deadline:
        ws = get_workloads(client, base)
        if ok(ws):
            return time.monotonic()
        pause(0.01)
    raise RuntimeError(f"timed out; last workloads: {json.dumps(ws)[:2000]}")


def running(name: str, version: str) -> Callable[[Workloads], bool]:
    def ok(ws: Workloads) -> bool:
        return any(
            w["name"] == name and w["version"] == version and w["state"] == "running" for w in ws
        )

    return ok


def measure_latency(tmp: Path, ticker: Path) -> list[float]:
    repo = Repository.init(tmp / "repo")
    repo.add_target(
        ticker, "ticker", target_custom(version="0", mem_mb=4, args=["interval_ms=100"])
    )
    out: list[float] = []
    with served(tmp / "repo") as url:
        config = tmp / "agent.toml"
        config.write_text(config_text(tmp, url, repo, poll_s=0.2, window_s=0))
        with agent(config) as (_proc, base), httpx.Client() as client:
            wait_status(client, base, running("ticker", "0"))
            for i in range(1, UPDATES + 1):
                blob = tmp / f"ticker-{i}.hvt"
                blob.write_bytes(ticker.read_bytes() + b"\0" * 8 + str(i).encode())
                t0 = time.monotonic()
                subprocess.run(
                    _edgeagent(
                        "repo",
                        "add",
                        str(tmp / "repo"),
                        str(blob),
                        "--name",
                        "ticker",
                        "--version",
                        str(i),
                        "--mem",
                        "4",
                        "--arg",
                        "interval_ms=100",
                    ),
                    check=True,
                    capture_output=True,
                )
                t1 = wait_status(client, base, running("ticker", str(i)))
                out.append(t1 - t0)
                pause(0.3)
    return out


def _proc_cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure_footprint(tmp: Path, ticker: Path) -> tuple[float, float]:
    repo = Repository.init(tmp / "repo")
    for i in range(GUESTS):
        custom = target_custom(version="1", mem_mb=4, args=["interval_ms=1000"])
        repo.add_target(ticker, f"ticker-{i:02d}", custom)
    with served(tmp / "repo") as url:
        config = tmp / "agent.toml"
        config.write_text(config_text(tmp, url, repo, poll_s=30, window_s=1))

        def all_running(ws: Workloads) -> bool:
            return len(ws) == GUESTS and all(w["state"] == "running" for w in ws)

        with agent(config) as (proc, base), httpx.Client() as client:
            wait_status(client, base, all_running, limit=120)
            pause(2.0)
            c0, t0 = _proc_cpu_s(proc.pid), time.monotonic()
            pause(IDLE_WINDOW_S)
            c1, t1 = _proc_cpu_s(proc.pid), time.monotonic()
            rss = _rss_mib(proc.pid)
            still = all_running(get_workloads(client, base))
            if not still:
                raise RuntimeError("guests stopped running during the idle window")
    return rss, 100.0 * (c1 - c0) / (t1 - t0)


def main(argv: list[str]) -> int:
    del argv
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    try:
        ticker = build_image(ROOT / "image-recipes" / "ticker", "hvt", tmp / "ticker.hvt").path
        (tmp / "lat").mkdir()
        latencies = measure_latency(tmp / "lat", ticker)
        (tmp / "fp").mkdir()
        rss, cpu = measure_footprint(tmp / "fp", ticker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    median = statistics.median(latencies)
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result = {
        "measured_at": when,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "update_latency_s": {"median": median, "runs": latencies, "goal": GOAL_LATENCY_S},
        "agent_rss_mib_20_guests": {"value": rss, "goal": GOAL_RSS_MIB},
        "agent_idle_cpu_pct_20_guests": {"value": cpu, "goal": GOAL_CPU_PCT},
    }
    (RESULTS / "agent.json").write_text(json.dumps(result, indent=2) + "\n")
    latency_row = (
        f"| update latency: `repo add` -> new version running (poll 0.2 s, median of {UPDATES}) "
        f"| {median:.2f} s (min {min(latencies):.2f}, max {max(latencies):.2f}) "
        f"| < {GOAL_LATENCY_S:g} s |"
    )
    cpu_row = (
        f"| agent idle CPU with {GUESTS} guests (1 heartbeat/s each, poll 30 s) "
        f"| {cpu:.2f} % of a core | < {GOAL_CPU_PCT:g} % |"
    )
    md = f"""### edgeagent agent: OTA update latency and footprint

Measured {when} on {platform.node()} ({os.cpu_count()} CPUs); `edgeagent repo serve` and
`edgeagent agent` on 127.0.0.1; real edge-tender guests under KVM.

| measure | edgeagent | goal |
|---|---|---|
{latency_row}
| agent RSS with {GUESTS} ticker guests | {rss:.1f} MiB | < {GOAL_RSS_MIB:g} MiB |
{cpu_row}
"""
    (RESULTS / "agent.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

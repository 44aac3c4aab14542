"""Benchmark ``edgeagent pull``: throughput against curl, refresh latency, memory.

``python bench/bench_pull.py`` (also run by ``make bench`` through bench/run.py) measures, in
one run on this machine, against one ``edgeagent repo serve`` on 127.0.0.1 serving a repository
made with the publisher (``edgeagent.publisher.repo.Repository``):

1. Pull + verify of a 256 MiB target (in-process ``edgeagent.commands.pull.pull``: metadata
   refresh, streaming download, SHA-256, write, fsync, rename; a fresh store each run) against
   ``curl -o /dev/null`` on the same target URL; medians of several runs; the throughput ratio;
   client CPU seconds per GiB (user + system of this process, hashing thread included). For
   context, ``curl -o FILE`` (which also writes to disk, without fsync) is measured too.
2. Metadata refresh with nothing new (root N+1 probe, timestamp, local snapshot/targets
   re-verified): median ms over many runs, one open connection as the agent keeps it.
3. Peak RSS of an ``edgeagent pull`` process pulling a 1 GiB target (``ru_maxrss`` of that
   child, from ``os.wait4``).

Writes bench/results/pull.json and bench/results/pull.md. It measures; it does not judge beyond
printing each goal next to its number. The generated repository and keys live in a temporary
folder that is deleted at the end.
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
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeagent.client.updater import MetadataDir, Updater  # noqa: E402
from edgeagent.commands.pull import pull  # noqa: E402
from edgeagent.publisher.policy import target_custom  # noqa: E402
from edgeagent.publisher.repo import Repository  # noqa: E402
from edgeagent.registry.fetch import FetchConfig, HttpxFetcher  # noqa: E402
from edgeagent.registry.protocol import RegistryLayout  # noqa: E402
from edgeagent.store.cas import Store  # noqa: E402
from edgeagent.verify.clock import TrustedClock  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MIB = 1024 * 1024
BIG_MIB = 256
HUGE_MIB = 1024
RUNS = 5
REFRESH_RUNS = 40
GOAL_RATIO = 0.7
GOAL_REFRESH_MS = 20.0
GOAL_RSS_MIB = 80.0


def write_file(path: Path, mib: int) -> None:
    """A file of ``mib`` MiB: a random 16 MiB block repeated (no compression anywhere)."""
    block = os.urandom(16 * MIB)
    with path.open("wb") as f:
        for _ in range(mib // 16):
            f.write(block)


@contextmanager
def served(repo_dir: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "repo",
            "serve",
            str(repo_dir),
            "--listen",
            "127.0.0.1:0",
        ],
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


def curl_seconds(url: str, out: str) -> float:
    res = subprocess.run(
        ["curl", "-s", "-f", "-o", out, "-w", "%{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(res.stdout)


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pull_once(url: str, trust: bytes, store_dir: Path, name: str) -> tuple[float, float]:
    shutil.rmtree(store_dir, ignore_errors=True)
    c0, t0 = cpu_now(), time.perf_counter()
    with Store.open(store_dir) as store:
        trio.run(partial(pull, url, trust, store, name, FetchConfig(), progress=False))
    return time.perf_counter() - t0, cpu_now() - c0


async def refresh_times(url: str, store_dir: Path, runs: int) -> list[float]:
    times = []
    with Store.open(store_dir) as store:
        md = MetadataDir(store.metadata_dir)
        clock = TrustedClock(store.state_dir)
        async with HttpxFetcher(FetchConfig()) as fetcher:
            up = Updater(md, RegistryLayout.from_registry(url), fetcher, store, clock)
            await up.refresh()  # Warm: connection open, everything local.
            for _ in range(runs):
                t0 = time.perf_counter()
                await up.refresh()
                times.append((time.perf_counter() - t0) * 1000)
    return times


def peak_rss_kib(url: str, trust: Path, store_dir: Path, name: str) -> tuple[int, float]:
    shutil.rmtree(store_dir, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "pull",
            "--registry",
            url,
            "--trust",
            str(trust),
            "--store",
            str(store_dir),
            name,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"pull of {name} failed with status {proc.returncode}")
    return usage.ru_maxrss, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    del argv
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgeagent-bench-pull-"))
    try:
        repo = Repository.init(work / "repo")
        big, huge = work / "big.img", work / "huge.img"
        write_file(big, BIG_MIB)
        repo.add_target(big, "big", target_custom(version="1"))
        big.unlink()
        write_file(huge, HUGE_MIB)
        repo.add_target(huge, "huge", target_custom(version="1"))
        huge.unlink()
        trust_path = repo.root_path
        trust = trust_path.read_bytes()
        sha = repo.targets.signed.targets["big"].hashes["sha256"]
        with served(work / "repo") as url:
            target_url = f"{url}targets/{sha}.big"
            curl_null = [curl_seconds(target_url, "/dev/null") for _ in range(RUNS)]
            curl_file = [curl_seconds(target_url, str(work / "curl.out")) for _ in range(RUNS)]
            pulls = [pull_once(url, trust, work / "store", "big") for _ in range(RUNS)]
            refresh_ms = trio.run(refresh_times, url, work / "store", REFRESH_RUNS)
            rss_kib, huge_s = peak_rss_kib(url, trust_path, work / "store-huge", "huge")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gib = BIG_MIB / 1024
    curl_s = statistics.median(curl_null)
    curl_file_s = statistics.median(curl_file)
    pull_s = statistics.median(p[0] for p in pulls)
    cpu_per_gib = statistics.median(p[1] for p in pulls) / gib
    ratio = curl_s / pull_s
    refresh_med = statistics.median(refresh_ms)
    rss_mib = rss_kib / 1024
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "target_mib": BIG_MIB,
        "runs": RUNS,
        "curl_devnull_s": curl_null,
        "curl_file_s": curl_file,
        "pull_s": [p[0] for p in pulls],
        "pull_cpu_s": [p[1] for p in pulls],
        "throughput_ratio_vs_curl_devnull": ratio,
        "throughput_ratio_vs_curl_file": curl_file_s / pull_s,
        "pull_gib_per_s": gib / pull_s,
        "curl_gib_per_s": gib / curl_s,
        "client_cpu_s_per_gib": cpu_per_gib,
        "refresh_ms": refresh_ms,
        "refresh_median_ms": refresh_med,
        "huge_mib": HUGE_MIB,
        "huge_pull_s": huge_s,
        "peak_rss_mib": rss_mib,
    }
    (RESULTS / "pull.json").write_text(json.dumps(result, indent=1) + "\n")
    md = f"""### edgeagent pull: throughput, refresh latency, memory

Measured {result["when"]} on {result["host"]}; server `edgeagent repo serve` on 127.0.0.1; \
medians of {RUNS} runs (refresh: {REFRESH_RUNS}).

| measure | edgeagent | peer | ratio | goal |
|---|---|---|---|---|
| pull + verify {BIG_MIB} MiB (GiB/s) | {gib / pull_s:.2f} | curl -o /dev/null {gib / curl_s:.2f} \
| {ratio:.2f}x | >= {GOAL_RATIO}x |
| same, peer writing a file | {gib / pull_s:.2f} | curl -o FILE {gib / curl_file_s:.2f} \
| {curl_file_s / pull_s:.2f}x | - |
| client CPU per GiB pulled | {cpu_per_gib:.2f} s | - | - | - |
| metadata refresh, nothing new | {refresh_med:.1f} ms | - | - | < {GOAL_REFRESH_MS:.0f} ms |
| peak RSS pulling {HUGE_MIB} MiB | {rss_mib:.1f} MiB | - | - | < {GOAL_RSS_MIB:.0f} MiB |
"""
    (RESULTS / "pull.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

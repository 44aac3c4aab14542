"""Benchmark the serial diagnostics console: command -> reply round trip over a pty.

``python bench/bench_console.py [--quick]`` (also run by ``make bench`` through bench/run.py):

1. Starts an agent-side process that serves `serve_serial_console` on a pty's slave (opened
   by path, configured by pyserial, driven by trio's FdStream, exactly as on a device), with an
   in-bench `AgentControl` holding 2 or 20 workloads (the 20 matches the footprint goal).
2. The operator (this process) holds the master, sends a command line and times until the
   whole reply line is back: ``version`` (a small reply) and ``status`` (the full snapshot)
   in json mode, and ``vms`` in text mode. Median, p90, p99 and max of many runs.
3. The floor (the peer): a minimal blocking Python process on the same kind of pty that reads
   a line and writes back a canned reply of the same size as the agent's. The ratio agent /
   floor is the cost of the trio shell, line editor, dispatch and JSON rendering.

Goal (issue 4): serial status round trip median under 5 ms. Over a pty the baud rate does not
limit throughput; on a real UART at 115200 baud a reply of N bytes also needs N / 11520 s on
the wire (the table lists reply sizes so that can be added).

Writes bench/results/console.json and bench/results/console.md. Measures; does not judge
beyond printing the goal next to the number.
"""

# No "from __future__ import annotations": bench/run.py loads this file without registering it
# in sys.modules.
import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GOAL_MS = 5.0

AGENT_CODE = r"""
import sys, trio
sys.path.insert(0, sys.argv[3])
from edgeagent.console.service import serve_serial_console
from edgeagent.control import (AgentInfo, AgentSnapshot, ConsolePolicy, NetInfo, RoleTrust,
    SerialConsoleSettings, TrustInfo, WorkloadInfo)

N = int(sys.argv[2])
T0 = 1_800_000_000.0

class BenchControl:
    # A static agent with N healthy workloads: the console's cost, not the agent's.
    def snapshot(self):
        return AgentSnapshot(
            taken_at=T0,
            agent=AgentInfo("bench-device", "0.1.0", T0 - 3600, "running", ("lab",)),
            trust=TrustInfo(1, tuple(RoleTrust(r, 3, 1, ("ab" * 32,), T0 + 86400)
                                     for r in ("root", "targets", "snapshot", "timestamp"))),
            net=NetInfo("http://127.0.0.1:8080/", "127.0.0.1:9100", T0 - 1, True),
            workloads=tuple(WorkloadInfo(f"guest{i:02d}", "3", "hvt", "running", 0, T0 - 1,
                                         None, (), T0 - 600, "2") for i in range(N)),
        )
    def console_tail(self, name, n):
        return []
    async def restart(self, name):
        return "ok"
    async def update_now(self):
        return "ok"
    async def rollback(self, name):
        return "ok"

async def main():
    settings = SerialConsoleSettings(path=sys.argv[1], status_interval_s=10.0,
                                     policy=ConsolePolicy())
    await serve_serial_console(sys.argv[1], BenchControl(), settings)

trio.run(main)
"""

FLOOR_CODE = r"""
import os, sys, tty, termios
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
replies = {}
for arg in sys.argv[2:]:
    cmd, _, size = arg.partition("=")
    replies[cmd.encode()] = b"x" * (int(size) - 2) + b"\r\n"
buf = b""
while True:
    data = os.read(fd, 4096)
    if not data:
        break
    buf += data
    while b"\r" in buf:
        line, _, buf = buf.partition(b"\r")
        line = line.strip(b"\x15\n")
        if line in replies:
            os.write(fd, replies[line])
"""


class Operator:
    """The far end of the pty: blocking writes, select-driven reads."""

    def __init__(self, master: int) -> None:
        self.fd = master
        self.buf = b""

    def read_line(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.buf += os.read(self.fd, 65536)
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self, deadline: float) -> bytes:
        """Return the next reply line (skipping periodic status lines)."""
        while True:
            line = self.read_line(deadline)
            if not line.startswith(b'{"edgeagent":"status"'):
                return line

    def text_reply(self, deadline: float, last_line: bytes) -> bytes:
        """Return text up to and including the line that starts with ``last_line``."""
        out = b""
        while True:
            line = self.read_line(deadline)
            if line.startswith(b'{"edgeagent":"status"'):
                continue
            out += line
            if line.startswith(last_line):
                return out

    def drain(self) -> None:
        """Discard replies to the start-up probes (so each command pairs with its reply)."""
        select.select([], [], [], 0.3)  # a short pause without time.sleep (banned)
        while select.select([self.fd], [], [], 0)[0]:
            os.read(self.fd, 65536)
        self.buf = b""

    def round_trip(self, command: bytes, *, text_last: bytes | None = None) -> tuple[float, int]:
        start = time.perf_counter()
        os.write(self.fd, b"\x15" + command + b"\r")
        deadline = time.monotonic() + 5
        data = self.text_reply(deadline, text_last) if text_last else self.reply(deadline)
        return (time.perf_counter() - start) * 1000, len(data)


def _pty_process(code: str, args: list[str]) -> tuple[subprocess.Popen[bytes], int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no cooking or echo of bytes sent before the child configures the line
    path = os.ttyname(slave)
    proc = subprocess.Popen([sys.executable, "-c", code, path, *args])
    return proc, master, slave


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "median_ms": round(statistics.median(ordered), 4),
        "p90_ms": round(pct(0.90), 4),
        "p99_ms": round(pct(0.99), 4),
        "max_ms": round(ordered[-1], 4),
    }


def _measure(op: Operator, command: bytes, runs: int, text_last: bytes | None = None) -> dict:
    for _ in range(max(5, runs // 20)):
        op.round_trip(command, text_last=text_last)
    samples, size = [], 0
    for _ in range(runs):
        ms, size = op.round_trip(command, text_last=text_last)
        samples.append(ms)
    return {"runs": runs, "reply_bytes": size, **_stats(samples)}


def _bench_agent(workloads: int, runs: int) -> dict:
    proc, master, slave = _pty_process(AGENT_CODE, [str(workloads), str(ROOT)])
    op = Operator(master)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the agent has the port open and answers
            os.write(master, b"\x15json on\r")
            try:
                if b'"cmd":"json"' in op.reply(time.monotonic() + 0.5):
                    break
            except TimeoutError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the agent-side console did not start") from None
        op.drain()
        result = {
            "version": _measure(op, b"version", runs),
            "status": _measure(op, b"status", runs),
        }
        os.write(master, b"\x15json off\r")
        op.text_reply(time.monotonic() + 5, b"json mode off")
        last = f"guest{workloads - 1:02d}".encode()
        result["vms_text"] = _measure(op, b"vms", runs, text_last=last)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.close(master)
        os.close(slave)


def _bench_floor(sizes: dict[str, int], runs: int) -> dict:
    proc, master, slave = _pty_process(FLOOR_CODE, [f"{k}={v}" for k, v in sizes.items()])
    op = Operator(master)
    try:
        deadline = time.monotonic() + 30
        while True:
            os.write(master, b"\x15version\r")
            try:
                op.reply(time.monotonic() + 0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the floor process did not start") from None
        op.drain()
        return {cmd: _measure(op, cmd.encode(), runs) for cmd in sizes}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.close(master)
        os.close(slave)


def _markdown(res: dict) -> str:
    lines = [
        "### Serial console round trip (command -> whole reply over a pty)",
        "",
        f"Measured {res['date']} on {res['host']} ({res['mode']} run; agent side in its own "
        "process: pyserial-configured pty + trio FdStream; the floor is a blocking Python "
        "process replying canned bytes of the same size).",
        "",
        "| workloads | command | reply bytes | runs | median | p90 | p99 | max | floor median "
        "| vs floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, cmds in res["agent"].items():
        for cmd, r in cmds.items():
            floor = res["floor"].get(n, {}).get(cmd)
            fl = f"{floor['median_ms']:.3f} ms" if floor else "-"
            ratio = f"{r['median_ms'] / floor['median_ms']:.1f}x" if floor else "-"
            lines.append(
                f"| {n} | {cmd} | {r['reply_bytes']} | {r['runs']} | {r['median_ms']:.3f} ms "
                f"| {r['p90_ms']:.3f} ms | {r['p99_ms']:.3f} ms | {r['max_ms']:.3f} ms | {fl} "
                f"| {ratio} |"
            )
    status = res["agent"][str(max(int(k) for k in res["agent"]))]["status"]
    lines += [
        "",
        "| metric | value | goal |",
        "|---|---|---|",
        f"| serial status round trip, median ({max(int(k) for k in res['agent'])} workloads) "
        f"| {status['median_ms']:.3f} ms | < {GOAL_MS:g} ms |",
        "",
        "On a real UART at 115200 baud add reply bytes / 11520 s of wire time "
        f"(the {status['reply_bytes']}-byte status: "
        f"{status['reply_bytes'] / 11.52:.0f} ms).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_console")
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    args = parser.parse_args(argv)
    runs = 50 if args.quick else 500
    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "mode": "quick" if args.quick else "full",
        "goal_ms": GOAL_MS,
        "agent": {},
        "floor": {},
    }
    for n in (2, 20):
        print(f"console bench: agent with {n} workloads, {runs} runs per command", flush=True)
        agent = _bench_agent(n, runs)
        res["agent"][str(n)] = agent
        sizes = {cmd: agent[cmd]["reply_bytes"] for cmd in ("version", "status")}
        res["floor"][str(n)] = _bench_floor(sizes, runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "console.json").write_text(json.dumps(res, indent=2) + "\n")
    md = _markdown(res)
    (RESULTS / "console.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

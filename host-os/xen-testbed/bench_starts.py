"""Guest start timings measured inside the Xen test bed's dom0 (bench/bench_xen.py runs it).

Runs in dom0 as ``python3 /testbed/bench_starts.py ROUNDS``. Per round, in this order:

- ``hello``: our PVH hello (xen platform), plain ``xl create`` of a config written here;
- ``linux``: the Linux PV control guest (the Debian kernel + busybox initrd, no ``quiet``), the
  same way; it is destroyed once its first line is in;
- ``agent``: hello started by the agent's own xen runner (`edgeagent.vmm.xen_runner.run_domain`:
  config render + atomic write + ownership record + ``xl create`` + ``xl domid``), the time
  until the runner reports the domain running and until its console sink gets the first bytes.

"First line" is the first byte in xenconsoled's guest log (``/var/log/xen/guest-NAME.log``),
polled every 5 ms while ``xl create`` runs and after, counted from just before it. It also
times the agent's per-start pieces on their own: rendering + atomically writing the config,
and one ``xl list -v`` and ``xl domid`` call (the runner's follow polls). Each result is one
``XTB-BENCH {json}`` line. It judges nothing; bench/bench_xen.py computes medians and ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import trio

from edgeagent.verify.clock import write_atomic
from edgeagent.vmm.xen import XenSpec, render_config
from edgeagent.vmm.xen_runner import XenTools, run_domain

TB = Path("/testbed")
LOGS = Path("/var/log/xen")
STATE = Path("/tmp/bench-xen")
LIMIT_S = 120.0


def emit(kind: str, **values: object) -> None:
    print("XTB-BENCH " + json.dumps({"kind": kind, **values}, sort_keys=True), flush=True)


def xl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xl", *args], capture_output=True, text=True, check=False)


def wait_gone(name: str) -> None:
    end = time.monotonic() + LIMIT_S
    while time.monotonic() < end and xl("domid", name).returncode == 0:
        time.sleep(0.2)  # noqa: TID251 (a plain script in dom0)


def bare_start(name: str, config: str, *, destroy: bool) -> None:
    log = LOGS / f"guest-{name}.log"
    log.unlink(missing_ok=True)
    cfg = STATE / f"{name}.cfg"
    cfg.write_text(config)
    t0 = time.monotonic()
    # The guest may print before `xl create` returns: watch the log while xl runs.
    proc = subprocess.Popen(["xl", "create", str(cfg)], stdout=subprocess.DEVNULL)
    t_create = None
    first = None
    end = t0 + LIMIT_S
    while time.monotonic() < end and (first is None or t_create is None):
        if t_create is None and proc.poll() is not None:
            t_create = time.monotonic() - t0
            if proc.returncode != 0:
                break
        if first is None and log.exists() and log.stat().st_size > 0:
            first = time.monotonic() - t0
        time.sleep(0.005)  # noqa: TID251 (a plain script in dom0)
    status = proc.wait()
    emit("bare", guest=name, xl_create_s=t_create, first_line_s=first, xl_status=status)
    if destroy:
        xl("destroy", name)
    wait_gone(name)


def hello_config(name: str) -> str:
    return (
        f'name = "{name}"\ntype = "pvh"\nkernel = "/testbed/hello.xen"\nmemory = 32\n'
        'vcpus = 1\ntsc_mode = "native"\non_poweroff = "destroy"\non_crash = "destroy"\n'
    )


def linux_config(name: str) -> str:
    return (
        f'name = "{name}"\ntype = "pv"\nkernel = "/testbed/vmlinuz"\n'
        'ramdisk = "/testbed/guest-initrd.cpio"\nextra = "console=hvc0"\nmemory = 128\n'
        'vcpus = 1\non_poweroff = "destroy"\non_crash = "destroy"\n'
    )


async def agent_start(n: int) -> None:
    tools = XenTools(state_dir=STATE / "agent", stop_grace=2.0, poll_interval_s=0.5)
    spec = XenSpec(name=f"edge-bench-{n}", kernel="/testbed/hello.xen", mem_mb=32)
    first: list[float] = []
    t0 = trio.current_time()

    def sink(data: bytes) -> None:
        if not first and data:
            first.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_domain(
                spec,
                key=("hello", "1", "0" * 64),
                console_sink=sink,
                tools=tools,
                task_status=task_status,
            )
        )
        running = trio.current_time() - t0
    emit(
        "agent",
        guest="hello",
        running_s=running,
        first_line_s=first[0] if first else None,
        total_s=trio.current_time() - t0,
    )


def pieces() -> None:
    spec = XenSpec(name="edge-bench-cfg", kernel="/testbed/hello.xen", mem_mb=32)
    times = []
    for _ in range(20):
        t0 = time.monotonic()
        write_atomic(STATE / "cfg-test.cfg", render_config(spec, str(uuid.uuid4())).encode())
        times.append(time.monotonic() - t0)
    emit("config_write", median_s=statistics.median(times))
    for args in (("list", "-v"), ("domid", "Domain-0")):
        calls = []
        for _ in range(5):
            t0 = time.monotonic()
            xl(*args)
            calls.append(time.monotonic() - t0)
        emit("xl_call", call=" ".join(args), median_s=statistics.median(calls))


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    STATE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    pieces()
    for n in range(rounds):
        bare_start(f"hello-{n}", hello_config(f"hello-{n}"), destroy=False)
        bare_start(f"linux-{n}", linux_config(f"linux-{n}"), destroy=True)
        trio.run(agent_start, n)
    emit("done", rounds=rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The OTA scenario run inside the Xen test bed's dom0 (tests/integration/test_xen_testbed.py).

Runs in dom0 as ``python3 /testbed/ota_scenario.py``, after /init started Xen's daemons. The
host test prepared, under /testbed/: ``stage/v1`` .. ``stage/v4`` (the registry's
files after publishing ticker v1 .. v4 and flood: signed metadata + targets), ``root.json`` (the
trust root), ``agent.toml``, ``hello.xen``, ``ticker.xen`` and ``scenario.json``
(``squat_domain``: the domain name the agent will want for its workload ``squat``).

What it does, printing ``XTB: ...`` lines the host test reads from the serial console:

1. ``edgeagent boot hello.xen --runner xen`` (the one-off path): its exit status;
2. creates, with plain ``xl create``, a foreign domain under the name the agent will need for
   ``squat`` (a name-collision attack: the agent must refuse and never destroy it);
3. serves a registry on dom0's loopback (``edgeagent repo serve``) holding stage v1;
4. starts ``edgeagent agent`` (its JSON status lines go to /dev/hvc0, the serial console;
   its log is echoed as ``XTB-AGENT: ...``) and waits, through the agent's /status, for each
   phase: ticker v1 running and healthy; ``squat`` refused with the foreign domain alive;
   v2 published -> v2 running, healthy, previous 1; v3 (a ticker that exits 2 at boot)
   published -> v3 marked bad, v2 running again; v4 (a ticker that hangs: no heartbeat within
   the deadline) published together with ``flood`` (a guest that floods its console with 1 MiB,
   then exits 0) -> v4 marked bad, v2 running again, flood ended with status 0 and its console
   log on disk stayed bounded;
5. kills the agent (SIGKILL) and starts it again: ticker v2 is running and healthy with
   exactly one ticker domain (adopted or replaced, never doubled);
6. stops the agent (SIGTERM) and lists the domains left behind (dom0 and the foreign one).

It judges nothing beyond waiting for each phase (the host test asserts); a phase that does
not come within its limit is reported with the agent's last status and the scenario stops.
It is not part of the edgeagent package: it runs with the dom0's python3 and the agent from
the boot's overlay.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

TB = Path("/testbed")
LIVE = Path("/tmp/registry")
STATUS_URL = "http://127.0.0.1:8480/status"
PHASE_LIMIT_S = 150.0
HOLD_S = 3.0

Status = dict[str, object]


def say(text: str) -> None:
    print(f"XTB: {text} uptime={Path('/proc/uptime').read_text().split()[0]}", flush=True)


AGENT_LOG: list[str] = []


def echo(prefix: str, stream: object) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace").rstrip()
        AGENT_LOG.append(line)
        print(f"{prefix}{line}", flush=True)


def xl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xl", *args], capture_output=True, text=True, check=False)


def domains() -> list[str]:
    rows = xl("list").stdout.splitlines()[1:]
    return [row.split()[0] for row in rows if row.split()]


def start_agent(env: dict[str, str]) -> subprocess.Popen[bytes]:
    agent = subprocess.Popen(
        ["edgeagent", "agent", "--config", str(TB / "agent.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    threading.Thread(target=echo, args=("XTB-AGENT: ", agent.stdout), daemon=True).start()
    say(f"agent started pid={agent.pid}")
    return agent


def wait_until(phase: str, cond: Callable[[], bool]) -> bool:
    end = time.monotonic() + PHASE_LIMIT_S
    while time.monotonic() < end:
        if cond():
            say(f"phase {phase} ok")
            return True
        time.sleep(0.5)  # noqa: TID251 (a plain script in dom0)
    say(f"phase {phase} timeout")
    return False


def publish(stage: str) -> None:
    """Make the served registry hold ``stage`` (targets first, timestamp.json last)."""
    src = TB / "stage" / stage
    for sub in ("targets", "metadata"):
        (LIVE / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / sub).iterdir()):
            if f.name != "timestamp.json":
                shutil.copy2(f, LIVE / sub / f.name)
    ts = src / "metadata" / "timestamp.json"
    tmp = LIVE / "metadata" / ".timestamp.json.tmp"
    shutil.copy2(ts, tmp)
    os.replace(tmp, LIVE / "metadata" / "timestamp.json")
    say(f"published {stage}")


def status() -> Status | None:
    try:
        with urllib.request.urlopen(STATUS_URL, timeout=5) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def ticker(doc: Status | None) -> dict[str, object]:
    if doc is None:
        return {}
    for w in doc.get("workloads") or []:  # type: ignore[attr-defined]
        if isinstance(w, dict) and w.get("name") == "ticker":
            return w
    return {}


def workload(name: str) -> dict[str, object]:
    """Workload ``name``'s entry in the agent's /status ({} when absent)."""
    doc = status()
    for w in (doc or {}).get("workloads") or []:  # type: ignore[attr-defined]
        if isinstance(w, dict) and w.get("name") == name:
            return w
    return {}


def console_bytes(name: str) -> int:
    """Bytes of workload ``name``'s console log on disk (the current file and its rotation)."""
    base = Path("/var/lib/edgeagent/state/console")
    return sum(p.stat().st_size for p in base.glob(f"{name}.log*") if p.is_file())


def flood_done() -> bool:
    return workload("flood").get("last_exit_status") == 0


def wait(phase: str, cond: Callable[[dict[str, object]], bool]) -> bool:
    end = time.monotonic() + PHASE_LIMIT_S
    last: Status | None = None
    while time.monotonic() < end:
        last = status()
        if cond(ticker(last)):
            say(f"phase {phase} ok ticker={json.dumps(ticker(last), sort_keys=True)}")
            # Hold the state long enough for the agent's periodic JSON status lines on the
            # serial console (what the host test reads) to show it too.
            time.sleep(HOLD_S)  # noqa: TID251 (a plain script in dom0)
            return True
        time.sleep(0.5)  # noqa: TID251 (a plain script in dom0)
    say(f"phase {phase} timeout last={json.dumps(ticker(last), sort_keys=True)}")
    return False


def running(version: str) -> Callable[[dict[str, object]], bool]:
    def cond(w: dict[str, object]) -> bool:
        return (
            w.get("version") == version and w.get("state") == "running" and bool(w.get("healthy"))
        )

    return cond


def main() -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    boot = subprocess.run(
        ["edgeagent", "boot", str(TB / "hello.xen"), "--runner", "xen", "--mem", "32"],
        capture_output=True,
        check=False,
        env=env,
    )
    for line in (boot.stdout + boot.stderr).decode("utf-8", "replace").splitlines():
        print(f"XTB-BOOT hello: {line}", flush=True)
    say(f"boot hello exit={boot.returncode}")

    squat = json.loads((TB / "scenario.json").read_text())["squat_domain"]
    cfg = Path("/tmp/squat.cfg")
    cfg.write_text(
        f'name = "{squat}"\ntype = "pvh"\nkernel = "/testbed/ticker.xen"\nmemory = 8\n'
        # Without an explicit vcpus, libxl 4.17 sizes the HAP pool for 0 vCPUs: ENOMEM.
        'vcpus = 1\ntsc_mode = "native"\ncmdline = "interval_ms=2000"\n'
    )
    made = xl("create", str(cfg))
    say(f"foreign domain {squat} created status={made.returncode}")
    for line in made.stderr.splitlines():
        print(f"XTB-XL: {line}", flush=True)

    publish("v1")
    server = subprocess.Popen(
        ["edgeagent", "repo", "serve", str(LIVE), "--listen", "127.0.0.1:8000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert server.stdout is not None
    say(f"registry: {server.stdout.readline().decode().strip()}")
    threading.Thread(target=echo, args=("XTB-REGISTRY: ", server.stdout), daemon=True).start()
    agent = start_agent(env)
    ok = wait("v1", running("1"))
    if ok:
        ok = wait_until(
            "squat-refused",
            lambda: (
                any("was not created by edgeagent" in ln for ln in AGENT_LOG) and squat in domains()
            ),
        )
    if ok:
        publish("v2")
        ok = wait("v2", lambda w: running("2")(w) and w.get("previous_version") == "1")
    if ok:
        publish("v3")
        ok = wait(
            "v3-rolled-back",
            lambda w: "3" in (w.get("bad_versions") or []) and running("2")(w),  # type: ignore[operator]
        )
    if ok:
        publish("v4")
        ok = wait(
            "v4-hang-rolled-back",
            lambda w: "4" in (w.get("bad_versions") or []) and running("2")(w),  # type: ignore[operator]
        )
    if ok:
        ok = wait_until("flood-done", flood_done)
        say(f"flood console log bytes={console_bytes('flood')} status={workload('flood')}")
    if ok:
        agent.kill()
        say(f"agent killed exit={agent.wait()} domains={' '.join(domains())}")
        agent = start_agent(env)
        ok = wait("restart", running("2"))
        tickers = [d for d in domains() if d.startswith("edge-ticker-")]
        say(f"after restart ticker domains={' '.join(tickers)} all={' '.join(domains())}")
        ok = ok and len(tickers) == 1
    agent.send_signal(signal.SIGTERM)
    try:
        rc = agent.wait(60)
    except subprocess.TimeoutExpired:
        agent.kill()
        rc = agent.wait()
    say(f"agent exit={rc}")
    say(f"domains after agent stop: {' '.join(domains())}")
    xl("destroy", squat)
    server.terminate()
    server.wait(10)
    say(f"scenario {'ok' if ok else 'failed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

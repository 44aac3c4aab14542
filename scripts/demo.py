"""`make demo`: the device agent end to end on this machine, each step printed with its timing.

1. create a signed TUF registry under DEMO/registry with DEMO keys generated now (throwaway),
2. serve it with `edgeagent repo serve` on 127.0.0.1 (a free port),
3. write DEMO/agent.toml and start `edgeagent agent` with a pty as its serial console (this
   script holds the other end and reads the periodic JSON status line), HTTP health and the TCP
   diagnostics console on free 127.0.0.1 ports,
4. publish ticker v1 and kvstore v1: the agent pulls, verifies and boots them,
5. publish ticker v2: update, health window, commit,
6. publish a ticker v3 that crashes at boot: automatic rollback to v2 (v3 marked bad),
7. stop everything cleanly (agent SIGTERM -> guests stopped; registry stopped) and exit 0.

Along the way it shows the serial status line, an abridged `/status`, and `edgeagent console`
one-shot commands. A step that does not converge within `STEP_TIMEOUT_S` fails loudly with the
last status and the agent's log tail (exit 1).

Everything lives under DEMO (default ``demo/`` in the checkout, ignored by git; the
``DEMO_DIR`` environment variable overrides it, ``DEMO_IMAGES`` overrides the folder of built
images, default ``image-recipes/out``). The keys there are demo keys, never for production.
Exit status: 0 when the demo ran to the end, 1 (with the reason on stderr) otherwise.

What it does not do: build anything (`make demo` runs `make images` and `make tender` first),
or leave anything running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("DEMO_DIR") or ROOT / "demo").resolve()
IMAGES = Path(os.environ.get("DEMO_IMAGES") or ROOT / "image-recipes" / "out").resolve()
TENDER = ROOT / "host-os" / "tender" / "edge-tender"
EDGEAGENT = [sys.executable, "-m", "edgeagent"]

#: Generous bound on each convergence step (the whole demo takes ~15 s here);
#: ``DEMO_STEP_TIMEOUT_S`` overrides it (tests of the failure path).
STEP_TIMEOUT_S = float(os.environ.get("DEMO_STEP_TIMEOUT_S") or 90.0)
#: Bound on the clean stop of the agent (SIGTERM -> guests stopped -> exit 0).
STOP_TIMEOUT_S = 30.0
TICK_MS = 300
#: Workload fields the abridged ``/status`` keeps.
STATUS_KEYS = (
    "name",
    "version",
    "state",
    "restarts",
    "previous_version",
    "bad_versions",
    "last_exit_status",
)

Status = dict[str, Any]


class DemoError(Exception):
    """A demo step failed; the message says which and why."""


class Clock:
    """Prints steps as ``[  12.3 s] ==> title`` and their durations."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def since(self) -> float:
        return time.monotonic() - self.t0

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        print(f"\n[{self.since():6.1f} s] ==> {title}", flush=True)
        yield
        print(f"[{self.since():6.1f} s]     done in {time.monotonic() - start:.2f} s", flush=True)


def say(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"           {line}", flush=True)


def rel(path: Path | str) -> str:
    p = str(path)
    return os.path.relpath(p, Path.cwd()) if p.startswith(str(ROOT)) else p


async def run(args: list[str], *, show: bool = True) -> str:
    """Run a short edgeagent command; its output is shown; a failure raises DemoError."""
    shown = shlex.join(rel(a) for a in args[len(EDGEAGENT) :])
    if show:
        say(f"$ edgeagent {shown}")
    proc = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    out = proc.stdout.decode(errors="replace")
    if show and out.strip():
        say(out)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise DemoError(f"`edgeagent {shown}` failed with exit status {proc.returncode}:\n{err}")
    return out


class Serial:
    """The demo's end of the agent's serial console: a pty master, read in the background."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.stream = trio.lowlevel.FdStream(self.master)
        self.status: str | None = None
        self.status_lines = 0
        self.replies: list[str] = []
        self._changed = trio.Event()

    async def read_forever(self) -> None:
        buf = b""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # EIO once nobody holds the other end.
            if not data:
                return
            buf += data
            *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                start = line.find("{")
                if start < 0:
                    continue
                obj = line[start:]
                if obj.startswith('{"edgeagent":"status"'):
                    self.status = obj
                    self.status_lines += 1
                else:
                    self.replies.append(obj)
                self._changed.set()
                self._changed = trio.Event()

    async def command(self, text: str, expect: Callable[[str], bool]) -> str:
        """Type ``text`` on the line and wait for the first reply ``expect`` accepts."""
        seen = len(self.replies)
        await self.stream.send_all(text.encode() + b"\r")
        with trio.fail_after(15):
            while True:
                for reply in self.replies[seen:]:
                    if expect(reply):
                        return reply
                await self._changed.wait()

    async def wait_status(self, after: int) -> str:
        with trio.fail_after(30):
            while self.status is None or self.status_lines <= after:
                await self._changed.wait()
        assert self.status is not None
        return self.status

    def close(self) -> None:
        for fd in (self.slave,):
            with contextlib.suppress(OSError):
                os.close(fd)


class Demo:
    """The demo's state: folders, processes, addresses."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.reg = DEMO / "registry"
        self.log_path = DEMO / "agent.log"
        self.http = httpx.AsyncClient(timeout=5)
        self.agent: trio.Process | None = None
        self.server: trio.Process | None = None
        self.agent_lines: list[str] = []
        self.registry_url = ""
        self.http_addr = ""
        self.console_addr = ""
        self.serial = Serial()
        self.last_status: Status | None = None

    # Helpers -----------------------------------------------------------------------------

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no agent log)"
        return "\n".join(lines[-n:])

    def fail(self, what: str) -> DemoError:
        status = json.dumps(abridged(self.last_status), indent=1) if self.last_status else "-"
        return DemoError(
            f"{what}\n--- last /status (abridged):\n{status}\n"
            f"--- agent log tail ({rel(self.log_path)}):\n{self.log_tail()}"
        )

    async def status(self) -> Status:
        resp = await self.http.get(f"http://{self.http_addr}/status")
        data: Status = resp.json()
        self.last_status = data
        return data

    async def wait_until(self, what: str, cond: Callable[[Status], bool]) -> Status:
        with trio.move_on_after(STEP_TIMEOUT_S):
            while True:
                if self.agent is not None and self.agent.returncode is not None:
                    raise self.fail(f"the agent exited ({self.agent.returncode}) before: {what}")
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if cond(await self.status()):
                        return self.last_status or {}
                await trio.sleep(0.1)
        raise self.fail(f"timed out after {STEP_TIMEOUT_S:g} s waiting for: {what}")

    async def publish(self, name: str, image: str, version: str, *extra: str) -> None:
        await run(
            [*EDGEAGENT, "repo", "add", str(self.reg), str(IMAGES / image), "--name", name,
             "--version", version, "--kind", "hvt", "--mem", "4", *extra]
        )  # fmt: skip

    async def show_serial(self) -> None:
        line = await self.serial.wait_status(self.serial.status_lines)
        say(f"serial status line ({rel(self.serial.path)}):\n{line}")

    async def show_status(self) -> None:
        data = await self.status()
        say(f"GET http://{self.http_addr}/status (abridged):")
        say(json.dumps(abridged(data), separators=(",", ":")))

    async def console(self, *commands: str) -> None:
        args = [*EDGEAGENT, "console", f"socket://{self.console_addr}"]
        for c in commands:
            args += ["-c", c]
        await run(args)

    # Processes ---------------------------------------------------------------------------

    async def start_server(self, nursery: trio.Nursery) -> None:
        args = [*EDGEAGENT, "repo", "serve", str(self.reg), "--listen", "127.0.0.1:0"]
        say(f"$ edgeagent repo serve {rel(self.reg)} --listen 127.0.0.1:0")
        proc = await trio.lowlevel.open_process(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.server = proc
        assert proc.stdout is not None
        with trio.fail_after(20):
            first = await _read_line(proc.stdout)
        if " at " not in first:
            raise DemoError(f"`edgeagent repo serve` did not start: {first!r}")
        self.registry_url = first.rsplit(" at ", 1)[1].strip()
        say(first)
        nursery.start_soon(_drain, proc.stdout)

    def write_config(self) -> Path:
        path = DEMO / "agent.toml"
        path.write_text(
            f"""# Written by scripts/demo.py: a demo agent with short timings.
schema_version = 1
[device]
id = "demo-device"
groups = ["demo"]
[registry]
url = "{self.registry_url}"
trust_root = "registry/metadata/1.root.json"
poll_interval_s = 0.5
poll_jitter_s = 0
poll_backoff_max_s = 2
[paths]
store = "store"
state = "state"
[runner]
tender = "{TENDER}"
stop_grace_s = 2
[health]
heartbeat_deadline_s = 3
health_window_s = 2
restart_backoff_initial_s = 0.5
restart_backoff_max_s = 4
[serial]
ports = ["{self.serial.path}"]
status_interval_s = 1
[http]
listen = "127.0.0.1:0"
[console_socket]
listen = "127.0.0.1:0"
"""
        )
        return path

    async def start_agent(self, nursery: trio.Nursery, config: Path) -> None:
        say(f"$ edgeagent -v agent --config {rel(config)}   (logs: {rel(self.log_path)})")
        log = self.log_path.open("wb")
        try:
            proc = await trio.lowlevel.open_process(
                [*EDGEAGENT, "-v", "agent", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        self.agent = proc
        assert proc.stdout is not None
        stdout = proc.stdout
        with trio.move_on_after(STEP_TIMEOUT_S):
            while True:
                line = await _read_line(stdout)
                if not line:
                    await proc.wait()
                    raise self.fail(f"the agent exited with status {proc.returncode} at startup")
                self.agent_lines.append(line)
                say(line)
                if line.startswith("agent: http on "):
                    self.http_addr = line.removeprefix("agent: http on ").strip()
                elif line.startswith("agent: console socket on "):
                    self.console_addr = line.removeprefix("agent: console socket on ").strip()
                elif line.startswith("agent: running"):
                    break
        if not (self.http_addr and self.console_addr):
            raise self.fail("the agent did not report its HTTP and console addresses")

        async def collect() -> None:
            while line := await _read_line(stdout):
                self.agent_lines.append(line)

        nursery.start_soon(collect)

    async def stop_agent(self) -> None:
        proc = self.agent
        if proc is None or proc.returncode is not None:
            return
        say(f"$ kill -TERM {proc.pid}   (the agent stops every guest, then exits)")
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S):
            await proc.wait()
        status = proc.poll()
        if status is None:
            proc.kill()
            await proc.wait()
            raise self.fail(f"the agent did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM")
        if status != 0:
            raise self.fail(f"the agent exited with status {status} after SIGTERM")

    async def stop_server(self) -> None:
        proc = self.server
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def cleanup(self) -> None:
        with trio.CancelScope(shield=True):
            if self.agent is not None and self.agent.returncode is None:
                self.agent.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT_S):
                    await self.agent.wait()
                if self.agent.returncode is None:
                    self.agent.kill()
                    await self.agent.wait()
            await self.stop_server()
            with trio.move_on_after(2):
                await self.http.aclose()
            self.serial.close()


async def _read_line(stream: trio.abc.ReceiveStream) -> str:
    """One line from a process pipe ('' at EOF); byte at a time, fine for a few ready lines."""
    out = bytearray()
    while not out.endswith(b"\n"):
        data = await stream.receive_some(1)
        if not data:
            break
        out += data
    return out.decode(errors="replace").rstrip("\n")


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(4096):
        pass


def abridged(data: Status | None) -> Status:
    """The interesting part of a ``/status`` body."""
    if not data:
        return {}
    agent = data.get("agent", {})
    return {
        "healthy": data.get("healthy"),
        "agent": {k: agent.get(k) for k in ("device_id", "state") if k in agent},
        "trust": {"root_version": data.get("trust", {}).get("root_version")},
        "workloads": [
            {k: w.get(k) for k in STATUS_KEYS if w.get(k) not in (None, [])}
            for w in data.get("workloads", [])
        ],
    }


def workload(data: Status, name: str) -> Status:
    for w in data.get("workloads", []):
        if w.get("name") == name:
            return dict(w)
    return {}


def guests_left(demo_dir: Path) -> list[str]:
    """Command lines of guest processes (tender, QEMU) still using this demo's folder."""
    store = str(demo_dir)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if store in cmd and ("tender" in cmd or "qemu" in cmd):
            found.append(f"{proc.name}: {cmd.strip()}")
    return found


def preflight() -> None:
    missing = [p for p in (IMAGES / "ticker.hvt", IMAGES / "kvstore.hvt", TENDER) if not p.exists()]
    if missing:
        raise DemoError(
            "missing build outputs: " + ", ".join(rel(p) for p in missing)
            + " (run `make demo`, which runs `make tender images` first)"
        )  # fmt: skip
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise DemoError("/dev/kvm is missing or not read-write for this user: guests need KVM")


async def demo(clock: Clock) -> None:
    preflight()
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir(parents=True)
    d = Demo(clock)
    try:
        async with trio.open_nursery() as nursery:
            await scenario(d, nursery)
            nursery.cancel_scope.cancel(reason="demo finished")
    finally:
        await d.cleanup()


async def scenario(d: Demo, nursery: trio.Nursery) -> None:
    clock = d.clock
    with clock.step("create a TUF registry signed with DEMO keys generated now"):
        await run([*EDGEAGENT, "repo", "init", str(d.reg)])
        (DEMO / "DEMO-KEYS-README.txt").write_text(
            "The keys in registry/keys/ were generated by scripts/demo.py for this demo run.\n"
            "They are DEMO keys: throwaway, unprotected, never to be used for a real device.\n"
        )
        say(f"DEMO keys (throwaway, not for production): {rel(d.reg / 'keys')}/")

    with clock.step("serve the registry on 127.0.0.1 (edgeagent repo serve)"):
        await d.start_server(nursery)

    with clock.step("start the device agent with a pty as its serial console"):
        nursery.start_soon(d.serial.read_forever)
        config = d.write_config()
        say(f"wrote {rel(config)}; serial console on {d.serial.path} (this script holds the pty)")
        await d.start_agent(nursery, config)
        await d.show_serial()

    with clock.step("publish ticker v1 and kvstore v1: the agent pulls, verifies and boots them"):
        await d.publish("ticker", "ticker.hvt", "1", f"--arg=interval_ms={TICK_MS}")
        await d.publish(
            "kvstore", "kvstore.hvt", "1", "--block", "storage",
            "--arg", "put", "--arg", "colour", "--arg", "blue",
        )  # fmt: skip
        await d.wait_until(
            "ticker v1 running and kvstore v1 done (exit 0)",
            lambda s: (
                workload(s, "ticker").get("version") == "1"
                and workload(s, "ticker").get("state") == "running"
                and workload(s, "kvstore").get("state") == "stopped"
                and workload(s, "kvstore").get("last_exit_status") == 0
            ),
        )
        await d.show_serial()
        await d.show_status()

    with clock.step("diagnostics console: one-shot commands over the console socket and the pty"):
        await d.console("vms", "logs ticker -n 3", "logs kvstore -n 2")
        say("on the pty: `json on`, then `trust`")
        await d.serial.command("json on", lambda r: '"ok"' in r)
        reply = await d.serial.command("trust", lambda r: '"cmd":"trust"' in r)
        say(reply[:300] + (" ..." if len(reply) > 300 else ""))

    with clock.step("publish ticker v2: update, health window, commit"):
        await d.publish("ticker", "ticker.hvt", "2", f"--arg=interval_ms={TICK_MS // 2}")
        await d.wait_until(
            "ticker v2 committed (running, previous version 1)",
            lambda s: (
                workload(s, "ticker").get("version") == "2"
                and workload(s, "ticker").get("state") == "running"
                and workload(s, "ticker").get("previous_version") == "1"
            ),
        )
        await d.show_serial()
        await d.show_status()

    with clock.step("publish ticker v3, which crashes at boot: automatic rollback to v2"):
        await d.publish(
            "ticker", "ticker.hvt", "3", f"--arg=interval_ms={TICK_MS}", "--arg=crash=now"
        )
        final = await d.wait_until(
            "ticker v3 rolled back (marked bad) with v2 running",
            lambda s: (
                "3" in workload(s, "ticker").get("bad_versions", [])
                and workload(s, "ticker").get("version") == "2"
                and workload(s, "ticker").get("state") == "running"
            ),
        )
        await d.console("logs ticker -n 4")
        await d.show_serial()
        await d.show_status()
        (DEMO / "final-status.json").write_text(json.dumps(final, indent=1) + "\n")
        say(f"saved the final /status to {rel(DEMO / 'final-status.json')}")

    with clock.step("stop everything: agent SIGTERM (guests stopped), registry stopped"):
        await d.stop_agent()
        say("\n".join(d.agent_lines[-1:]))
        left = guests_left(DEMO)
        if left:
            raise d.fail("guests still running after the agent stopped:\n" + "\n".join(left))
        say("no guest left running")
        await d.stop_server()
        say("registry stopped")


def _leaves(group: BaseExceptionGroup[DemoError]) -> list[DemoError]:
    out: list[DemoError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def main() -> int:
    clock = Clock()
    print(f"edgeagent demo in {rel(DEMO)} (images from {rel(IMAGES)})", flush=True)
    failures: list[str] = []
    try:
        trio.run(demo, clock)
    except* DemoError as group:
        failures.extend(str(exc) for exc in _leaves(group))
    if failures:
        for failure in failures:
            print(
                f"\ndemo: FAILED after {clock.since():.1f} s: {failure}",
                file=sys.stderr,
                flush=True,
            )
        return 1
    print(
        f"\n[{clock.since():6.1f} s] demo finished: ticker v2 running after the v3 rollback; "
        f"kvstore v1 done. Everything is under {rel(DEMO)}/.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

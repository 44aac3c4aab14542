"""The Xen test bed for real: Xen 4.17 + a PV dom0 under QEMU TCG, the agent's OTA path under xl.

One boot (about 2-4 minutes under TCG) of the test bed built by ``make xen-testbed``
(`edgeagent.hostos.xen_testbed`), with this checkout's agent packed in at boot
(`edgeagent.hostos.xen_boot`). Inside dom0:

- the Linux PV control guest (the Debian kernel + a busybox initrd) runs and powers off;
- ``edgeagent boot hello.xen --runner xen`` runs our PVH ``hello`` and exits with its status;
- ``host-os/xen-testbed/ota_scenario.py`` serves a signed registry on dom0's loopback and runs
  the agent with the xen runner: ticker v1 is pulled, started with ``xl create`` and reports
  heartbeats; a foreign domain squatting the name the agent needs for workload ``squat`` is
  refused and left alone; v2 is published and committed; v3 (a ticker that exits 2 at boot) is
  published and rolled back to v2; an agent killed with SIGKILL and restarted runs v2 in
  exactly one domain; stopping the agent leaves only dom0 and the foreign domain.

The test reads everything from the serial console with pyserial: the agent's JSON status lines
(it writes them to dom0's /dev/hvc0) and the ``XTB:`` lines of the test bed's scripts. The
repository and its keys are made per run in the test's tmp dir; dom0 only gets the signed
metadata and targets (one copy per published state), never a key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from edgeagent.hostos.qemuboot import status_line, workload_healthy
from edgeagent.hostos.xen_boot import boot
from edgeagent.hostos.xen_guest import GUEST_RE, guest_script, linux_guest
from edgeagent.hostos.xen_testbed import TESTBED
from edgeagent.publisher.policy import target_custom
from edgeagent.publisher.repo import Repository
from edgeagent.vmm.xen import domain_name

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "image-recipes" / "out"
DEADLINE_S = 600.0

pytestmark = pytest.mark.slow

AGENT_TOML = """\
schema_version = 1
[device]
id = "xen-dom0"
[registry]
url = "http://127.0.0.1:8000/"
trust_root = "/testbed/root.json"
poll_interval_s = 1.0
poll_jitter_s = 0
poll_backoff_max_s = 2.0
[registry.fetch]
retries = 0
[paths]
store = "/var/lib/edgeagent/store"
state = "/var/lib/edgeagent/state"
[runner]
hypervisor = "xen"
stop_grace_s = 3.0
[health]
heartbeat_deadline_s = 15.0
health_window_s = 6.0
restart_backoff_initial_s = 0.5
restart_backoff_max_s = 2.0
crash_loop_restarts = 3
crash_loop_window_s = 120.0
[serial]
ports = ["/dev/hvc0"]
status_interval_s = 1.0
[http]
listen = "127.0.0.1:8480"
"""


def _require() -> None:
    for tool in ("qemu-system-x86_64", "apt-get", "dpkg-deb", "cpio"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (host-os/xen-testbed/README.md)")
    for name in ("hello.xen", "ticker.xen", "hostile-flood.xen"):
        if not (IMAGES / name).exists():
            pytest.skip(f"{IMAGES / name} missing: run `make images`")


def _stages(tmp: Path) -> tuple[Path, Path, str]:
    """Publish ticker v1 .. v4 (+ flood with v4) into a fresh repository; copy the served files
    after each.

    Stage v1 also holds ``squat``, whose domain name (returned) dom0 takes first.
    """
    repo = Repository.init(tmp / "repo")
    stages = tmp / "stage"
    ticker = IMAGES / "ticker.xen"
    squat = target_custom(version="1", kind="xen", mem_mb=8, args=["interval_ms=500"])
    repo.add_target(ticker, "squat", squat)
    digest = hashlib.sha256(ticker.read_bytes()).hexdigest()
    squat_domain = domain_name("edge-", "squat", ("squat", "1", digest))
    for version, args in (
        ("1", ["interval_ms=500"]),
        ("2", ["interval_ms=500"]),
        ("3", ["bogus=1"]),
        ("4", ["interval_ms=600000"]),  # Hangs: no heartbeat within the deadline.
    ):
        custom = target_custom(version=version, kind="xen", mem_mb=8, args=args)
        repo.add_target(ticker, "ticker", custom)
        if version == "4":
            # A guest that floods its console (1 MiB through the Xen console ring), then exits 0.
            flood = target_custom(version="1", kind="xen", mem_mb=8, args=[])
            repo.add_target(IMAGES / "hostile-flood.xen", "flood", flood)
        for sub in ("metadata", "targets"):
            shutil.copytree(tmp / "repo" / sub, stages / f"v{version}" / sub)
    return stages, repo.root_path, squat_domain


def _ticker(mark: str) -> dict[str, object]:
    """The ticker entry of the agent's /status that ota_scenario.py printed in a phase line."""
    doc = json.loads(mark.split("ticker=", 1)[1].rsplit(" uptime=", 1)[0])
    assert isinstance(doc, dict)
    return doc


def test_agent_runs_updates_rolls_back_and_refuses_a_squatted_domain_name_in_dom0(
    tmp_path: Path,
) -> None:
    _require()
    stages, root, squat = _stages(tmp_path)
    (tmp_path / "agent.toml").write_text(AGENT_TOML)
    (tmp_path / "scenario.json").write_text(json.dumps({"squat_domain": squat}))
    files = {
        "stage": stages,
        "root.json": root,
        "agent.toml": tmp_path / "agent.toml",
        "hello.xen": IMAGES / "hello.xen",
        "ticker.xen": IMAGES / "ticker.xen",
        "scenario.json": tmp_path / "scenario.json",
        "ota_scenario.py": TESTBED / "ota_scenario.py",
        "vmlinuz": TESTBED / "out" / "vmlinuz",
        "guest-initrd.cpio": TESTBED / "out" / "guest-initrd.cpio",
    }
    script = guest_script([linux_guest()]) + "python3 /testbed/ota_scenario.py\n"

    guests: dict[str, str] = {}
    marks: dict[str, str] = {}
    healthy: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.monotonic()
    for t, line in boot(tmp_path / "vm", script, files, deadline_s=DEADLINE_S):
        lines.append(line)
        if line.startswith(("XTB: ", "XTB-BOOT")):
            print(f"[{t:6.1f}] {line}", flush=True)
        if m := GUEST_RE.search(line):
            guests[m.group(1)] = m.group(2)
        for key in (
            "boot hello exit=",
            "phase v1 ",
            "phase squat-refused ",
            "phase v2 ",
            "phase v3-rolled-back ",
            "phase v4-hang-rolled-back ",
            "phase flood-done ",
            "flood console log bytes=",
            "phase restart ",
            "after restart ",
        ):
            if line.startswith("XTB: " + key):
                marks[key.strip()] = line
        if line.startswith("XTB: domains after agent stop:"):
            marks["domains"] = line
        if line.startswith("XTB: scenario "):
            marks["scenario"] = line
        doc = status_line(line)
        if doc is not None and workload_healthy(doc, "ticker"):
            for w in doc["workloads"]:  # type: ignore[attr-defined]
                if w.get("name") == "ticker":
                    healthy.setdefault(str(w.get("version")), t)
    print(f"test bed run: {time.monotonic() - t0:.0f} s; healthy at {healthy}")
    tail = "\n".join(lines[-60:])

    assert guests.get("linux-pv") == "poweroff", f"Linux PV control guest: {guests}\n{tail}"
    assert marks.get("boot hello exit=", "").startswith("XTB: boot hello exit=0 "), tail
    assert any(ln.startswith("XTB-BOOT hello:") and "SUCCESS" in ln for ln in lines), tail
    assert " ok " in marks.get("phase v1", ""), f"ticker v1 never healthy:\n{tail}"
    # Name collision: the agent refused to start `squat` and left the foreign domain alone.
    assert marks.get("phase squat-refused", "").startswith("XTB: phase squat-refused ok"), tail
    assert " ok " in marks.get("phase v2", ""), f"ticker v2 not committed:\n{tail}"
    assert " ok " in marks.get("phase v3-rolled-back", ""), f"v3 not rolled back:\n{tail}"
    # The agent's own JSON status lines on the serial console showed v1 and v2 healthy.
    assert "1" in healthy, f"status lines: {healthy}\n{tail}"
    assert "2" in healthy, f"status lines: {healthy}\n{tail}"
    # The runner streamed the guest's console into the agent's heartbeat check.
    assert _ticker(marks["phase v1"])["last_heartbeat_ts"] is not None
    v3 = _ticker(marks["phase v3-rolled-back"])
    assert v3["version"] == "2", v3
    assert "3" in v3["bad_versions"], v3  # type: ignore[operator]
    # A guest that hangs (no heartbeat within the deadline) is rolled back like a crashing one.
    assert " ok " in marks.get("phase v4-hang-rolled-back", ""), f"v4 not rolled back:\n{tail}"
    v4 = _ticker(marks["phase v4-hang-rolled-back"])
    assert v4["version"] == "2", v4
    assert "4" in v4["bad_versions"], v4  # type: ignore[operator]
    # A guest flooding its console (1 MiB) ran to its end; the agent kept its log bounded (the
    # console file is rotated at 64 KiB: at most two files on disk).
    assert " ok " in marks.get("phase flood-done", ""), f"flood never finished:\n{tail}"
    flood_bytes = int(marks["flood console log bytes="].split("bytes=")[1].split()[0])
    assert 0 < flood_bytes <= 2 * 64 * 1024 + 4096, flood_bytes
    # An agent killed with SIGKILL and started again runs v2 in exactly one domain.
    assert " ok " in marks.get("phase restart", ""), f"no v2 after an agent restart:\n{tail}"
    assert (
        len(marks.get("after restart", "").split("ticker domains=")[1].split(" all=")[0].split())
        == 1
    )
    # Stopping the agent stopped its domains; the foreign one it never created is still there.
    left = marks.get("domains", "XTB: none:").split(":", 2)[2].split()
    assert sorted(d for d in left if not d.startswith("uptime=")) == ["Domain-0", squat], left
    assert "scenario ok" in marks.get("scenario", ""), tail

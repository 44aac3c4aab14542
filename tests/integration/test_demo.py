"""`make demo` end to end: ``scripts/demo.py`` in a temporary DEMO_DIR, real KVM guests.

The demo itself fails loudly (exit 1, agent log tail) when a step does not converge; this test
asserts that it exits 0, that the final state it saved is "ticker v2 running after the v3
rollback, kvstore v1 done", and that it left no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.agentkit import REPO_ROOT, image

pytestmark = pytest.mark.kvm

DEMO_SCRIPT = REPO_ROOT / "scripts" / "demo.py"


def _images(tmp_path: Path) -> Path:
    out = REPO_ROOT / "image-recipes" / "out"
    if (out / "ticker.hvt").exists() and (out / "kvstore.hvt").exists():
        return out
    built = tmp_path / "images"
    built.mkdir()
    for name in ("ticker", "kvstore"):
        (built / f"{name}.hvt").write_bytes(image(name, tmp_path).read_bytes())
    return built


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(cmd)
    return found


def test_demo_ends_with_v2_running_after_the_v3_rollback(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_dir),
        "DEMO_IMAGES": str(_images(tmp_path)),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    final = json.loads((demo_dir / "final-status.json").read_text())
    workloads = {w["name"]: w for w in final["workloads"]}
    ticker, kvstore = workloads["ticker"], workloads["kvstore"]
    assert (ticker["version"], ticker["state"]) == ("2", "running")
    assert ticker["previous_version"] == "1"
    assert ticker["bad_versions"] == ["3"]
    assert kvstore["version"] == "1"
    assert (kvstore["state"], kvstore["last_exit_status"]) == ("stopped", 0)

    # Every step was printed with its timing, the serial status line and /status were shown.
    assert output.count("==> ") >= 7
    assert '{"edgeagent":"status"' in output
    assert "/status (abridged)" in output
    assert "agent: stopped" in output
    # Nothing left running: the agent, its guests and the registry server are gone.
    assert _processes_mentioning(str(demo_dir)) == []
    # The demo's own folder holds the demo keys, not the checkout's demo/.
    assert (demo_dir / "registry" / "keys").is_dir()
    assert (demo_dir / "DEMO-KEYS-README.txt").exists()


def test_demo_fails_loudly_with_the_agent_log_when_a_step_does_not_converge(
    tmp_path: Path,
) -> None:
    # A "ticker" that is not an image: the agent refuses to boot it, and v1 never runs.
    images = tmp_path / "images"
    images.mkdir()
    (images / "ticker.hvt").write_bytes(b"not an ELF image\n" * 64)
    (images / "kvstore.hvt").write_bytes(_images(tmp_path).joinpath("kvstore.hvt").read_bytes())
    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_dir),
        "DEMO_IMAGES": str(images),
        "DEMO_STEP_TIMEOUT_S": "4",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "demo: FAILED" in proc.stderr
    assert "timed out after 4 s waiting for: ticker v1 running" in proc.stderr
    assert "agent log tail" in proc.stderr
    assert "ticker" in proc.stderr.split("agent log tail", 1)[1]
    assert not (demo_dir / "final-status.json").exists()
    assert _processes_mentioning(str(demo_dir)) == []

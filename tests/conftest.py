"""Shared pytest configuration.

- Tests marked ``kvm`` are skipped, with a visible reason, only when /dev/kvm is missing or
  not read-write; the terminal summary says so in one line.
- Tests marked ``netns`` are skipped when we are not root (network namespaces need it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KVM_OK = os.access("/dev/kvm", os.R_OK | os.W_OK)
KVM_SKIP_REASON = "/dev/kvm is missing or not read-write on this machine"
IS_ROOT = os.geteuid() == 0

_kvm_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "kvm" in item.keywords and not KVM_OK:
            item.add_marker(pytest.mark.skip(reason=KVM_SKIP_REASON))
            _kvm_skipped.append(item.nodeid)
        if "netns" in item.keywords and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="network namespaces need root"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _kvm_skipped:
        terminalreporter.write_line(
            f"KVM: {len(_kvm_skipped)} KVM tests SKIPPED because {KVM_SKIP_REASON}",
            yellow=True,
        )
    else:
        terminalreporter.write_line("KVM: /dev/kvm available; KVM tests ran")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT

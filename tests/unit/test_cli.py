"""The CLI's top level: help, version, usage errors."""

from __future__ import annotations

import pytest

from edgeagent import __version__
from edgeagent.cli import EXIT_USAGE, main


def test_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_exits_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "usage: edgeagent" in capsys.readouterr().out

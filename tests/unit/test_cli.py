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


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in (
        "repo",
        "pull",
        "store",
        "tuf-client",
        "build",
        "boot",
        "agent",
        "console",
        "flash",
    ):
        assert name in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_chosen_command_imports_only_its_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from edgeagent import cli; cli.build_parser(['-v', 'pull', 'x']); "
        "print('edgeagent.commands.agent' in sys.modules, 'edgeagent.commands.pull' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]

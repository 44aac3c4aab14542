"""`edgeagent boot` argument handling and pre-boot errors (no VM is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.cli import EXIT_FAILURE, EXIT_USAGE, main


@pytest.fixture
def multiboot_image(tmp_path: Path) -> str:
    flags = 0x10003
    header = (0x1BADB002).to_bytes(4, "little") + flags.to_bytes(4, "little")
    header += ((-(0x1BADB002 + flags)) & 0xFFFFFFFF).to_bytes(4, "little")
    path = tmp_path / "k.bin"
    path.write_bytes(header + bytes(64))
    return str(path)


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["boot", "--help"])
    out = capsys.readouterr().out
    assert "242 guest ABI" in " ".join(out.split())
    assert "--block NAME=PATH" in out


@pytest.mark.parametrize("option", ["--block", "--net"])
@pytest.mark.parametrize("value", ["nameonly", "=x", "x="])
def test_malformed_device_option_is_a_usage_error(
    multiboot_image: str, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["boot", multiboot_image, option, value]) == EXIT_USAGE
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_option_injection_through_a_device_name_is_refused(
    multiboot_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["boot", multiboot_image, "--block", "a,file=/etc/shadow=x"]) == EXIT_USAGE
    assert "device name" in capsys.readouterr().err


def test_memory_out_of_range_is_a_usage_error(
    multiboot_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["boot", "--mem", "0", multiboot_image]) == EXIT_USAGE
    assert "mem_mb=0" in capsys.readouterr().err


def test_directory_is_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", str(tmp_path)]) == EXIT_FAILURE
    assert "is a directory" in capsys.readouterr().err


def test_missing_qemu_is_named(multiboot_image: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--accel", "tcg", "--qemu", "no-such-qemu", multiboot_image]) == 1
    assert "no-such-qemu not found" in capsys.readouterr().err

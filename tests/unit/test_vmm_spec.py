"""VM specs: runner command lines, accelerator choice and exit-status decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import ConfigError, KvmUnavailableError
from edgeagent.vmm.spec import (
    ExitInfo,
    VmSpec,
    describe_exit,
    qemu_argv,
    resolve_accel,
    tender_argv,
)


def test_tender_argv_is_solo5_style_with_events_fd() -> None:
    spec = VmSpec(
        image="kv.hvt",
        kind="hvt",
        mem_mb=4,
        blocks=(("storage", "/tmp/disk"),),
        nets=(("service", "tap0"),),
        args=("put", "k", "v"),
    )
    assert tender_argv(spec, tender="/t/edge-tender", events_fd=7) == [
        "/t/edge-tender",
        "--mem=4",
        "--block:storage=/tmp/disk",
        "--net:service=tap0",
        "--events-fd=7",
        "--",
        "kv.hvt",
        "put",
        "k",
        "v",
    ]


def test_tender_argv_image_starting_with_dash_is_not_an_option() -> None:
    argv = tender_argv(VmSpec(image="-evil.hvt", kind="hvt"), tender="t")
    assert argv == ["t", "--", "-evil.hvt"]


def test_qemu_argv_under_kvm() -> None:
    spec = VmSpec(image="hello.qemu", kind="multiboot", args=("a", "b"))
    assert qemu_argv(spec, qemu="qemu", accel="kvm") == [
        "qemu",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "128",
        "-nographic",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-nic",
        "none",
        "-kernel",
        "hello.qemu",
        "-append",
        "a b",
    ]


def test_qemu_argv_under_tcg_with_devices_escapes_commas() -> None:
    spec = VmSpec(
        image="k", kind="linux", mem_mb=64, blocks=(("d0", "/x,y"),), nets=(("n0", "tap1"),)
    )
    argv = qemu_argv(spec, qemu="q", accel="tcg")
    assert argv[1:5] == ["-accel", "tcg", "-cpu", "max"]
    assert argv[argv.index("-m") + 1] == "64"
    assert "id=d0,file=/x,,y,format=raw,if=virtio" in argv
    assert "tap,id=n0,ifname=tap1,script=no,downscript=no" in argv
    assert "-append" not in argv
    assert "none" not in argv[argv.index("-device") + 2 :]


def test_runner_argv_refuses_the_wrong_kind() -> None:
    with pytest.raises(ValueError, match="not hvt"):
        tender_argv(VmSpec(image="k", kind="pvh"), tender="t")
    with pytest.raises(ValueError, match="edge-tender"):
        qemu_argv(VmSpec(image="k", kind="hvt"), qemu="q", accel="kvm")


@pytest.mark.parametrize(
    ("requested", "kind", "kvm", "expected"),
    [
        ("auto", "multiboot", True, "kvm"),
        ("auto", "multiboot", False, "tcg"),
        ("tcg", "linux", True, "tcg"),
        ("kvm", "pvh", True, "kvm"),
        ("auto", "hvt", True, "kvm"),
        ("kvm", "hvt", True, "kvm"),
    ],
)
def test_resolve_accel(requested: str, kind: str, kvm: bool, expected: str) -> None:
    assert resolve_accel(requested, kind=kind, kvm_usable=kvm) == expected  # type: ignore[arg-type]


def test_hvt_without_kvm_is_refused() -> None:
    with pytest.raises(KvmUnavailableError, match="hvt images need KVM"):
        resolve_accel("auto", kind="hvt", kvm_usable=False)


def test_hvt_under_tcg_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="--accel tcg"):
        resolve_accel("tcg", kind="hvt", kvm_usable=True)


def test_explicit_kvm_without_kvm_is_refused() -> None:
    with pytest.raises(KvmUnavailableError, match="--accel kvm"):
        resolve_accel("kvm", kind="multiboot", kvm_usable=False)


@pytest.mark.parametrize("mem", [0, -1, 4097])
def test_spec_rejects_memory_out_of_range(mem: int) -> None:
    with pytest.raises(ConfigError, match=f"mem_mb={mem}: expected 1..4096"):
        VmSpec(image="i", kind="hvt", mem_mb=mem)


@pytest.mark.parametrize("name", ["", "a=b", "a:b", "a,b", "a b", "x" * 68])
def test_spec_rejects_device_names_that_would_inject_options(name: str) -> None:
    with pytest.raises(ConfigError, match="device name"):
        VmSpec(image="i", kind="hvt", blocks=((name, "/p"),))


def test_spec_rejects_duplicate_device_names() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        VmSpec(image="i", kind="hvt", blocks=(("d", "/p"),), nets=(("d", "tap0"),))


def test_spec_rejects_empty_device_target() -> None:
    with pytest.raises(ConfigError, match="empty path"):
        VmSpec(image="i", kind="hvt", nets=(("n", ""),))


# Exit decoding: the tender's contract (host-os/tender/README.md).


@pytest.mark.parametrize("status", [0, 1, 7, 239])
def test_tender_guest_statuses_pass_through(status: int) -> None:
    assert describe_exit("tender", status) == ExitInfo(
        status, "halt", f"the guest exited with status {status}", status
    )


def test_tender_guest_abort_is_255() -> None:
    info = describe_exit("tender", 255)
    assert (info.guest_status, info.reason, info.exit_status) == (255, "abort", 255)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(240, "usage"), (241, "setup"), (242, "abi"), (243, "kvm"), (244, "signal"), (245, "io")],
)
def test_tender_reserved_statuses_are_not_guest_statuses(status: int, reason: str) -> None:
    info = describe_exit("tender", status)
    assert (info.guest_status, info.reason, info.exit_status) == (None, reason, status)
    assert f"({status})" in info.message


def test_killed_runner_is_a_signal_exit() -> None:
    info = describe_exit("tender", -9)
    assert (info.guest_status, info.reason, info.exit_status) == (None, "signal", 244)
    assert "signal 9" in info.message


@pytest.mark.parametrize(("code", "guest"), [(1, 0), (3, 1), (85, 42), (253, 126)])
def test_qemu_debug_exit_codes_map_back(code: int, guest: int) -> None:
    info = describe_exit("qemu", code)
    assert (info.guest_status, info.reason, info.exit_status) == (guest, "halt", guest)


def test_qemu_debug_exit_of_guest_abort() -> None:
    info = describe_exit("qemu", 255)
    assert (info.guest_status, info.reason, info.exit_status) == (255, "abort", 255)


def test_qemu_normal_exit_is_a_shutdown() -> None:
    info = describe_exit("qemu", 0)
    assert (info.guest_status, info.reason, info.exit_status) == (0, "shutdown", 0)


def test_qemu_startup_failure_is_not_mistaken_for_guest_status_0() -> None:
    info = describe_exit("qemu", 1, qemu_error="qemu: could not open kernel file 'x'")
    assert (info.guest_status, info.reason, info.exit_status) == (None, "setup", 241)
    assert "could not open kernel file" in info.message


@given(st.integers(-64, 255), st.sampled_from(["tender", "qemu"]))
def test_every_status_decodes_to_a_byte(status: int, runner: str) -> None:
    info = describe_exit(runner, status)  # type: ignore[arg-type]
    assert 0 <= info.exit_status <= 255
    assert info.message

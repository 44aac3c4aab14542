"""Registry protocol (pure): URL layout, size caps and target name rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.registry import protocol
from edgeagent.registry.protocol import RegistryLayout


def test_registry_layout_urls() -> None:
    lay = RegistryLayout.from_registry("http://h:1")
    assert lay.metadata("root", 3) == "http://h:1/metadata/3.root.json"
    assert lay.metadata("timestamp") == "http://h:1/metadata/timestamp.json"
    assert lay.target("app", "ab", consistent=True) == "http://h:1/targets/ab.app"
    assert lay.target("dir/app", "ab", consistent=True) == "http://h:1/targets/dir/ab.app"
    assert lay.target("app", "ab", consistent=False) == "http://h:1/targets/app"


def test_delegated_role_names_are_quoted_in_urls() -> None:
    lay = RegistryLayout.from_urls("http://h/m", "http://h/t")
    assert lay.metadata("a/b", 1) == "http://h/m/1.a%2Fb.json"


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\\b", "..", ".", "", "a\x00b", "-rf", "x\n"])
def test_rejects_target_name_with_path_separator_or_tricks(name: str) -> None:
    with pytest.raises(ValueError, match="target name"):
        protocol.validate_target_name(name)


def test_accepts_plain_target_names() -> None:
    assert protocol.validate_target_name("hello-1.0_x86.hvt") == "hello-1.0_x86.hvt"


@given(st.text(min_size=1, max_size=50))
def test_local_file_name_never_has_separators(path: str) -> None:
    try:
        name = protocol.local_file_name(path)
    except ValueError:
        return
    assert "/" not in name
    assert "\x00" not in name
    assert name not in {".", ".."}


def test_caps_per_role() -> None:
    assert protocol.max_metadata_bytes("timestamp") < protocol.max_metadata_bytes("root")
    assert protocol.max_metadata_bytes("fleet") == protocol.MAX_TARGETS_BYTES

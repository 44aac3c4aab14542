"""Shared helpers for the image tests: build every recipe once per test session.

Imported by test_build.py and test_images_boot.py. It is not a conftest.py so that other
integration tests do not pay for building images they do not use.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeagent.build import BuiltImage, build_image

REPO = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO / "image-recipes"
TENDER = REPO / "host-os" / "tender" / "edge-tender"

_PLATFORMS_RE = re.compile(r"^platforms\s*=\s*\[(.*)\]", re.MULTILINE)
_cache: dict[str, BuiltImage] = {}


def all_targets() -> list[tuple[str, str]]:
    """(recipe name, platform) for every shipped recipe, from its platforms line."""
    out: list[tuple[str, str]] = []
    for toml in sorted(RECIPES_DIR.glob("*/recipe.toml")):
        m = _PLATFORMS_RE.search(toml.read_text())
        assert m, f"{toml}: no platforms line"
        out.extend((toml.parent.name, plat) for plat in re.findall(r'"([a-z]+)"', m.group(1)))
    return out


@pytest.fixture(scope="session", name="built")
def built_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltImage]:
    """Every recipe built for every platform into a temporary folder (once per session)."""
    if not _cache:
        out = tmp_path_factory.mktemp("images")
        for name, plat in all_targets():
            _cache[f"{name}.{plat}"] = build_image(RECIPES_DIR / name, plat, out / f"{name}.{plat}")
    return _cache

"""Style as tests: pure decision modules import no I/O, no trio, no clock, no randomness.

A module is pure when it is listed in PURE_MODULES or when the first line of its docstring says
``[pure]`` (house style §2/§3). The test parses each such module's AST and fails on a banned
import, so a decision core cannot quietly grow I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "edgeagent"

# Pure modules that must exist (a missing one is a failure, not a skip).
PURE_MODULES = {
    "config.py",
    "recipe.py",
    "buildplan.py",
    "publisher/policy.py",
    "registry/server_core.py",
    "registry/protocol.py",
    "verify/trust.py",
    "store/layout.py",
    "vmm/spec.py",
    "vmm/imageformat.py",
}

BANNED = {"trio", "socket", "subprocess", "os", "time", "random", "httpx", "shutil", "pathlib"}


def _declared_pure() -> set[str]:
    found = set()
    for path in PKG.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "[pure]" in doc.splitlines()[0] if doc else False:
            found.add(str(path.relative_to(PKG)))
    return found


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("name", sorted(PURE_MODULES | _declared_pure()))
def test_pure_module_has_no_io_imports(name: str) -> None:
    path = PKG / name
    assert path.exists(), f"{path} is listed as a pure module but does not exist"
    tree = ast.parse(path.read_text(), filename=str(path))
    banned = _imports(tree) & BANNED
    assert not banned, f"{path}: pure module imports {sorted(banned)}"

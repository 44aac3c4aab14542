"""Run every benchmark and put their tables into the README.

Each ``bench/bench_*.py`` module has a ``main(argv)`` that measures, writes
``bench/results/<name>.json`` and ``bench/results/<name>.md`` (a markdown table with
ratios against the peer measured in the same run). This script runs them in order,
then replaces the README section between the bench markers with the tables.

It measures nothing itself and never edits a number.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def _load(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load benchmark module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def update_readme() -> None:
    """Replace the README's bench section with every table in bench/results/."""
    tables = [md.read_text().strip() for md in sorted(RESULTS.glob("*.md"))]
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print("README.md has no bench markers; not updating it", file=sys.stderr)
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = "\n\n".join(tables) if tables else "_No results yet: run `make bench`._"
    readme.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"==> README.md benchmark section updated from {len(tables)} result tables")


def main(argv: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    only = set(argv)
    failed = []
    for path in sorted((ROOT / "bench").glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"==> bench {name}", flush=True)
        try:
            rc = _load(path).main([])  # type: ignore[attr-defined]
        except Exception:
            traceback.print_exc()
            rc = 1
        if rc:
            failed.append(name)
    update_readme()
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

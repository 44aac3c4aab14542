"""``edgeagent build``: build a guest image from image-recipes/<name> (see edgeagent.build).

Prints one progress line per step on stderr and, on success, ``sha256 <hex>  <path>`` on
stdout. Exit status: 0 built, 2 invalid recipe or arguments, 1 build failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeagent.build import build_image
from edgeagent.recipe import PLATFORMS


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _handle(args: argparse.Namespace) -> int:
    built = build_image(
        Path(args.recipe),
        platform=args.platform,
        output=Path(args.output) if args.output else None,
        progress=None if args.quiet else _progress,
    )
    print(f"sha256 {built.sha256}  {built.path}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``build`` subcommand."""
    p = sub.add_parser(
        "build",
        help="build a guest image from an image recipe (offline, reproducible)",
        description=(
            "Build the guest image described by RECIPE_DIR/recipe.toml with gcc and binutils, "
            "offline. Builds are reproducible: the same recipe gives byte-identical output, "
            "whatever the checkout path. Prints 'sha256 <hex>  <path>' when done."
        ),
    )
    p.add_argument("recipe", metavar="RECIPE_DIR", help="the recipe folder, image-recipes/<name>")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="image path (default: image-recipes/out/<name>.<platform>)",
    )
    p.add_argument(
        "--platform",
        choices=PLATFORMS,
        help="hvt (edge-tender), qemu (multiboot, QEMU -kernel) or xen (a Xen PVH guest for "
        "xl create); default: the recipe's first",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_handle)

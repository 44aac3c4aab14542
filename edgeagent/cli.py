"""Command-line entry point: argv -> subcommand handler -> exit status.

This is the only place that configures logging and turns errors into exit codes.
It does not implement any command itself: each lives in `edgeagent.commands`.

Exit codes (stable; scripts rely on them):

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     failure: verification, fetch, VM or any other `EdgeAgentError`
2     usage error (bad arguments) or `ConfigError` (malformed config/recipe)
130   interrupted (SIGINT)
====  =====================================================================

Commands that run a guest (``edgeagent boot``) exit with the guest's status instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from edgeagent import __version__
from edgeagent.errors import ConfigError, EdgeAgentError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Each module in edgeagent.commands registers one top-level subcommand (or a group).
COMMAND_MODULES: tuple[str, ...] = (
    "repo",
    "pull",
    "store",
    "tuf_client",
    "build",
    "boot",
    "agent",
    "console",
    "flash",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edgeagent",
        description=(
            "edgeagent: pull signed unikernel images from a TUF registry, verify them, "
            "boot them under KVM and supervise them; plus the publisher's tools."
        ),
    )
    parser.add_argument("--version", action="version", version=f"edgeagent {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"edgeagent.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgeagent.commands.{name}":
                continue  # Command not built yet in this checkout.
            raise
        module.register(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except ConfigError as exc:
        print(f"edgeagent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeAgentError as exc:
        print(f"edgeagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("edgeagent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

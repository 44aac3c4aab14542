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

# Each module in edgeagent.commands registers one top-level subcommand (or a group), keyed
# here by the command name a user types. Only the chosen command's module is imported, so a
# command does not pay for the imports of all the others (trio, tuf, cryptography, ...).
COMMANDS: dict[str, str] = {
    "repo": "repo",
    "pull": "pull",
    "store": "store",
    "tuf-client": "tuf_client",
    "build": "build",
    "boot": "boot",
    "agent": "agent",
    "console": "console",
    "flash": "flash",
}
COMMAND_MODULES: tuple[str, ...] = tuple(COMMANDS.values())

Handler = Callable[[argparse.Namespace], int]


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (the first word that is not a global option), if known."""
    for word in argv:
        if word in ("-v", "--verbose") or (word.startswith("-v") and set(word[1:]) == {"v"}):
            continue
        return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser.

    Args:
        argv: the arguments about to be parsed; when they name a known command, only that
            command's module is imported and registered. ``None`` registers every command.
    """
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
    chosen = _chosen_command(argv) if argv is not None else None
    names = [COMMANDS[chosen]] if chosen else list(COMMAND_MODULES)
    for name in names:
        module = importlib.import_module(f"edgeagent.commands.{name}")
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
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
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

"""``edgeagent console``: the operator's client for an agent's diagnostics console.

What it does: parses arguments and calls `edgeagent.console.client.main`. One-shot mode
(``-c COMMAND``, repeatable) prints each reply (text, or one JSON object per line with
``--json``) and exits 0 when every reply is ok, 1 otherwise; without ``-c`` it is
interactive (stdin lines to the port, the port to stdout).

What it does not do: any console logic; the agent answers, the client only frames.

Exit status: 0 all replies ok; 1 a reply with ``"ok": false``, no reply in time, or the port
cannot be opened; 2 bad arguments.
"""

from __future__ import annotations

import argparse

from edgeagent.console.client import main as client_main


def _handler(args: argparse.Namespace) -> int:
    return client_main(
        args.port,
        args.command,
        baud=args.baud,
        as_json=args.json,
        auto_confirm=args.yes,
        timeout_s=args.timeout,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``console`` options to ``parser``."""
    parser.add_argument(
        "port",
        metavar="PORT",
        help="serial port path (/dev/ttyUSB0) or pyserial URL (socket://127.0.0.1:7000)",
    )
    parser.add_argument(
        "-c",
        "--command",
        action="append",
        default=[],
        metavar="COMMAND",
        help="run COMMAND and print its reply (repeatable, run in order); "
        "without -c the console is interactive",
    )
    parser.add_argument(
        "--json", action="store_true", help="print replies as one JSON object per line"
    )
    parser.add_argument("--baud", type=int, default=115200, help="baud rate (default 115200)")
    parser.add_argument(
        "--yes",
        action="store_true",
        help="answer confirmation requests of restart/update/rollback automatically",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=40.0,
        metavar="S",
        help="seconds to wait for each reply (default 40)",
    )
    parser.set_defaults(func=_handler)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``console`` subcommand."""
    parser = sub.add_parser(
        "console",
        help="talk to an agent's diagnostics console (serial port or socket://HOST:PORT)",
        description=(
            "Open the agent's diagnostics console on PORT (a serial device, or "
            "socket://HOST:PORT for the agent's TCP console) and run commands: help, status, "
            "vms, logs NAME [-n N], restart NAME, update, rollback NAME, trust, net, version. "
            "With -c the replies are printed and the exit status is 0 when all succeeded; "
            "without -c, stdin lines are sent and the console's output is printed."
        ),
        epilog=(
            "Examples: edgeagent console /dev/ttyUSB0 -c status; "
            "edgeagent console socket://127.0.0.1:7000 -c vms --json; "
            "edgeagent console /dev/ttyUSB0 -c 'restart ticker' --yes"
        ),
    )
    add_arguments(parser)

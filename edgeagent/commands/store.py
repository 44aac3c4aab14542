"""``edgeagent store``: look after the content-addressed store (``gc``, ``ls``).

What it does: ``store gc`` opens the store (lock + garbage scan) and deletes every blob that no
target name points at (the index keeps the current and previous version of each name), printing
each deleted path; ``store ls`` prints one line per recorded version:
``NAME current|previous VERSION LENGTH sha256:HEX``. What it does not do: download or verify
(``edgeagent pull`` does), or delete blobs still referenced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeagent.store.cas import Store


def _gc(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store), scan=False) as store:
        for rel in store.scan(gc=True):
            print(store.root / rel)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store), scan=False) as store:
        for name, entries in sorted(store.index().items()):
            for i, e in enumerate(entries):
                which = "current" if i == 0 else "previous"
                print(f"{name} {which} {e.version or '-'} {e.length} sha256:{e.sha256}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``edgeagent store gc`` and ``edgeagent store ls``."""
    p = sub.add_parser(
        "store",
        help="inspect or garbage-collect the content-addressed store",
        description="Housekeeping for the store folder that `edgeagent pull` fills.",
    )
    ss = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    gc = ss.add_parser(
        "gc",
        help="delete garbage and blobs no target points at",
        description=(
            "Delete unverified leftovers and garbage, and every blob that is neither the current "
            "nor the previous version of some target name. Prints each deleted path."
        ),
    )
    gc.add_argument("--store", required=True, metavar="DIR", help="store folder")
    gc.set_defaults(func=_gc)
    ls = ss.add_parser(
        "ls",
        help="list target names and the blobs they point at",
        description="Print NAME current|previous VERSION LENGTH sha256:HEX per recorded version.",
    )
    ls.add_argument("--store", required=True, metavar="DIR", help="store folder")
    ls.set_defaults(func=_ls)

"""``edgeagent tuf-client``: the TUF conformance suite's client-under-test CLI.

Follows theupdateframework/tuf-conformance CLIENT-CLI.md; options always come before the
subcommand::

    edgeagent tuf-client --metadata-dir DIR init TRUSTED_ROOT
    edgeagent tuf-client --metadata-url URL --metadata-dir DIR refresh
    edgeagent tuf-client --metadata-url URL --metadata-dir DIR --target-name PATH \\
        [--target-name PATH ...] --target-dir DIR --target-base-url URL download

What it does: runs the same `edgeagent.client.updater.Updater` as ``edgeagent pull``, with the
system clock (so ``faketime`` works) instead of the trusted clock. ``METADATA_DIR`` holds only
trusted metadata under non-versioned names (``root.json``, ``timestamp.json``, ``snapshot.json``,
``targets.json``, ``ROLE.json``), each exactly the bytes the server sent. Downloads go through
a private content-addressed store in ``METADATA_DIR/edgeagent-store/`` (not ``*.json``) and are
copied into ``TARGET_DIR`` (under the URL-quoted target path, the same name for the same path)
only after verification, by temporary file + rename; a file already there with matching hashes
is not downloaded again. Targets are processed in order, stopping at the first failure.

What it does not do: no trust logic of its own. Exit status 0 on full success, 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import trio

from edgeagent.client.updater import MetadataDir, Updater
from edgeagent.errors import EdgeAgentError, StoreError, VerificationError
from edgeagent.registry.fetch import FetchConfig, HttpxFetcher
from edgeagent.registry.protocol import RegistryLayout, local_file_name
from edgeagent.store.cas import Store
from edgeagent.store.layout import Entry
from edgeagent.verify.clock import SystemClock

log = logging.getLogger(__name__)

STORE_SUBDIR = "edgeagent-store"
EXIT_FAILURE = 1


def _init(metadata_dir: Path, trusted_root: Path) -> None:
    # No checks here (CLIENT-CLI.md): the caller vouches for it; `refresh` verifies it is a
    # root signed by a threshold of its own keys before using it.
    MetadataDir(metadata_dir).save("root", trusted_root.read_bytes())


def _matches(path: Path, sha256: str, length: int) -> bool:
    try:
        if path.stat().st_size != length:
            return False
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                h.update(block)
    except OSError:
        return False
    return h.hexdigest() == sha256


def _copy_into(blob: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        shutil.copyfile(blob, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


async def _run(args: argparse.Namespace, *, download: bool) -> None:
    metadata_dir = Path(args.metadata_dir)
    store_dir = metadata_dir / STORE_SUBDIR
    # refresh never touches targets: any base will do when none is given.
    targets_url = args.target_base_url or args.metadata_url
    layout = RegistryLayout.from_urls(args.metadata_url, targets_url)
    with Store.open(store_dir) as store:
        async with HttpxFetcher(FetchConfig()) as fetcher:
            updater = Updater(MetadataDir(metadata_dir), layout, fetcher, store, SystemClock())
            await updater.refresh()
            if not download:
                return
            target_dir = Path(args.target_dir)
            for path in args.target_name:
                info = await updater.get_target_info(path)
                if info is None:
                    raise VerificationError(f"target {path}: not listed by any trusted role")
                ref = updater.blob_ref(info)
                dest = target_dir / local_file_name(path)
                if await trio.to_thread.run_sync(_matches, dest, ref.sha256, ref.length):
                    log.info("target %s: already present and matching", path)
                    continue
                blob = await updater.download_target(info)
                store.record(local_file_name(path), Entry(ref.sha256, ref.length, ""))
                await trio.to_thread.run_sync(_copy_into, blob, dest)
            store.scan(gc=True)


def _handle(args: argparse.Namespace) -> int:
    try:
        if args.tuf_command == "init":
            _init(Path(args.metadata_dir), Path(args.trusted_root))
            return 0
        if not args.metadata_url:
            raise StoreError("--metadata-url is required for refresh and download")
        download = args.tuf_command == "download"
        if download and not (args.target_name and args.target_dir and args.target_base_url):
            raise StoreError("download needs --target-name, --target-dir and --target-base-url")
        trio.run(lambda: _run(args, download=download))
    except (EdgeAgentError, OSError) as exc:
        print(f"edgeagent tuf-client: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``edgeagent tuf-client``."""
    p = sub.add_parser(
        "tuf-client",
        help="TUF conformance client-under-test CLI (init, refresh, download)",
        description=(
            "A TUF client following the tuf-conformance CLIENT-CLI.md protocol. Options come "
            "before the subcommand. Exit 0 on full success, 1 on any failure."
        ),
    )
    p.add_argument(
        "--metadata-dir",
        required=True,
        metavar="DIR",
        help="trusted metadata folder (non-versioned ROLE.json files)",
    )
    p.add_argument("--metadata-url", metavar="URL", help="base URL of the repository metadata")
    p.add_argument(
        "--target-name",
        action="append",
        default=[],
        metavar="PATH",
        help="target path to download (repeatable; in order, stop at first failure)",
    )
    p.add_argument("--target-dir", metavar="DIR", help="where verified targets are stored")
    p.add_argument("--target-base-url", metavar="URL", help="base URL of the repository targets")
    ss = p.add_subparsers(dest="tuf_command", metavar="SUBCOMMAND", required=True)
    init = ss.add_parser("init", help="store TRUSTED_ROOT as the trusted root (no network)")
    init.add_argument("trusted_root", metavar="TRUSTED_ROOT", help="initial root.json")
    ss.add_parser("refresh", help="update top-level metadata (TUF client workflow)")
    ss.add_parser("download", help="refresh, then download each --target-name")
    p.set_defaults(func=_handle)

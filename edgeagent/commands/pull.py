"""``edgeagent pull``: fetch one target from a TUF registry into the store, verified.

What it does: parses arguments, opens the store (lock + garbage scan), runs the shared
`edgeagent.client.updater.Updater` with the trusted clock, records the pulled version in the
store index, runs GC (current + previous version of each name), and prints the verified blob's
path on stdout. Progress for large targets goes to stderr.

What it does not do: any trust, network or store logic of its own.

Exit status: 0 only when the bytes on disk match the signed length and SHA-256; 1 on a
verification, fetch or store failure; 2 on bad arguments (including a target name with a path
separator).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from edgeagent.client.updater import MetadataDir, Updater
from edgeagent.errors import ConfigError, VerificationError
from edgeagent.registry.fetch import FetchConfig, HttpxFetcher
from edgeagent.registry.protocol import RegistryLayout, validate_target_name
from edgeagent.store.cas import Store
from edgeagent.store.layout import Entry
from edgeagent.verify.clock import TrustedClock

PROGRESS_MIN_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class _StderrProgress:
    """Prints ``pull: NAME 40% (102/256 MiB)`` at each 10% step."""

    name: str
    last_step: int = -1

    def __call__(self, held: int, length: int) -> None:
        if length < PROGRESS_MIN_BYTES:
            return
        step = held * 10 // length
        if step != self.last_step:
            self.last_step = step
            mib = 1024 * 1024
            print(
                f"pull: {self.name} {step * 10}% ({held // mib}/{length // mib} MiB)",
                file=sys.stderr,
                flush=True,
            )


def fetch_config_from_args(args: argparse.Namespace) -> FetchConfig:
    """Build the `FetchConfig` from the shared network options."""
    base = FetchConfig()
    return FetchConfig(
        connect_timeout_s=args.connect_timeout or base.connect_timeout_s,
        read_timeout_s=args.read_timeout or base.read_timeout_s,
        metadata_timeout_s=base.metadata_timeout_s,
        min_throughput_bps=(
            args.min_throughput if args.min_throughput is not None else base.min_throughput_bps
        ),
        throughput_grace_s=(
            args.throughput_grace if args.throughput_grace is not None else base.throughput_grace_s
        ),
        retries=args.retries if args.retries is not None else base.retries,
        backoff_initial_s=base.backoff_initial_s,
        backoff_max_s=base.backoff_max_s,
    )


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """Options for the named network limits (defaults from `FetchConfig`)."""
    d = FetchConfig()
    g = parser.add_argument_group("network limits")
    g.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help=f"connect deadline per attempt (default {d.connect_timeout_s})",
    )
    g.add_argument(
        "--read-timeout",
        type=float,
        metavar="S",
        help=f"longest wait for the next bytes (default {d.read_timeout_s})",
    )
    g.add_argument(
        "--min-throughput",
        type=int,
        metavar="BPS",
        help=f"slow-retrieval floor in bytes/s (default {d.min_throughput_bps})",
    )
    g.add_argument(
        "--throughput-grace",
        type=float,
        metavar="S",
        help=f"seconds before the floor applies (default {d.throughput_grace_s})",
    )
    g.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help=f"retries after transient failures (default {d.retries})",
    )


def _signed_version(fields: dict[str, object]) -> str:
    """The publisher's ``custom.edgeagent.version`` (ADR-0003), or "" when absent."""
    custom = fields.get("custom")
    if not isinstance(custom, dict):
        return ""
    ours = custom.get("edgeagent")
    version = ours.get("version") if isinstance(ours, dict) else custom.get("version")
    return str(version) if isinstance(version, str | int) else ""


async def pull(
    registry: str,
    trust_root: bytes,
    store: Store,
    name: str,
    cfg: FetchConfig,
    *,
    progress: bool = True,
) -> Path:
    """Refresh metadata, download ``name`` into ``store`` and return the verified path.

    Raises:
        VerificationError: the target is unknown or fails verification.
        FetchError, StoreError: network or disk failures.
    """
    metadata = MetadataDir(store.metadata_dir)
    Updater.bootstrap(metadata, trust_root)
    clock = TrustedClock(store.state_dir)
    async with HttpxFetcher(cfg) as fetcher:
        updater = Updater(metadata, RegistryLayout.from_registry(registry), fetcher, store, clock)
        await updater.refresh()
        info = await updater.get_target_info(name)
        if info is None:
            raise VerificationError(f"target {name}: not listed by any trusted targets role")
        path = await updater.download_target(info, _StderrProgress(name) if progress else None)
    ref = updater.blob_ref(info)
    store.record(name, Entry(ref.sha256, ref.length, _signed_version(info.unrecognized_fields)))
    store.scan(gc=True)
    return path


def _handle(args: argparse.Namespace) -> int:
    try:
        name = validate_target_name(args.name)
    except ValueError as exc:
        raise ConfigError(f"pull: bad target name: {exc}") from exc
    trust_path = Path(args.trust)
    try:
        trust_root = trust_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{trust_path}: cannot read trusted root: {exc}") from exc
    cfg = fetch_config_from_args(args)
    with Store.open(Path(args.store)) as store:
        path = trio.run(pull, args.registry, trust_root, store, name, cfg)
    print(path.resolve())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``edgeagent pull``."""
    p = sub.add_parser(
        "pull",
        help="fetch and verify a target from a TUF registry into the store",
        description=(
            "Run the TUF client workflow against REGISTRY (metadata/ and targets/ under it), "
            "download target NAME into the content-addressed store (resuming a partial "
            "download), and print the verified file's path. Exit 0 only when the bytes on disk "
            "match the signed length and SHA-256."
        ),
    )
    p.add_argument("--registry", required=True, metavar="URL", help="registry base URL")
    p.add_argument(
        "--trust",
        required=True,
        metavar="ROOT.json",
        help="initial trusted root (used when the store has no trusted root yet)",
    )
    p.add_argument("--store", required=True, metavar="DIR", help="content-addressed store folder")
    p.add_argument("name", metavar="NAME", help="target name (one path component)")
    add_network_options(p)
    p.set_defaults(func=_handle)

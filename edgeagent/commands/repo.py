"""``edgeagent repo``: the publisher's commands (init, add, add-host, sign-manifest, rotate-key,
refresh, serve, list).

What it does: turns arguments into calls on ``edgeagent.publisher.repo.Repository`` and
``edgeagent.registry.server.serve_registry`` and prints short results on stdout. What it does
not do: any signing or HTTP logic of its own.

Output contracts (scripts and tests rely on them):

- ``repo init`` prints the trusted root path (``DIR/metadata/1.root.json``).
- ``repo add`` and ``repo add-host`` print ``NAME <length> sha256:<hex>``.
- ``repo sign-manifest`` writes OUT and prints ``OUT <entries> entries``.
- ``repo serve`` prints ``serving DIR at http://HOST:PORT/`` as its first stdout line (flushed;
  ``--listen 127.0.0.1:0`` picks a free port) and exits 0 on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import trio
from tuf.api.metadata import Signed  # type: ignore[attr-defined]  # implicit re-export

from edgeagent.errors import ConfigError, EdgeAgentError
from edgeagent.publisher.policy import (
    HOST_KINDS,
    TARGET_KINDS,
    TOP_LEVEL_ROLES,
    parse_expires_overrides,
    target_custom,
)
from edgeagent.publisher.repo import Repository
from edgeagent.registry.server import serve_registry

DEFAULT_LISTEN = "127.0.0.1:8080"


def _keys_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.keys_dir) if args.keys_dir else None


def _cmd_init(args: argparse.Namespace) -> int:
    repo = Repository.init(
        Path(args.dir),
        root_threshold=args.root_threshold,
        root_keys=args.root_keys if args.root_keys is not None else args.root_threshold,
        keys_dir=_keys_dir(args),
        expires_days=parse_expires_overrides(args.expires_days),
    )
    print(repo.root_path)
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    custom = target_custom(
        version=args.version,
        kind=args.kind,
        mem_mb=args.mem,
        args=args.arg,
        block=args.block,
        net=args.net,
        groups=args.group,
        device_ids=args.device,
    )
    repo = Repository.open(Path(args.dir), _keys_dir(args))
    target = repo.add_target(Path(args.file), args.name, custom)
    print(f"{target.path} {target.length} sha256:{target.hashes['sha256']}")
    return 0


def _cmd_add_host(args: argparse.Namespace) -> int:
    # A host slot image for A/B host OTA (issue 5 §3), published like any target.
    custom = target_custom(
        version=args.version, kind="host-slot", groups=args.group, device_ids=args.device
    )
    repo = Repository.open(Path(args.dir), _keys_dir(args))
    target = repo.add_target(Path(args.slot_image), args.name, custom)
    print(f"{target.path} {target.length} sha256:{target.hashes['sha256']}")
    return 0


def _manifest_entry(item: str, kind: str, version: str) -> tuple[str, Path, dict[str, object]]:
    name, sep, file = item.partition("=")
    if not sep:
        name, file = Path(item).name, item
    if not name or not file:
        raise ConfigError(f"manifest entry {item!r}: expected FILE or NAME=FILE")
    return name, Path(file), target_custom(version=version, kind=kind)


def _cmd_sign_manifest(args: argparse.Namespace) -> int:
    entries = [_manifest_entry(item, "host-disk", args.version) for item in args.disk]
    for name, file, _ in list(entries):
        bmap = file.with_name(file.name + ".bmap")
        if bmap.exists():
            # Signing the block map lets flash verify only the mapped ranges (ADR-0009 §1).
            entries.append(
                (f"{name}.bmap", bmap, target_custom(version=args.version, kind="host-disk"))
            )
    entries += [_manifest_entry(item, "host-slot", args.version) for item in args.slot]
    if not entries:
        raise ConfigError("repo sign-manifest: give at least one --disk or --slot")
    repo = Repository.open(Path(args.dir), _keys_dir(args))
    data = repo.sign_manifest(entries)
    out = Path(args.out)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write manifest: {exc.strerror}") from exc
    print(f"{out} {len(entries)} entries")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    repo = Repository.open(Path(args.dir), _keys_dir(args))
    repo.rotate_key(args.role)
    print(f"rotated {args.role}; root is now version {repo.root.signed.version}")
    return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    repo = Repository.open(Path(args.dir), _keys_dir(args))
    resigned = repo.refresh(snapshot=args.snapshot)
    ts = repo.timestamp.signed
    print(
        f"timestamp v{ts.version} expires {ts.expires.isoformat()}"
        + (f"; snapshot v{repo.snapshot.signed.version}" if resigned else "")
    )
    return 0


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port_s)


async def _serve(root: Path, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            bound_host, bound_port = await nursery.start(serve_registry, root, host, port)
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            print(f"serving {root} at http://{shown}:{bound_port}/", flush=True)
            async for signum in signals:
                nursery.cancel_scope.cancel(reason=f"repo serve: signal {signum}")
                break


def _cmd_serve(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not (root / "metadata").is_dir():
        raise ConfigError(f"{root / 'metadata'}: missing (is this an edgeagent repository?)")
    host, port = _parse_listen(args.listen)
    try:
        trio.run(_serve, root, host, port)
    except* OSError as group:
        reasons = "; ".join(str(e) for e in group.exceptions)
        raise EdgeAgentError(f"repo serve: cannot listen on {args.listen}: {reasons}") from group
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    repo = Repository.open(Path(args.dir), _keys_dir(args))
    now = datetime.now(UTC)
    roles: list[tuple[str, Signed]] = [
        ("root", repo.root.signed),
        ("timestamp", repo.timestamp.signed),
        ("snapshot", repo.snapshot.signed),
    ]
    roles += [(name, md.signed) for name, md in repo.target_roles().items()]
    for name, signed in roles:
        left = signed.expires - now
        state = "EXPIRED" if left.total_seconds() <= 0 else f"{left.days}d left"
        print(
            f"role {name:<12} v{signed.version:<5} expires {signed.expires.isoformat()} ({state})"
        )
    for role, md in repo.target_roles().items():
        for path, tf in sorted(md.signed.targets.items()):
            meta = (tf.custom or {}).get("edgeagent", {})
            version = meta.get("version", "?") if isinstance(meta, dict) else "?"
            print(
                f"target {path:<24} version {version!s:<10} {tf.length:>12} bytes "
                f"sha256:{tf.hashes.get('sha256', '?')} role {role}"
            )
    sys.stdout.flush()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``repo`` command group to the CLI."""
    repo = sub.add_parser(
        "repo",
        help="publisher: create, sign, rotate and serve a TUF registry",
        description=(
            "Maintain a TUF repository (the registry): DIR/metadata/ (signed metadata, "
            "consistent snapshots), DIR/targets/ (content-addressed images) and DIR/keys/ "
            "(private keys and policy.toml by default; never served). See signing/README.md."
        ),
    )
    repo_sub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND", required=True)

    def keys_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--keys-dir", metavar="PATH", help="keys folder (default: DIR/keys)", default=None
        )

    p = repo_sub.add_parser(
        "init",
        help="create a repository with fresh Ed25519 keys",
        description="Create DIR with fresh keys and version-1 metadata; prints the root path "
        "to give devices as --trust.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "--root-threshold",
        type=int,
        default=1,
        metavar="N",
        help="root signatures required (default 1)",
    )
    p.add_argument(
        "--root-keys",
        type=int,
        default=None,
        metavar="K",
        help="root keys to generate (default: the threshold)",
    )
    p.add_argument(
        "--expires-days",
        action="append",
        default=[],
        metavar="ROLE=N",
        help="expiry period of a role in days (repeatable; defaults root=365 "
        "targets=90 snapshot=7 timestamp=1)",
    )
    keys_opt(p)
    p.set_defaults(func=_cmd_init)

    p = repo_sub.add_parser(
        "add",
        help="add or replace a target image",
        description="Copy FILE into DIR/targets/<sha256>.NAME and sign new targets, snapshot "
        "and timestamp metadata carrying the edgeagent custom fields (ADR-0003).",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", required=True, help="target name: [A-Za-z0-9._+-], no separators")
    p.add_argument("--version", required=True, help="image version string")
    p.add_argument("--kind", choices=TARGET_KINDS, default="hvt", help="image kind (default hvt)")
    p.add_argument("--mem", type=int, default=64, metavar="MB", help="guest memory (default 64)")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="A",
        help="guest argument (repeatable; write --arg=-x for values starting with '-')",
    )
    p.add_argument(
        "--block",
        action="append",
        default=[],
        metavar="NAME",
        help="block device the image declares (repeatable)",
    )
    p.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="NAME",
        help="network device the image declares (repeatable)",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        help="device group selector (repeatable)",
    )
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="device id selector (repeatable)",
    )
    keys_opt(p)
    p.set_defaults(func=_cmd_add)

    p = repo_sub.add_parser(
        "add-host",
        help="publish a host OS slot image (A/B host OTA) as a target",
        description="Copy SLOT_IMAGE into DIR/targets/ and sign it as target NAME with "
        f"custom.edgeagent kind {HOST_KINDS[0]!r} and VERSION (ADR-0003 schema; the device "
        "agent streams it into its inactive slot).",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("slot_image", metavar="SLOT_IMAGE", help="the slot image (squashfs + UKI)")
    p.add_argument("--version", required=True, help="host OS version string")
    p.add_argument(
        "--name", default="host-slot", help="target name (default host-slot; one per board)"
    )
    p.add_argument(
        "--group", action="append", default=[], metavar="G", help="device group (repeatable)"
    )
    p.add_argument(
        "--device", action="append", default=[], metavar="ID", help="device id (repeatable)"
    )
    keys_opt(p)
    p.set_defaults(func=_cmd_add_host)

    p = repo_sub.add_parser(
        "sign-manifest",
        help="sign an offline manifest of host images with the targets keys (for flash)",
        description="Write OUT: a targets-format manifest listing each file's length and "
        "sha256, signed by DIR's targets keys (ADR-0009). `edgeagent flash --manifest OUT "
        "--trust DIR/metadata/1.root.json` verifies an image against it offline. The "
        "repository is not changed.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("out", metavar="OUT", help="manifest file to write")
    p.add_argument("--version", required=True, help="version recorded for every entry")
    p.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="whole disk image (kind host-disk; NAME defaults to the file name; FILE.bmap, "
        "if present, is signed too as NAME.bmap; repeatable)",
    )
    p.add_argument(
        "--slot",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="slot image (kind host-slot; repeatable)",
    )
    keys_opt(p)
    p.set_defaults(func=_cmd_sign_manifest)

    p = repo_sub.add_parser(
        "rotate-key",
        help="replace a role's keys (root: new root signed by old and new keys)",
        description="Replace ROLE's keys. A new root version is signed by the old and new "
        "root keys; the role, snapshot and timestamp are re-signed; retired key files are "
        "deleted.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "role", metavar="ROLE", help=f"one of {', '.join(TOP_LEVEL_ROLES)} or a delegated role name"
    )
    keys_opt(p)
    p.set_defaults(func=_cmd_rotate)

    p = repo_sub.add_parser(
        "refresh",
        help="re-sign timestamp (and snapshot when near expiry); for a timer",
        description="Re-sign timestamp with a bumped version and fresh expiry; also the "
        "snapshot when less than half its period is left, or with --snapshot.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--snapshot", action="store_true", help="always re-sign the snapshot")
    keys_opt(p)
    p.set_defaults(func=_cmd_refresh)

    p = repo_sub.add_parser(
        "serve",
        help="serve DIR/metadata and DIR/targets over HTTP",
        description="Run the embedded registry until SIGINT/SIGTERM. Prints "
        "'serving DIR at http://HOST:PORT/' first (port 0 picks a free port).",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    p.set_defaults(func=_cmd_serve)

    p = repo_sub.add_parser(
        "list",
        help="show roles, versions, expiry and targets",
        description="Show each role's version and expiry, and every target.",
    )
    p.add_argument("dir", metavar="DIR")
    keys_opt(p)
    p.set_defaults(func=_cmd_list)

"""``edgeagent flash``: write a signed disk image to a device, verified before and after.

What it does: lists candidate targets (no DEVICE); or checks the target's safety, gets the signed
``(length, sha256)`` of IMAGE from a TUF registry (``--registry``) or a signed manifest
(``--manifest``), both rooted in ``--trust ROOT.json``, and hands the write to
`edgeagent.flash.writer` (verify the image, write the mapped chunks, read everything back); or,
with ``--watch``, flashes every newly inserted candidate (a flashing station, run under trio by
`edgeagent.flash.station`). For a single target the range hashing of a block map starts before
the trust check and overlaps it; nothing is written before the map is known to be the signed
one. ADR-0009 has the rules; docs/flash.md the operator's guide.

Output contract: progress on stderr; one result line per target on stdout::

    PASS /dev/sdb serial 4C530001: disk.img sha256:<hex> 200.0 MiB written and read back in 3.1 s
    FAIL /dev/sdb serial 4C530001: <reason>

Exit status: 0 when every target passed; 1 on a refusal, a verification failure or a failed
write/read-back (the FAIL line names the target and serial, and "edgeagent: error: ..." follows
on stderr); 2 on bad arguments.

What it does not do: any trust, device or write logic of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edgeagent.errors import (
    ConfigError,
    EdgeAgentError,
    FlashError,
    UnsafeTargetError,
    VerificationError,
)
from edgeagent.flash import devices
from edgeagent.flash.pipeline import Poll
from edgeagent.flash.plan import (
    BlockMap,
    MiB,
    TargetFacts,
    WritePlan,
    build_plan,
    decide_target,
    extents_from_bmap,
    parse_bmap,
    signed_ranges,
)
from edgeagent.flash.writer import Progress, RangeChecks, flash_blocking, image_extents

if TYPE_CHECKING:
    # tuf.api.metadata is the public API but re-exports these names implicitly (mypy strict).
    from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]

    from edgeagent.flash.manifest import SignedFile

# Start-up time matters here (bench/bench_flash.py counts it against bmaptool's): trio, httpx
# and the TUF client are imported only by the code paths that need them (--registry, --watch),
# and the manifest verifier (tuf, cryptography) only once the image's ranges are being hashed
# (see _handle).

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def _read(path: str, what: str, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1 if limit else -1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    if limit is not None and len(data) > limit:
        raise ConfigError(f"{path}: {what} larger than {limit} bytes")
    return data


# Trust ----------------------------------------------------------------------------------


async def _signed_tuf(
    registry: str, root: bytes, names: tuple[str, str], store_dir: Path | None
) -> tuple[TargetFile | None, TargetFile | None]:
    """Refresh TUF metadata from ``registry``; return the targets ``names`` (nothing downloaded)."""
    import tempfile

    from edgeagent.client.updater import MetadataDir, Updater
    from edgeagent.registry.fetch import FetchConfig, HttpxFetcher
    from edgeagent.registry.protocol import RegistryLayout
    from edgeagent.store.cas import Store
    from edgeagent.verify.clock import TrustedClock

    with (
        tempfile.TemporaryDirectory(prefix="edgeagent-flash-") as tmp,
        Store.open(store_dir or Path(tmp)) as store,
    ):
        metadata = MetadataDir(store.metadata_dir)
        Updater.bootstrap(metadata, root)
        clock = TrustedClock(store.state_dir)
        async with HttpxFetcher(FetchConfig()) as fetcher:
            layout = RegistryLayout.from_registry(registry)
            updater = Updater(metadata, layout, fetcher, store, clock)
            await updater.refresh()
            return (
                await updater.get_target_info(names[0]),
                await updater.get_target_info(names[1]),
            )


def _signed(
    args: argparse.Namespace, name: str, bmap_name: str
) -> tuple[SignedFile, SignedFile | None]:
    """The signed image ``name`` and, when signed too, the block map ``bmap_name``."""
    from edgeagent.flash.manifest import from_target, signed_files

    if args.trust is None:
        raise ConfigError("flash: --trust ROOT.json is required to verify the image")
    root = _read(args.trust, "trusted root", MAX_MANIFEST_BYTES)
    if args.manifest is not None:
        data = _read(args.manifest, "manifest", MAX_MANIFEST_BYTES)
        files = signed_files(
            root, data, datetime.now(UTC), manifest_source=args.manifest, root_source=args.trust
        )
        if name not in files:
            listed = ", ".join(sorted(files)) or "nothing"
            raise VerificationError(f"{args.manifest}: signs no file {name!r} (it signs {listed})")
        return files[name], files.get(bmap_name)
    import trio

    store = Path(args.store) if args.store else None
    image, bmap = trio.run(_signed_tuf, args.registry, root, (name, bmap_name), store)
    if image is None:
        raise VerificationError(f"target {name}: not listed by any trusted targets role")
    return from_target(image), from_target(bmap) if bmap is not None else None


# Plan -----------------------------------------------------------------------------------


def _bmap_path(args: argparse.Namespace) -> str | None:
    if args.bmap == "none":
        return None
    if args.bmap is not None:
        return str(args.bmap)
    auto = args.image + ".bmap"
    return auto if os.path.exists(auto) else None


def make_plan(
    fd: int, image: str, bmap: str | None, bmap_data: bytes | None = None
) -> tuple[WritePlan, BlockMap | None]:
    """The write plan from a block map, else from SEEK_DATA/SEEK_HOLE on the open image.

    Raises:
        ConfigError: the block map is malformed or does not describe this image.
    """
    size = os.fstat(fd).st_size
    if bmap is None:
        return build_plan(image_extents(fd, size), size), None
    if bmap_data is None:
        bmap_data = _read(bmap, "block map")
    parsed = parse_bmap(bmap_data, bmap)
    if parsed.image_size != size:
        raise ConfigError(
            f"{bmap}: field 'ImageSize': {parsed.image_size} does not match {image} ({size} bytes)"
        )
    return build_plan(extents_from_bmap(parsed), size), parsed


# Output ---------------------------------------------------------------------------------


def _who(facts: TargetFacts) -> str:
    return f"{facts.path} serial {facts.serial or 'unknown'}"


def _describe(facts: TargetFacts) -> str:
    model = facts.model or "unknown model"
    return (
        f"{facts.path:<14} {facts.size / MiB / 1024:8.2f} GiB  serial {facts.serial or '-':<20} "
        f"{model}"
    )


def _confirm(facts: TargetFacts, image: str, yes: bool) -> None:
    if yes or not facts.is_block:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"flash: refusing to overwrite {facts.path} without --yes (no terminal)")
    answer = input(f"Overwrite {_describe(facts)} with {image}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise FlashError(f"{facts.path}: not confirmed; nothing written")


@dataclass(slots=True)
class _Job:
    image: str
    plan: WritePlan
    signed: SignedFile
    force: bool
    fd: int
    ranges: list[tuple[int, int, str]] | None = None
    bmap_sha256: str = ""
    stream: bool = False
    checks: RangeChecks | None = None

    def check(self, length: int, sha256: str) -> None:
        from edgeagent.flash.manifest import check_file

        if sha256 or self.ranges is None:
            check_file(self.signed, length, sha256, self.image)
        elif length != self.signed.length:
            # Signed block map path: its ranges were checked while reading (ADR-0009 §1).
            check_file(self.signed, length, "", self.image)

    def flash(self, facts: TargetFacts, poll: Poll | None = None) -> None:
        """Flash one target; print its PASS/FAIL line.

        Raises:
            EdgeAgentError: refused, verification failed, or the write/read-back failed.
        """
        try:
            decision = decide_target(facts, self.plan, force=self.force)
            if not decision.allowed:
                raise UnsafeTargetError(
                    "; ".join(r.message for r in decision.refusals)
                    + ("" if self.force else " (see --force)")
                )
            for reason in decision.overridden:
                print(f"flash: --force: {reason.message}", file=sys.stderr)
            result = flash_blocking(
                self.fd,
                self.image,
                facts.path,
                self.plan,
                self.check,
                exclusive="mounted" not in {r.code for r in decision.overridden},
                progress=Progress(sys.stderr, f"{facts.path} "),
                ranges=self.ranges,
                stream=self.stream,
                poll=poll,
                checks=self.checks,
            )
        except EdgeAgentError as exc:
            print(f"FAIL {_who(facts)}: {exc}", flush=True)
            raise
        total = sum(result.seconds.values())
        how = (
            f"sha256:{result.image_sha256}"
            if result.image_sha256
            else f"signed bmap sha256:{self.bmap_sha256}"
        )
        phases = ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
        print(
            f"PASS {_who(facts)}: {os.path.basename(self.image)} {how} "
            f"{result.written / MiB:.1f} MiB written and read back in {total:.1f} s ({phases})",
            flush=True,
        )

    def flash_in_station(self, facts: TargetFacts, poll: Poll) -> bool:
        """`flash` for the watch mode: errors are printed, not raised. Returns if it passed."""
        try:
            self.flash(facts, poll)
        except EdgeAgentError as exc:
            print(f"edgeagent: error: {exc}", file=sys.stderr, flush=True)
            return False
        return True


# Commands -------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    found = devices.list_candidates(args.loop_backing)
    if not found:
        print("no candidate targets (removable or USB, unmounted, not the system disk)")
    for facts in found:
        print(_describe(facts))
    return 0


def _watch(job: _Job, loop_backing: str | None, count: int | None) -> int:
    import trio

    from edgeagent.flash.station import run_station

    def listening(source: str) -> None:
        print(f"flash: watching {source} uevents for new targets", file=sys.stderr, flush=True)

    return trio.run(run_station, job.flash_in_station, loop_backing, count, listening)


def _handle(args: argparse.Namespace) -> int:
    if args.device is None and not args.watch:
        return _list(args)
    if args.device is not None and args.watch:
        raise ConfigError("flash: give DEVICE or --watch, not both")
    if args.watch and not args.yes:
        raise ConfigError("flash --watch: writes every inserted target; confirm with --yes")
    if (args.registry is None) == (args.manifest is None):
        raise ConfigError("flash: give exactly one trust source: --registry URL or --manifest M")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"flash: --count must be >= 1, got {args.count}")
    name = args.name or os.path.basename(args.image)
    try:
        fd = os.open(args.image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{args.image}: cannot open image: {exc.strerror}") from exc
    try:
        bmap = _bmap_path(args)
        bmap_data = _read(bmap, "block map") if bmap else None
        plan, parsed = make_plan(fd, args.image, bmap, bmap_data)
        facts = None
        if args.device is not None:
            facts = devices.target_facts(args.device, args.loop_backing)
            decision = decide_target(facts, plan, force=args.force)
            if not decision.allowed:
                # Refuse before any network access or hashing.
                reasons = "; ".join(r.message for r in decision.refusals)
                print(f"FAIL {_who(facts)}: {reasons}", flush=True)
                raise UnsafeTargetError(reasons + ("" if args.force else " (see --force)"))
        bmap_name = os.path.basename(bmap) if bmap else f"{name}.bmap"
        with ExitStack() as early:
            unverified_ranges = signed_ranges(parsed) if parsed is not None else None
            checks = None
            if facts is not None and unverified_ranges:
                # Hash the ranges while the trust check runs (imports, signatures, network).
                # Nothing is written unless the block map turns out to be the signed one; the
                # ranges come from exactly the bmap bytes whose sha256 is checked below.
                checks = early.enter_context(
                    RangeChecks(fd, args.image, plan, unverified_ranges, stream=args.stream)
                )
            signed, signed_bmap = _signed(args, name, bmap_name)
            job = _Job(args.image, plan, signed, args.force, fd, stream=args.stream)
            if bmap_data is not None and parsed is not None and signed_bmap is not None:
                from edgeagent.flash.manifest import check_file

                # A signed block map: its bytes must match, then its range sums are trusted.
                job.bmap_sha256 = hashlib.sha256(bmap_data).hexdigest()
                check_file(signed_bmap, len(bmap_data), job.bmap_sha256, str(bmap))
                job.ranges = unverified_ranges
                job.checks = checks
            if job.checks is None:
                early.close()  # The block map is not signed: hashed ranges are useless.
            if facts is None:
                return _watch(job, args.loop_backing, args.count)
            _confirm(facts, args.image, args.yes)
            job.flash(facts)
            return 0
    finally:
        os.close(fd)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``edgeagent flash``."""
    p = sub.add_parser(
        "flash",
        help="write a signed disk image to a USB stick / SD card, verified before and after",
        description=(
            "Without DEVICE: list candidate targets (removable or USB, unmounted, not the "
            "system disk). With DEVICE (a block device or a file): check the target is safe, "
            "verify IMAGE's length and sha256 against the trust root (a TUF registry target, "
            "or a signed manifest), write only the mapped blocks (IMAGE.bmap, --bmap, or "
            "SEEK_DATA/SEEK_HOLE) with large aligned O_DIRECT writes, read every written "
            "range back and compare its sha256, and print PASS or FAIL with the device's "
            "serial number. --watch flashes every newly inserted target (a flashing station)."
        ),
        epilog=(
            "Refused unless --force: a mounted target, one smaller than the image, one that is "
            "neither removable nor USB, a partition. Always refused: the disk holding the "
            "running system, a read-only target, one too small for the image's data. "
            "Exit status: 0 all PASS, 1 refused/verification/write failure, 2 bad arguments."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="raw disk image (e.g. host-os/out/disk.img)")
    p.add_argument(
        "device", metavar="DEVICE", nargs="?", help="target block device or file (omit to list)"
    )
    trust = p.add_argument_group("trust (exactly one of --registry or --manifest)")
    trust.add_argument(
        "--trust", metavar="ROOT.json", help="trusted root of the registry (e.g. 1.root.json)"
    )
    trust.add_argument("--registry", metavar="URL", help="TUF registry listing the image")
    trust.add_argument(
        "--manifest", metavar="M", help="offline: targets-format manifest signed by ROOT's keys"
    )
    trust.add_argument(
        "--name", metavar="NAME", help="target name to look up (default: IMAGE's file name)"
    )
    trust.add_argument(
        "--store",
        metavar="DIR",
        help="with --registry: keep trusted metadata here (rollback protection across runs)",
    )
    p.add_argument(
        "--bmap",
        metavar="FILE",
        help="bmaptool XML block map (default: IMAGE.bmap if present; 'none': SEEK_DATA)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="with a signed block map: check each range as it is read for writing and write it "
        "from that memory (the image is read once) instead of checking every range before the "
        "first write; a bad range found mid-flash then leaves the ranges before it written "
        "(FAIL: incomplete target)",
    )
    p.add_argument("--force", action="store_true", help="override the soft safety refusals")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--watch", action="store_true", help="flash every newly inserted target")
    p.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N targets")
    p.add_argument(
        "--loop-backing",
        metavar="GLOB",
        help="treat loop devices whose backing file matches GLOB as removable (testing)",
    )
    p.set_defaults(func=_handle)

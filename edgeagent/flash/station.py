"""Flashing station: watch for newly inserted media and flash each one (``flash --watch``).

What it does:

- `watch`: a pyudev netlink monitor (``source="kernel"``, which needs no udevd; ``"udev"`` when
  ``/run/udev/control`` exists, see `edgeagent.flash.devices.monitor_source`) read through
  ``trio.lowlevel.wait_readable``; each uevent goes through `plan.WatchState`, and each newly
  inserted candidate is handed to a callback (ADR-0009 §4).
- `run_station`: runs `watch` and flashes each new target with a blocking flash function in a
  trio worker thread (never abandoned while it writes; it polls for cancellation between
  chunks); stops after ``count`` targets.

What it does not do: decide anything (`edgeagent.flash.plan`) or write (`edgeagent.flash.writer`).
It lives apart from `edgeagent.flash.devices` so that a single flash does not import trio.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import pyudev
import trio

from edgeagent.errors import FlashError
from edgeagent.flash.devices import attr, block_facts, monitor_source
from edgeagent.flash.pipeline import Poll
from edgeagent.flash.plan import TargetFacts, WatchState, is_candidate

log = logging.getLogger(__name__)

OnTarget = Callable[[TargetFacts], Awaitable[None]]
FlashOne = Callable[[TargetFacts, Poll], bool]


async def watch(
    on_target: OnTarget,
    *,
    loop_backing: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_target`` (in this task) for each newly inserted candidate disk, forever.

    Devices present at start are not flashed. ``task_status.started`` reports the monitor
    source once the netlink socket listens (so a caller can insert media safely after it).

    Raises:
        FlashError: the netlink monitor cannot be opened (needs root for ``kernel``).
    """
    ctx = pyudev.Context()
    source = monitor_source()
    try:
        monitor = pyudev.Monitor.from_netlink(ctx, source=source)
        monitor.filter_by("block")
        monitor.start()
    except (OSError, ValueError) as exc:
        raise FlashError(f"watch: cannot open the {source} uevent monitor: {exc}") from exc
    state = WatchState()
    state.seed(
        d.sys_name
        for d in ctx.list_devices(subsystem="block", DEVTYPE="disk")
        if int(attr(d, "size") or 0) > 0
    )
    task_status.started(source)
    log.info("watching %s uevents for new block devices", source)
    while True:
        await trio.lowlevel.wait_readable(monitor.fileno())
        while (dev := monitor.poll(timeout=0)) is not None:
            if dev.subsystem != "block" or dev.device_type != "disk":
                continue
            action = dev.action or ""
            size = 0 if action == "remove" else int(attr(dev, "size") or 0)
            facts = None if action == "remove" or size == 0 else block_facts(dev, loop_backing)
            candidate = facts is not None and is_candidate(facts)
            if state.on_event(action, dev.sys_name, size, candidate) and facts is not None:
                await on_target(facts)


async def run_station(
    flash_one: FlashOne,
    loop_backing: str | None,
    count: int | None,
    on_listening: Callable[[str], None],
) -> int:
    """Flash every newly inserted target with ``flash_one(facts, poll)`` until ``count`` are done.

    ``flash_one`` reports the target's result itself and returns whether it passed; a failure
    does not stop the station.

    Returns:
        0 when every target passed, else 1.
    """
    failures = 0
    flashed = 0
    async with trio.open_nursery() as nursery:

        async def on_target(facts: TargetFacts) -> None:
            nonlocal failures, flashed
            run = partial(flash_one, facts, trio.from_thread.check_cancelled)
            if not await trio.to_thread.run_sync(run, abandon_on_cancel=False):
                failures += 1
            flashed += 1
            if count is not None and flashed >= count:
                nursery.cancel_scope.cancel(reason=f"flash --watch: {flashed} targets done")

        on_listening(await nursery.start(partial(watch, on_target, loop_backing=loop_backing)))
    return 1 if failures else 0

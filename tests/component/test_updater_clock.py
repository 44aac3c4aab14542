"""The updater and trusted time (ADR-0004): a device booting at 1970 accepts fresh metadata,
replayed older metadata is still rejected, and expired metadata is rejected once real time
(or the persisted floor) passes its expiry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from edgeagent.client.updater import MetadataDir, Updater
from edgeagent.errors import ExpiredError, RollbackError
from edgeagent.registry.fetch import FetchConfig, HttpxFetcher
from edgeagent.registry.protocol import RegistryLayout
from edgeagent.store.cas import Store
from edgeagent.verify import clock as clockmod
from edgeagent.verify.clock import TrustedClock
from tests.fakes.pullkit import APP, Served, served_repo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class FixedClock:
    at: datetime
    commits: list[datetime] = field(default_factory=list)

    def now(self) -> datetime:
        return self.at

    def commit(self) -> None:
        self.commits.append(self.at)


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Served]:
    with served_repo(tmp_path) as served:
        yield served


async def refresh(s: Served, clock: clockmod.Clock) -> Updater:
    with Store.open(s.store) as store:
        md = MetadataDir(store.metadata_dir)
        Updater.bootstrap(md, s.trust.read_bytes())
        async with HttpxFetcher(FetchConfig(retries=0)) as fetcher:
            up = Updater(md, RegistryLayout.from_registry(s.server.url), fetcher, store, clock)
            with trio.fail_after(30):
                await up.refresh()
                info = await up.get_target_info("app")
                assert info is not None
                assert (await up.download_target(info)).read_bytes() == APP
            return up


async def test_device_booting_at_1970_accepts_fresh_metadata(s: Served) -> None:
    c = FixedClock(EPOCH)
    await refresh(s, c)
    assert c.commits == [EPOCH]


async def test_replayed_old_metadata_rejected_at_1970(s: Served) -> None:
    await refresh(s, FixedClock(EPOCH))
    old = s.repo.metadata_bytes("timestamp.json")
    s.repo.publish()
    await refresh(s, FixedClock(EPOCH))
    s.server.behaviour.override["/metadata/timestamp.json"] = old
    with pytest.raises(RollbackError, match=r"timestamp: version rollback"):
        await refresh(s, FixedClock(EPOCH))


async def test_expired_metadata_rejected_once_real_time_passes_expiry(s: Served) -> None:
    await refresh(s, FixedClock(datetime.now(UTC)))
    with pytest.raises(ExpiredError, match=r"timestamp: expired"):
        await refresh(s, FixedClock(datetime.now(UTC) + timedelta(days=2)))


async def test_persisted_floor_rejects_expired_metadata_after_clock_reset(s: Served) -> None:
    # The device once ran at a time after the timestamp's expiry; its RTC then resets to 1970.
    state = s.store / "state"
    state.mkdir(parents=True)
    future = datetime.now(UTC) + timedelta(days=2)
    clockmod.write_atomic(state / clockmod.FLOOR_FILE, clockmod.render_floor(future))
    with pytest.raises(ExpiredError, match=r"timestamp: expired"):
        await refresh(s, TrustedClock(state))


async def test_floor_is_raised_after_success(s: Served) -> None:
    state = s.store / "state"
    c = TrustedClock(state)
    assert c.floor is None
    await refresh(s, c)
    again = TrustedClock(state)
    assert again.floor is not None
    assert again.floor <= datetime.now(UTC)


async def test_local_metadata_rotated_out_is_skipped_fast_forward_recovery(
    tmp_path: Path,
) -> None:
    with served_repo(tmp_path) as s:
        c = FixedClock(datetime.now(UTC))
        for _ in range(3):
            s.repo.publish()
        await refresh(s, c)  # Device trusts timestamp v5.
        # The timestamp key is compromised and rotated; the repository restarts at v1.
        s.repo.replace_keys("timestamp")
        s.repo.new_root_version()
        s.repo.timestamp.signed.version = 0
        s.repo.publish()
        up = await refresh(s, c)
        assert up.trusted.timestamp is not None
        assert up.trusted.timestamp.version == 1

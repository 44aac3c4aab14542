"""The httpx-on-trio fetcher against a real (misbehaving) HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from edgeagent.errors import FetchError, SlowRetrievalError, TooLargeError
from edgeagent.registry.fetch import FetchConfig, HttpxFetcher
from tests.fakes.evil_server import EvilServer, serve

BODY = bytes(range(256)) * 400  # 100 KiB
FAST = FetchConfig(
    connect_timeout_s=5,
    read_timeout_s=5,
    metadata_timeout_s=20,
    min_throughput_bps=20_000,
    throughput_grace_s=0.3,
    retries=2,
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
)


class ListSink:
    def __init__(self, prefix: bytes = b"") -> None:
        self.data = bytearray(prefix)

    @property
    def held(self) -> int:
        return len(self.data)

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EvilServer]:
    (tmp_path / "f.bin").write_bytes(BODY)
    with serve(tmp_path) as srv:
        yield srv


async def test_fetch_bytes_within_cap(server: EvilServer) -> None:
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30):
            assert await f.fetch_bytes(server.url + "f.bin", len(BODY)) == BODY


async def test_metadata_over_cap_is_too_large(server: EvilServer) -> None:
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30), pytest.raises(TooLargeError, match=r"f.bin: Content-Length"):
            await f.fetch_bytes(server.url + "f.bin", 1000)


async def test_endless_metadata_is_cut_at_cap(server: EvilServer) -> None:
    server.behaviour.endless.add("/f.bin")
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30), pytest.raises(TooLargeError, match=r"exceeds the cap of"):
            await f.fetch_bytes(server.url + "f.bin", 200_000)


async def test_missing_file_is_fetch_error_with_status(server: EvilServer) -> None:
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30), pytest.raises(FetchError) as err:
            await f.fetch_bytes(server.url + "nope.json", 1000)
    assert err.value.status == 404


async def test_endless_data_stops_at_signed_length(server: EvilServer) -> None:
    # Junk without end and without Content-Length: the fetcher stops at the signed length,
    # either cleanly at a read boundary (the digest check then decides) or with TooLargeError
    # when a read overshoots. It never hangs and never accepts more.
    server.behaviour.override["/f.bin"] = b""
    server.behaviour.endless.add("/f.bin")
    sink = ListSink()
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30):
            error: TooLargeError | None = None
            try:
                await f.fetch_into(server.url + "f.bin", sink, len(BODY))
            except TooLargeError as exc:
                error = exc
    if error is not None:
        assert "more than the signed length" in str(error)
    assert sink.held == len(BODY)
    assert bytes(sink.data) == b"\xee" * len(BODY)


async def test_declared_length_over_signed_length_fails_before_body(server: EvilServer) -> None:
    sink = ListSink()
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30), pytest.raises(TooLargeError, match=r"announces"):
            await f.fetch_into(server.url + "f.bin", sink, 1000)
    assert sink.held == 0


async def test_slow_retrieval_aborts(server: EvilServer) -> None:
    server.behaviour.trickle.add("/f.bin")
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30), pytest.raises(SlowRetrievalError, match=r"slow retrieval"):
            await f.fetch_into(server.url + "f.bin", ListSink(), len(BODY))


async def test_resume_uses_range(server: EvilServer) -> None:
    sink = ListSink(BODY[:1000])
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30):
            await f.fetch_into(server.url + "f.bin", sink, len(BODY))
    assert bytes(sink.data) == BODY
    assert server.requests[-1][2] == "bytes=1000-"


async def test_server_ignoring_range_is_handled(server: EvilServer) -> None:
    server.behaviour.ignore_range.add("/f.bin")
    sink = ListSink(BODY[:1000])
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30):
            await f.fetch_into(server.url + "f.bin", sink, len(BODY))
    assert bytes(sink.data) == BODY


async def test_dropped_connection_mid_body_resumes(server: EvilServer) -> None:
    server.behaviour.drop_after["/f.bin"] = 30_000
    sink = ListSink()
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30):
            # The first answer is cut; let later answers through after the first request.
            async with trio.open_nursery() as nursery:

                async def heal() -> None:
                    while not server.requests:  # noqa: ASYNC110 - another thread appends
                        await trio.sleep(0.01)
                    await trio.sleep(0.05)
                    server.behaviour.drop_after.clear()

                nursery.start_soon(heal)
                await f.fetch_into(server.url + "f.bin", sink, len(BODY))
    assert bytes(sink.data) == BODY
    assert any(r[2] is not None and r[2].startswith("bytes=") for r in server.requests)


async def test_retries_are_bounded(server: EvilServer) -> None:
    server.behaviour.status["/f.bin"] = 503
    async with HttpxFetcher(FAST) as f:
        with trio.fail_after(30), pytest.raises(FetchError, match=r"HTTP 503"):
            await f.fetch_into(server.url + "f.bin", ListSink(), len(BODY))
    assert len(server.requests) == FAST.retries + 1

"""The only network code: a `Fetcher` Protocol and the httpx-on-trio fetcher.

What it does: GETs metadata bodies with a size cap, and streams target bodies into a sink,
never accepting bytes past the signed length (endless data -> `TooLargeError`), enforcing a
minimum throughput (slow retrieval -> `SlowRetrievalError`), retrying transient failures a bounded
number of times with exponential back-off, and resuming with ``Range: bytes=N-`` from what the sink
already holds (a server that ignores Range and answers 200 is handled by discarding the prefix).
Every timeout is a named field of the frozen `FetchConfig`. Every foreign error (httpx, h11,
OSError) is wrapped once, here, in `FetchError` naming the URL.

What it does not do: no trust decisions (it never looks at what the bytes mean), no files (the
sink does the writing) and no hashing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import httpx
import trio

from edgeagent.errors import FetchError, SlowRetrievalError, TooLargeError

log = logging.getLogger(__name__)

# Statuses worth retrying: the server or a proxy is overloaded or restarting.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Bound on the shielded clean-up of an abandoned response body (style §4 rule 4).
_CLOSE_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """Every network limit of the client, named (defaults explained in ADR-0006).

    Attributes:
        connect_timeout_s: TCP/TLS connect deadline per attempt.
        read_timeout_s: longest wait for the next bytes of a body (a stalled server).
        metadata_timeout_s: deadline for one whole metadata fetch, all retries included.
        min_throughput_bps: slow-retrieval floor: average bytes/s a body must reach...
        throughput_grace_s: ...once this many seconds of the attempt have passed.
        retries: extra attempts after a transient failure (connection drop, 5xx, 429).
        backoff_initial_s: first back-off delay; doubles per retry...
        backoff_max_s: ...up to this.
    """

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    metadata_timeout_s: float = 60.0
    min_throughput_bps: int = 32 * 1024
    throughput_grace_s: float = 10.0
    retries: int = 4
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0


class ChunkSink(Protocol):
    """Where a streamed body goes. The fetcher resumes from `held`."""

    @property
    def held(self) -> int:
        """How many bytes of the body the sink already holds (the resume offset)."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Take the next bytes of the body (in order, never past the expected length)."""
        ...


class Fetcher(Protocol):
    """What the updater needs from the network."""

    async def fetch_bytes(self, url: str, max_bytes: int) -> bytes:
        """GET a whole body of at most ``max_bytes``.

        Raises:
            FetchError: network or HTTP failure (``status`` set for HTTP errors, e.g. 404).
            TooLargeError: the body is longer than ``max_bytes``.
            SlowRetrievalError: below the throughput floor.
        """
        ...

    async def fetch_into(self, url: str, sink: ChunkSink, length: int) -> None:
        """Stream bytes ``sink.held .. length`` of ``url`` into ``sink``, resuming on failure.

        Raises:
            FetchError, TooLargeError, SlowRetrievalError: as `fetch_bytes`.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


# httpcore reads the socket 64 KiB at a time, and every read costs a trip through h11 and
# several Python frames: about two thirds of the client's CPU for a large body (measured by
# bench/bench_pull.py). httpcore has no public knob, so the fetcher raises its class-level read
# size once; 1 MiB cut the client's network CPU per GiB about threefold. Guarded: if a future
# httpcore drops the attribute, nothing changes but speed.
RECV_BYTES = 1024 * 1024


def _tune_httpcore() -> None:
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:  # pragma: no cover - depends on the httpcore version
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", RECV_BYTES) < RECV_BYTES:
        AsyncHTTP11Connection.READ_NUM_BYTES = RECV_BYTES


class _Retry(Exception):
    """Internal: a transient failure; the wrapped FetchError is raised if retries run out."""

    def __init__(self, error: FetchError) -> None:
        super().__init__(str(error))
        self.error = error


class _Throughput:
    """Slow-retrieval guard: average rate since the attempt started must reach the floor."""

    def __init__(self, cfg: FetchConfig, url: str) -> None:
        self._cfg = cfg
        self._url = url
        self._start = trio.current_time()
        self._bytes = 0

    def add(self, n: int) -> None:
        self._bytes += n
        elapsed = trio.current_time() - self._start
        if elapsed > self._cfg.throughput_grace_s:
            rate = self._bytes / elapsed
            if rate < self._cfg.min_throughput_bps:
                raise SlowRetrievalError(
                    f"{self._url}: slow retrieval: {rate:.0f} B/s over {elapsed:.1f} s is below "
                    f"the floor of {self._cfg.min_throughput_bps} B/s (min_throughput_bps)",
                    url=self._url,
                )


class HttpxFetcher:
    """`Fetcher` on ``httpx.AsyncClient`` (trio backend).

    Args:
        cfg: limits and timeouts.
        client: an existing client to use (tests); by default one is created and owned.
    """

    def __init__(self, cfg: FetchConfig | None = None, client: httpx.AsyncClient | None = None):
        self.cfg = cfg or FetchConfig()
        _tune_httpcore()
        timeout = httpx.Timeout(
            connect=self.cfg.connect_timeout_s,
            read=self.cfg.read_timeout_s,
            write=self.cfg.read_timeout_s,
            pool=self.cfg.connect_timeout_s,
        )
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={"Accept-Encoding": "identity", "User-Agent": "edgeagent"},
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def __aenter__(self) -> HttpxFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _backoff(self, attempt: int, error: FetchError) -> None:
        if attempt >= self.cfg.retries:
            raise error
        delay = min(self.cfg.backoff_initial_s * (2**attempt), self.cfg.backoff_max_s)
        log.info("fetch: %s; retry %d/%d in %.2f s", error, attempt + 1, self.cfg.retries, delay)
        await trio.sleep(delay)

    # Metadata ---------------------------------------------------------------------------

    async def fetch_bytes(self, url: str, max_bytes: int) -> bytes:
        """GET a whole body of at most ``max_bytes`` (see `Fetcher.fetch_bytes`)."""
        with trio.move_on_after(self.cfg.metadata_timeout_s) as scope:
            attempt = 0
            while True:
                try:
                    return await self._fetch_bytes_once(url, max_bytes)
                except _Retry as retry:
                    await self._backoff(attempt, retry.error)
                    attempt += 1
        assert scope.cancelled_caught
        raise FetchError(
            f"{url}: no complete answer within {self.cfg.metadata_timeout_s} s "
            "(metadata_timeout_s)",
            url=url,
        )

    async def _fetch_bytes_once(self, url: str, max_bytes: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        guard = _Throughput(self.cfg, url)
        try:
            async with self._client.stream("GET", url) as resp:
                _check_status(resp, url)
                declared = _content_length(resp)
                if declared is not None and declared > max_bytes:
                    raise TooLargeError(
                        f"{url}: Content-Length {declared} exceeds the cap of {max_bytes} bytes",
                        url=url,
                    )
                async with aclosing(_BodyReader(resp)) as body:
                    async for chunk in body:
                        size += len(chunk)
                        if size > max_bytes:
                            raise TooLargeError(
                                f"{url}: body exceeds the cap of {max_bytes} bytes", url=url
                            )
                        parts.append(chunk)
                        guard.add(len(chunk))
        except httpx.HTTPError as exc:
            raise _Retry(FetchError(f"{url}: {_describe(exc)}", url=url)) from exc
        return b"".join(parts)

    # Targets ----------------------------------------------------------------------------

    async def fetch_into(self, url: str, sink: ChunkSink, length: int) -> None:
        """Stream the rest of a body into ``sink`` (see `Fetcher.fetch_into`)."""
        attempt = 0
        while sink.held < length:
            before = sink.held
            try:
                await self._fetch_into_once(url, sink, length)
            except _Retry as retry:
                if sink.held > before:
                    attempt = 0  # Progress was made: a fresh budget for the next drop.
                await self._backoff(attempt, retry.error)
                attempt += 1

    async def _fetch_into_once(self, url: str, sink: ChunkSink, length: int) -> None:
        start = sink.held
        headers = {"Range": f"bytes={start}-"} if start else {}
        guard = _Throughput(self.cfg, url)
        try:
            async with self._client.stream("GET", url, headers=headers) as resp:
                _check_status(resp, url)
                skip = 0
                if start and resp.status_code == 200:
                    # The server ignored Range: drop the prefix we already hold.
                    log.info("fetch: %s ignored Range; discarding %d bytes", url, start)
                    skip = start
                elif start and resp.status_code != 206:
                    raise FetchError(
                        f"{url}: unexpected HTTP {resp.status_code} to a Range request",
                        url=url,
                        status=resp.status_code,
                    )
                elif start:
                    _check_content_range(resp, url, start)
                declared = _content_length(resp)
                if declared is not None and declared - skip > length - start:
                    raise TooLargeError(
                        f"{url}: server announces {declared - skip + start} bytes but the signed "
                        f"length is {length} (endless data?)",
                        url=url,
                    )
                async with aclosing(_BodyReader(resp)) as body:
                    if await self._copy_body(url, body, sink, length, skip, guard):
                        return  # Never read past the signed length.
        except httpx.HTTPError as exc:
            raise _Retry(FetchError(f"{url}: {_describe(exc)}", url=url)) from exc
        if sink.held < length:
            raise _Retry(
                FetchError(f"{url}: body ended after {sink.held} of {length} bytes", url=url)
            )

    @staticmethod
    async def _copy_body(
        url: str,
        body: AsyncIterator[bytes],
        sink: ChunkSink,
        length: int,
        skip: int,
        guard: _Throughput,
    ) -> bool:
        """Copy body bytes after ``skip`` into ``sink``; True once ``length`` is reached."""
        async for raw in body:
            chunk = raw
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            room = length - sink.held
            if len(chunk) > room:
                if room:
                    await sink.write(chunk[:room])
                raise TooLargeError(
                    f"{url}: server sent more than the signed length of {length} bytes "
                    "(endless data); stopped reading",
                    url=url,
                )
            await sink.write(chunk)
            guard.add(len(chunk))
            if sink.held == length:
                return True
        return False


class _BodyReader:
    """Iterates a response body; `aclose` ends it early without leaking httpx's generators.

    httpx's ``aiter_raw()`` is a chain of nested async generators; closing only the outer one
    leaves the inner ones to the garbage collector (trio warns). Closing the response and then
    draining the iterator makes the whole chain finish with a read error instead.
    """

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self._it = resp.aiter_raw()
        self._done = False

    def __aiter__(self) -> _BodyReader:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._it.__anext__()
        except BaseException:
            self._done = True
            raise

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE_S):
            await self._resp.aclose()
            with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
                async for _ in self._it:
                    pass


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _content_length(resp: httpx.Response) -> int | None:
    value = resp.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _check_status(resp: httpx.Response, url: str) -> None:
    status = resp.status_code
    if status in (200, 206):
        return
    error = FetchError(f"{url}: HTTP {status}", url=url, status=status)
    if status in _RETRY_STATUSES:
        raise _Retry(error)
    raise error


def _check_content_range(resp: httpx.Response, url: str, start: int) -> None:
    value = resp.headers.get("content-range", "")
    unit, _, rest = value.partition(" ")
    first, _, _ = rest.partition("-")
    if unit != "bytes" or first != str(start):
        raise FetchError(
            f"{url}: 206 answer with Content-Range {value!r} does not start at byte {start}",
            url=url,
            status=206,
        )

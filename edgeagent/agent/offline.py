"""An offline (air-gapped) registry on a local folder: a `Fetcher` over ``file://`` URLs.

What it does: `LocalFetcher` answers the TUF client's requests (`edgeagent.registry.fetch.
Fetcher`) from a folder instead of HTTP, with the same limits: metadata bodies are capped
(`TooLargeError`), a target is streamed into the store's sink and never past its signed length
(a longer file is `TooLargeError`, like endless data from a server), a missing file is a
`FetchError` with status 404 (so the root walk stops as it does online), and every path is
resolved and must stay inside the registry folder (a symlink on a USB stick pointing at
``/etc`` is refused with status 403). Reads run in worker threads (a slow stick does not block
the agent).

It is used by the hot-plug service for removable media (docs/hotplug.md) and works on any
folder (a mounted medium or a plain directory).

What it does not do: no trust decisions. The bytes go through the same `Updater`, trust root,
trusted metadata, rollback and expiry rules as the network registry, and a target is copied
into the agent's store and hashed there before it is used (the RAUC TOCTOU rule).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

import trio

from edgeagent.errors import FetchError, TooLargeError
from edgeagent.registry.fetch import ChunkSink

#: Bytes read per worker-thread hop when streaming a target.
CHUNK_BYTES = 1024 * 1024


class LocalFetcher:
    """`Fetcher` over ``file://`` URLs below one folder.

    Args:
        root: the registry folder (holding ``metadata/`` and ``targets/``).
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        # One read at a time: a USB stick gains nothing from parallel reads.
        self._readers = trio.CapacityLimiter(1)

    def _path(self, url: str) -> str:
        if not url.startswith("file://"):
            raise FetchError(f"{url}: not a file:// URL (offline registry)", url=url)
        path = os.path.realpath(unquote(url.removeprefix("file://")))
        if os.path.commonpath([path, self.root]) != self.root:
            raise FetchError(
                f"{url}: resolves outside the offline registry {self.root} (symlink?); refused",
                url=url,
                status=403,
            )
        return path

    def _open(self, url: str) -> tuple[BinaryIO, int]:
        path = self._path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as exc:
            raise FetchError(f"{url}: not found", url=url, status=404) from exc
        except OSError as exc:
            raise FetchError(f"{url}: cannot read: {exc}", url=url) from exc
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            f.close()
            raise FetchError(f"{url}: cannot read: {exc}", url=url) from exc
        return f, size

    async def fetch_bytes(self, url: str, max_bytes: int) -> bytes:
        """Read a whole file of at most ``max_bytes`` (see `Fetcher.fetch_bytes`)."""

        def read() -> bytes:
            f, size = self._open(url)
            with f:
                if size > max_bytes:
                    raise TooLargeError(
                        f"{url}: {size} bytes exceeds the cap of {max_bytes} bytes", url=url
                    )
                try:
                    data = f.read(max_bytes + 1)
                except OSError as exc:
                    raise FetchError(f"{url}: read failed: {exc}", url=url) from exc
            if len(data) > max_bytes:
                raise TooLargeError(f"{url}: body exceeds the cap of {max_bytes} bytes", url=url)
            return data

        return await trio.to_thread.run_sync(read, limiter=self._readers)

    async def fetch_into(self, url: str, sink: ChunkSink, length: int) -> None:
        """Stream bytes ``sink.held .. length`` of the file into ``sink``."""
        f, size = await trio.to_thread.run_sync(self._open, url, limiter=self._readers)
        try:
            if size > length:
                raise TooLargeError(
                    f"{url}: the file has {size} bytes but the signed length is {length}", url=url
                )

            def read(n: int) -> bytes:
                try:
                    return f.read(n)
                except OSError as exc:
                    raise FetchError(f"{url}: read failed: {exc}", url=url) from exc

            f.seek(sink.held)
            while sink.held < length:
                chunk = await trio.to_thread.run_sync(
                    read, min(CHUNK_BYTES, length - sink.held), limiter=self._readers
                )
                if not chunk:
                    raise FetchError(
                        f"{url}: file ended after {sink.held} of {length} bytes", url=url
                    )
                await sink.write(chunk)
            if await trio.to_thread.run_sync(read, 1, limiter=self._readers):
                raise TooLargeError(
                    f"{url}: the file is longer than the signed length of {length} bytes", url=url
                )
        finally:
            f.close()

    async def aclose(self) -> None:
        """Nothing to release (files are closed after each request)."""

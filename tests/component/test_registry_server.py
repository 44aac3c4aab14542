"""The embedded registry server against a real socket on 127.0.0.1 (port 0).

A raw HTTP client is used on purpose: ordinary clients normalise ``..`` and percent escapes
away, and the traversal attacks must reach the server byte for byte.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from edgeagent.registry import server
from edgeagent.registry.server import serve_registry

BLOB = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
BLOB_NAME = "abc123.hello"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class RawClient:
    """One keep-alive connection; sends raw request heads, parses responses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(1 << 16)
        self.buf += data
        return bool(data)

    async def request(
        self, target: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", "Host: test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return await self.read_response(head_only=method == "HEAD")

    async def read_response(self, *, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            assert await self._fill(), "connection closed before the response head"
        idx = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:idx]).decode("latin-1").split("\r\n")
        del self.buf[: idx + 4]
        status = int(head[0].split(" ")[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = 0 if head_only or status == 304 else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert await self._fill(), "connection closed mid-body"
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Response(status, headers, body)

    async def closed_by_server(self) -> bool:
        return not self.buf and not await self._fill()


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "targets").mkdir()
    (tmp_path / "keys").mkdir()
    (tmp_path / "metadata" / "1.root.json").write_bytes(b'{"signed": {}}')
    (tmp_path / "metadata" / "timestamp.json").write_bytes(b'{"t": 1}')
    (tmp_path / "targets" / BLOB_NAME).write_bytes(BLOB)
    (tmp_path / "keys" / "secret.key").write_bytes(b"PRIVATE KEY MATERIAL")
    (tmp_path / "keys" / "policy.toml").write_bytes(b"schema_version = 1\n")
    (tmp_path / "outside.txt").write_bytes(b"not for clients")
    return tmp_path


@pytest.fixture
async def port(repo_dir: Path, nursery: trio.Nursery) -> int:
    _host, bound = await nursery.start(serve_registry, repo_dir, "127.0.0.1", 0)
    assert bound != 0
    return int(bound)


@pytest.fixture
async def client(port: int) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield RawClient(stream)


async def test_get_serves_whole_target_with_length_type_and_validators(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request(f"/targets/{BLOB_NAME}")
    assert resp.status == 200
    assert resp.body == BLOB
    assert resp.headers["content-length"] == str(len(BLOB))
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["accept-ranges"] == "bytes"
    assert resp.headers["etag"].startswith('"')
    assert resp.headers["last-modified"].endswith(" GMT")


async def test_json_metadata_has_json_content_type(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request("/metadata/1.root.json")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.body == b'{"signed": {}}'


async def test_head_sends_headers_only_and_connection_stays_usable(client: RawClient) -> None:
    with trio.fail_after(10):
        head = await client.request(f"/targets/{BLOB_NAME}", method="HEAD")
        again = await client.request("/metadata/timestamp.json")
    assert head.status == 200
    assert head.headers["content-length"] == str(len(BLOB))
    assert again.status == 200
    assert again.body == b'{"t": 1}'


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=1000-", 1000, len(BLOB) - 1),
        ("bytes=-4", len(BLOB) - 4, len(BLOB) - 1),
        ("bytes=5-99999999", 5, len(BLOB) - 1),
    ],
)
async def test_single_range_returns_206_with_content_range(
    client: RawClient, range_header: str, first: int, last: int
) -> None:
    with trio.fail_after(10):
        resp = await client.request(f"/targets/{BLOB_NAME}", headers={"Range": range_header})
    assert resp.status == 206
    assert resp.body == BLOB[first : last + 1]
    assert resp.headers["content-range"] == f"bytes {first}-{last}/{len(BLOB)}"


async def test_unsatisfiable_range_returns_416_with_size(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request(
            f"/targets/{BLOB_NAME}", headers={"Range": f"bytes={len(BLOB)}-"}
        )
    assert resp.status == 416
    assert resp.headers["content-range"] == f"bytes */{len(BLOB)}"


async def test_if_range_with_stale_etag_sends_whole_file(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request(
            f"/targets/{BLOB_NAME}", headers={"Range": "bytes=0-9", "If-Range": '"stale"'}
        )
    assert resp.status == 200
    assert resp.body == BLOB


async def test_if_none_match_with_current_etag_returns_304(client: RawClient) -> None:
    with trio.fail_after(10):
        first = await client.request("/metadata/timestamp.json")
        resp = await client.request(
            "/metadata/timestamp.json", headers={"If-None-Match": first.headers["etag"]}
        )
        changed = await client.request(
            "/metadata/timestamp.json", headers={"If-None-Match": '"other"'}
        )
    assert resp.status == 304
    assert resp.body == b""
    assert changed.status == 200


async def test_if_modified_since_returns_304_until_file_changes(
    client: RawClient, repo_dir: Path
) -> None:
    with trio.fail_after(10):
        first = await client.request("/metadata/timestamp.json")
        since = {"If-Modified-Since": first.headers["last-modified"]}
        resp = await client.request("/metadata/timestamp.json", headers=since)
        path = repo_dir / "metadata" / "timestamp.json"
        st = path.stat()
        os.utime(path, (st.st_atime + 10, st.st_mtime + 10))
        after = await client.request("/metadata/timestamp.json", headers=since)
    assert resp.status == 304
    assert after.status == 200


async def test_connection_close_is_honoured(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request("/metadata/timestamp.json", headers={"Connection": "close"})
        assert resp.status == 200
        assert resp.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_missing_file_is_404(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request("/metadata/99.root.json")
    assert resp.status == 404


async def test_post_is_rejected_with_405(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request("/metadata/1.root.json", method="DELETE")
    assert resp.status == 405
    assert resp.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "target",
    [
        "/keys/secret.key",
        "/keys/policy.toml",
        "/%6beys/secret.key",  # 'k' percent-encoded
        "/outside.txt",
        "/",
        "/metadata",
        "/metadata/",
    ],
)
async def test_keys_and_files_outside_served_folders_are_never_served(
    client: RawClient, target: str
) -> None:
    with trio.fail_after(10):
        resp = await client.request(target)
    assert resp.status in (400, 404)
    assert b"PRIVATE" not in resp.body
    assert b"not for clients" not in resp.body


@pytest.mark.parametrize(
    "target",
    [
        "/metadata/../keys/secret.key",
        "/targets/../../etc/passwd",
        "/metadata/%2e%2e/keys/secret.key",
        "/metadata/%2E%2E/keys/secret.key",
        "/metadata/..%2fkeys%2fsecret.key",
        "/metadata/..%2Fkeys/secret.key",
        "/metadata/..%5ckeys%5csecret.key",
        "/metadata/.%2e/keys/secret.key",
        "/metadata//keys/secret.key",
        "/metadata/%00/x",
        "/metadata/%252e%252e/keys/secret.key",
        "/targets/.hidden",
        "http://evil/keys/secret.key",
    ],
)
async def test_directory_traversal_attempts_are_rejected(client: RawClient, target: str) -> None:
    with trio.fail_after(10):
        resp = await client.request(target)
    assert resp.status in (400, 404)
    assert b"PRIVATE" not in resp.body


async def test_symlink_escaping_served_folder_is_not_followed(
    repo_dir: Path, client: RawClient
) -> None:
    (repo_dir / "targets" / "leak").symlink_to(repo_dir / "keys" / "secret.key")
    (repo_dir / "targets" / "parent").symlink_to(repo_dir)
    with trio.fail_after(10):
        leak = await client.request("/targets/leak")
        via_dir = await client.request("/targets/parent/keys/secret.key")
    assert leak.status == 404
    assert via_dir.status == 404
    assert b"PRIVATE" not in leak.body + via_dir.body


async def test_symlink_inside_served_folder_is_served(repo_dir: Path, client: RawClient) -> None:
    (repo_dir / "targets" / "alias").symlink_to(repo_dir / "targets" / BLOB_NAME)
    with trio.fail_after(10):
        resp = await client.request("/targets/alias")
    assert resp.status == 200
    assert resp.body == BLOB


async def test_request_smuggling_with_body_is_rejected_and_closed(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request(
            "/metadata/timestamp.json", headers={"Transfer-Encoding": "chunked"}
        )
        assert resp.status == 400
        assert await client.closed_by_server()


async def test_oversized_request_head_is_rejected(client: RawClient) -> None:
    with trio.fail_after(10):
        resp = await client.request("/metadata/timestamp.json", headers={"X-Big": "a" * 20000})
    assert resp.status == 431


async def test_garbage_request_line_gets_400(client: RawClient) -> None:
    with trio.fail_after(10):
        await client.stream.send_all(b"\x16\x03\x01 garbage\r\n\r\n")
        resp = await client.read_response()
    assert resp.status == 400


async def test_pipelined_requests_are_answered_in_order(client: RawClient) -> None:
    req = b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: t\r\n\r\n"
    req2 = b"GET /metadata/1.root.json HTTP/1.1\r\nHost: t\r\n\r\n"
    with trio.fail_after(10):
        await client.stream.send_all(req + req2)
        first = await client.read_response()
        second = await client.read_response()
    assert first.body == b'{"t": 1}'
    assert second.body == b'{"signed": {}}'


async def test_http10_client_gets_connection_closed(port: int) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            raw = RawClient(stream)
            await stream.send_all(b"GET /metadata/timestamp.json HTTP/1.0\r\n\r\n")
            resp = await raw.read_response()
            assert resp.status == 200
            assert await raw.closed_by_server()


async def test_large_target_streams_intact_under_backpressure(
    repo_dir: Path, client: RawClient
) -> None:
    big = os.urandom(1 << 20) * 24  # 24 MiB: many sendfile calls against a full socket buffer
    (repo_dir / "targets" / "big").write_bytes(big)
    with trio.fail_after(60):
        resp = await client.request("/targets/big")
        tail = await client.request("/targets/big", headers={"Range": "bytes=-3"})
    assert resp.status == 200
    assert resp.body == big
    assert tail.body == big[-3:]


async def test_falls_back_to_read_and_send_when_sendfile_is_unsupported(
    client: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sendfile(*_args: object) -> int:
        raise OSError(errno.EINVAL, "sendfile not supported here")

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    with trio.fail_after(10):
        resp = await client.request(f"/targets/{BLOB_NAME}", headers={"Range": "bytes=7-"})
    assert resp.status == 206
    assert resp.body == BLOB[7:]


async def test_idle_keep_alive_connection_is_closed(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "IDLE_TIMEOUT_S", 0.05)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await RawClient(stream).closed_by_server()


async def test_keys_of_a_real_repository_are_not_reachable(tmp_path: Path) -> None:
    from edgeagent.publisher.repo import Repository

    repo = Repository.init(tmp_path / "real")
    key_name = next((repo.keys_dir).glob("*.key")).name
    async with trio.open_nursery() as nursery:
        _h, bound = await nursery.start(serve_registry, repo.path, "127.0.0.1", 0)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", bound)
            async with stream:
                c = RawClient(stream)
                root = await c.request("/metadata/1.root.json")
                statuses = [
                    (await c.request(t)).status
                    for t in (
                        f"/keys/{key_name}",
                        "/keys/policy.toml",
                        f"/metadata/..%2Fkeys%2F{key_name}",
                        f"/targets/%2e%2e/keys/{key_name}",
                        "/.publisher.lock",
                    )
                ]
        nursery.cancel_scope.cancel()
    assert root.status == 200
    assert root.body == repo.root_path.read_bytes()
    assert all(s in (400, 404) for s in statuses)

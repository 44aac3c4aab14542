"""The registry server's pure HTTP decisions: request parsing, path rules, ranges, 304s."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.registry.server_core import (
    SERVED_FOLDERS,
    FileInfo,
    HttpError,
    Request,
    http_date,
    parse_head,
    parse_range,
    plan_file,
    render_head,
    resolve_target,
)

INFO = FileInfo(size=1000, mtime=1_700_000_000.5, ino=42, mtime_ns=1_700_000_000_500_000_000)


def req(method: str = "GET", **headers: str) -> Request:
    return Request(
        method, "/targets/x", "HTTP/1.1", {k.replace("_", "-"): v for k, v in headers.items()}
    )


@given(st.binary(max_size=400))
def test_head_parser_raises_only_http_errors_on_garbage(data: bytes) -> None:
    try:
        parsed = parse_head(data)
    except HttpError as exc:
        status = exc.status
    else:
        assert parsed.version in ("HTTP/1.0", "HTTP/1.1")
        return
    assert 400 <= status < 600


@given(st.text(max_size=80))
def test_resolved_paths_never_leave_the_served_folders(target: str) -> None:
    try:
        segments = resolve_target(target)
    except HttpError as exc:
        status = exc.status
    else:
        assert segments[0] in SERVED_FOLDERS
        assert all(s not in ("", ".", "..") and "/" not in s and "\\" not in s for s in segments)
        assert not any(s.startswith(".") for s in segments)
        return
    assert status in (400, 404)


def test_parse_head_reads_request_line_and_joins_repeated_headers() -> None:
    r = parse_head(b"GET /metadata/1.root.json HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2")
    assert (r.method, r.target, r.version) == ("GET", "/metadata/1.root.json", "HTTP/1.1")
    assert r.headers == {"host": "a", "x-a": "1, 2"}
    assert r.keep_alive


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /x HTTP/2.0", 505),
        (b"GET /x", 400),
        (b"GET  /x HTTP/1.1", 400),
        (b"GET /x HTTP/1.1\r\nBad Header: x", 400),
        (b"GET /x HTTP/1.1\r\nContent-Length: 5", 413),
        (b"GET /x HTTP/1.1\r\nContent-Length: -1", 400),
        (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked", 400),
        (b"GET /x HTTP/1.1" + b"\r\nA: b" * 101, 431),
    ],
)
def test_malformed_or_smuggling_heads_are_rejected(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as exc:
        parse_head(head)
    assert exc.value.status == status
    assert exc.value.close


def test_keep_alive_rules_for_http10_and_11() -> None:
    assert not parse_head(b"GET /x HTTP/1.0").keep_alive
    assert parse_head(b"GET /x HTTP/1.0\r\nConnection: Keep-Alive").keep_alive
    assert not parse_head(b"GET /x HTTP/1.1\r\nConnection: close").keep_alive


@pytest.mark.parametrize(
    ("target", "segments"),
    [
        ("/metadata/1.root.json", ("metadata", "1.root.json")),
        ("/targets/abc.hello?x=1", ("targets", "abc.hello")),
        ("/targets/a%2Bb", ("targets", "a+b")),
    ],
)
def test_resolve_target_maps_served_files(target: str, segments: tuple[str, ...]) -> None:
    assert resolve_target(target) == segments


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/metadata/../keys/k", 400),
        ("/metadata/%2e%2e/keys/k", 400),
        ("/metadata/..%2fkeys", 400),
        ("/metadata/a%5cb", 400),
        ("/metadata/a%00", 400),
        ("/metadata/%ff", 400),
        ("/targets/.incoming-123", 400),
        ("//etc/passwd", 400),
        ("*", 400),
        ("/keys/policy.toml", 404),
        ("/%6Beys/policy.toml", 404),
        ("/metadata", 404),
    ],
)
def test_traversal_and_unserved_paths_are_refused(target: str, status: int) -> None:
    with pytest.raises(HttpError) as exc:
        resolve_target(target)
    assert exc.value.status == status


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=10-", (10, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=900-5000", (900, 999)),
        ("bytes=5-2", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str, span: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == span


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=-0", "bytes=5000-6000"])
def test_unsatisfiable_ranges_raise_416(header: str) -> None:
    with pytest.raises(HttpError) as exc:
        parse_range(header, 1000)
    assert exc.value.status == 416


@given(st.integers(0, 2000), st.integers(0, 2000), st.integers(0, 3000))
def test_satisfiable_range_stays_within_the_file(first: int, last: int, size: int) -> None:
    try:
        span = parse_range(f"bytes={first}-{last}", size)
    except HttpError:
        assert first >= size
    else:
        if span is not None:
            assert 0 <= span[0] <= span[1] < size


def test_plan_range_sets_206_and_content_range() -> None:
    plan = plan_file(req(range="bytes=10-19"), "x", INFO)
    assert (plan.status, plan.offset, plan.length) == (206, 10, 10)
    assert ("Content-Range", "bytes 10-19/1000") in plan.headers
    assert ("Content-Length", "10") in plan.headers


def test_plan_head_sends_no_body_but_full_length() -> None:
    plan = plan_file(req("HEAD"), "x.json", INFO)
    assert (plan.status, plan.length) == (200, 0)
    assert ("Content-Length", "1000") in plan.headers
    assert ("Content-Type", "application/json") in plan.headers


def test_if_none_match_wins_over_if_modified_since() -> None:
    tag = dict(plan_file(req(), "x", INFO).headers)["ETag"]
    assert plan_file(req(if_none_match=tag), "x", INFO).status == 304
    assert plan_file(req(if_none_match=f'"a", W/{tag}'), "x", INFO).status == 304
    assert plan_file(req(if_none_match="*"), "x", INFO).status == 304
    newer = http_date(INFO.mtime + 100)
    assert plan_file(req(if_none_match='"x"', if_modified_since=newer), "x", INFO).status == 200
    assert plan_file(req(if_modified_since=newer), "x", INFO).status == 304
    older = http_date(INFO.mtime - 100)
    assert plan_file(req(if_modified_since=older), "x", INFO).status == 200
    assert plan_file(req(if_modified_since="garbage"), "x", INFO).status == 200


def test_empty_file_gets_200_with_zero_length() -> None:
    empty = FileInfo(size=0, mtime=0.0, ino=1, mtime_ns=0)
    plan = plan_file(req(), "x", empty)
    assert (plan.status, plan.length) == (200, 0)
    assert plan_file(req(range="bytes=0-"), "x", empty).status == 416


def test_http_date_is_imf_fixdate() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1_700_000_000) == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_render_head_has_status_line_and_connection() -> None:
    plan = plan_file(req(), "x", INFO)
    head = render_head(plan, keep_alive=False, now=0).decode()
    assert head.startswith("HTTP/1.1 200 OK\r\n")
    assert "Connection: close\r\n" in head
    assert head.endswith("\r\n\r\n")


def test_mutable_metadata_must_be_revalidated_and_versioned_files_are_immutable() -> None:
    def cc(name: str) -> str:
        return dict(plan_file(req(), name, INFO).headers)["Cache-Control"]

    assert cc("timestamp.json") == "no-cache"
    assert cc("root.json") == "no-cache"
    assert "immutable" in cc("3.snapshot.json")
    assert "immutable" in cc("ab12.hello")

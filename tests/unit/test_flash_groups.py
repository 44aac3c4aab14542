"""Verification spans and write groups (`edgeagent.flash.plan`) and the helper threads that check
them (`edgeagent.flash.pipeline`): every written byte is covered by a signed sha256 or must be
zero, a group is checked as a whole, and the first failing group decides what was done."""

from __future__ import annotations

import hashlib
import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.flash.pipeline import Ordered, Pool, SpanCheck
from edgeagent.flash.plan import (
    BlockMap,
    Span,
    build_plan,
    chunk_spans,
    extents_from_bmap,
    group_plan,
    range_spans,
    signed_ranges,
)

KiB = 1024


@st.composite
def block_maps(draw: st.DrawFn) -> BlockMap:
    block = draw(st.sampled_from([512, 1024, 4096, 8192]))
    blocks = draw(st.integers(1, 200))
    size = blocks * block - draw(st.integers(0, block - 1))
    starts = sorted(draw(st.sets(st.integers(0, blocks - 1), min_size=1, max_size=12)))
    ranges: list[tuple[int, int]] = []
    for i, first in enumerate(starts):
        limit = starts[i + 1] - 1 if i + 1 < len(starts) else blocks - 1
        ranges.append((first, draw(st.integers(first, limit))))
    sums = tuple(f"{i:064x}" for i in range(len(ranges)))
    return BlockMap(size, block, tuple(ranges), sums)


@given(block_maps(), st.sampled_from([4 * KiB, 16 * KiB, 64 * KiB]))
def test_spans_cover_every_written_byte_and_no_group_splits_a_span(
    bmap: BlockMap, chunk_bytes: int
) -> None:
    plan = build_plan(extents_from_bmap(bmap), bmap.image_size, chunk_bytes=chunk_bytes)
    ranges = signed_ranges(bmap)
    assert ranges is not None
    spans = range_spans(plan, ranges)
    # The spans tile exactly the bytes the plan writes.
    tiles = [(sp.start, sp.end) for sp in spans]
    for a, b in itertools.pairwise(tiles):
        assert a[1] <= b[0]
    assert sum(e - s for s, e in tiles) == plan.mapped_bytes
    for s, e in tiles:
        assert any(c.offset <= s < c.end for c in plan.chunks)
        assert any(c.offset < e <= c.end for c in plan.chunks)
    # Every signed range is one span with its sum; the other spans must be zero and lie
    # outside every range.
    signed = [(sp.start, sp.end, sp.sha256.hex()) for sp in spans if sp.sha256]
    assert signed == ranges
    for sp in spans:
        if not sp.sha256:
            assert all(sp.end <= s or e <= sp.start for s, e, _ in ranges)
    # Groups partition the chunks in order, are contiguous, and hold whole spans.
    groups = group_plan(plan, spans)
    assert [c for g in groups for c in g.chunks] == list(plan.chunks)
    assert [sp for g in groups for sp in g.spans] == spans
    for g in groups:
        for left, right in itertools.pairwise(g.chunks):
            assert left.end == right.offset
        for sp in g.spans:
            assert g.offset <= sp.start
            assert sp.end <= g.end
        assert g.length == g.end - g.offset


def test_padding_of_a_small_block_map_must_be_zero() -> None:
    # Block 1 of a 512-byte map is written as the 4 KiB block 0-4095 (ALIGN).
    bmap = BlockMap(64 * KiB, 512, ((1, 1),), ("aa" * 32,))
    plan = build_plan(extents_from_bmap(bmap), bmap.image_size)
    ranges = signed_ranges(bmap)
    assert ranges is not None
    assert range_spans(plan, ranges) == [
        Span(0, 512),
        Span(512, 1024, bytes.fromhex("aa" * 32)),
        Span(1024, 4096),
    ]


def test_range_not_written_by_the_plan_is_a_programming_error() -> None:
    plan = build_plan([(0, 4096)], 64 * KiB)
    with pytest.raises(ValueError, match="not written by the plan"):
        range_spans(plan, [(8192, 12288, "00" * 32)])


def test_one_group_per_chunk_for_chunk_sums() -> None:
    plan = build_plan([(0, 40 * KiB)], 40 * KiB, chunk_bytes=16 * KiB)
    groups = group_plan(plan, chunk_spans(plan, [b"a", b"b", b"c"]))
    assert [len(g.chunks) for g in groups] == [1, 1, 1]


def _check(spans: list[Span], data: bytes) -> None:
    def mismatch(span: Span) -> Exception:
        return ValueError(f"span {span.start}-{span.end}")

    check = SpanCheck(spans, mismatch)
    view = memoryview(data)
    for pos in range(0, len(data), 3000):  # Pieces that do not line up with the spans.
        check.feed(pos, view[pos : pos + 3000])
    check.finish()


def test_span_check_accepts_the_signed_bytes_and_rejects_a_tampered_one() -> None:
    data = bytes(range(256)) * 40
    spans = [
        Span(0, 4000, hashlib.sha256(data[:4000]).digest()),
        Span(4000, 6000),
        Span(6000, 10240, hashlib.sha256(data[6000:]).digest()),
    ]
    good = data[:4000] + bytes(2000) + data[6000:]
    _check(spans, good)
    tampered = bytearray(good)
    tampered[7000] ^= 1
    with pytest.raises(ValueError, match="span 6000-10240"):
        _check(spans, bytes(tampered))
    hidden = bytearray(good)
    hidden[5000] = 0xEB  # A byte where the signed map says zero.
    with pytest.raises(ValueError, match="span 4000-6000"):
        _check(spans, bytes(hidden))
    with pytest.raises(ValueError, match="span 6000-10240"):
        _check(spans, good[:9000])


def test_first_failing_job_decides_even_when_a_later_one_finishes_first() -> None:
    failed = threading.Event()
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        if i == 1:
            failed.wait()  # Job 2 fails while job 1 is still running.
            raise RuntimeError("job 1 failed")
        if i == 2:
            failed.set()
            raise RuntimeError("job 2 failed")
        return i * 10

    with Ordered(job, 6, workers=2) as runner:
        assert runner.result(0, lambda: None) == 0
        with pytest.raises(RuntimeError, match="job 1 failed"):
            runner.result(1, lambda: None)
    assert sorted(started) == [0, 1, 2]  # Nothing after a failure starts.


def test_pool_lends_buffers_in_group_order() -> None:
    stopping = threading.Event()
    pool = Pool(3, stopping)
    first = pool.take(0, 2)
    got: list[int] = []

    def later() -> None:
        got.append(len(pool.take(2, 1)))

    waiter = threading.Thread(target=later)
    waiter.start()
    second = pool.take(1, 1)  # Group 1 goes before group 2, which waits for buffers.
    pool.give(first)
    waiter.join()
    assert got == [1]
    assert len(second) == 1

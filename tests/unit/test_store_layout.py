"""Store layout decisions (pure): index format, current+previous retention, scan and GC plans."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.errors import StoreError
from edgeagent.store import layout
from edgeagent.store.layout import BlobRef, Entry

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


def test_index_round_trip() -> None:
    index = {"app": (Entry(A, 3, "2"), Entry(B, 4, "1"))}
    assert layout.parse_index(layout.render_index(index), "x") == index


def test_record_pull_keeps_current_and_previous_only() -> None:
    idx = layout.record_pull({}, "app", Entry(A, 1, "1"))
    idx = layout.record_pull(idx, "app", Entry(B, 1, "2"))
    idx = layout.record_pull(idx, "app", Entry(C, 1, "3"))
    assert [e.sha256 for e in idx["app"]] == [C, B]
    assert layout.referenced(idx) == {B, C}


def test_record_pull_of_current_again_changes_nothing() -> None:
    idx = layout.record_pull({}, "app", Entry(A, 1, "1"))
    idx = layout.record_pull(idx, "app", Entry(B, 1, "2"))
    assert layout.record_pull(idx, "app", Entry(B, 1, "2")) == idx


def test_store_scan_plan_removes_garbage_keeps_partials() -> None:
    index = {"app": (Entry(A, 10, "1"),)}
    plan = layout.plan_scan(
        [(A, 10), (B, 5), ("junk", 3), (C, -1)],
        [f"{A}.partial", "x.partial", f"{B}.tmp"],
        index,
        gc=False,
    )
    deleted = dict(plan.delete)
    assert set(deleted) == {
        "blobs/sha256/junk",
        f"blobs/sha256/{C}",
        "tmp/x.partial",
        f"tmp/{B}.tmp",
    }
    assert deleted[f"blobs/sha256/{C}"] == "not a regular file"


def test_scan_plan_deletes_blob_whose_size_differs_from_index() -> None:
    plan = layout.plan_scan([(A, 9)], [], {"app": (Entry(A, 10, "1"),)}, gc=False)
    assert plan.delete == ((f"blobs/sha256/{A}", "size 9 differs from the recorded 10"),)


def test_gc_plan_deletes_unreferenced_blobs() -> None:
    plan = layout.plan_scan([(A, 1), (B, 1)], [], {"app": (Entry(A, 1, "1"),)}, gc=True)
    assert [rel for rel, _ in plan.delete] == [f"blobs/sha256/{B}"]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"schema": 2, "targets": {}}, "'schema'"),
        ({"schema": 1, "targets": []}, "'targets'"),
        ({"schema": 1, "targets": {"a": [{"sha256": "x", "length": 1, "version": ""}]}}, "sha256"),
        ({"schema": 1, "targets": {"a": [{"sha256": A, "length": -1, "version": ""}]}}, "length"),
        ({"schema": 1, "targets": {"a": [{"sha256": A, "length": 1, "version": 3}]}}, "version"),
    ],
)
def test_index_parser_names_the_bad_field(doc: object, field: str) -> None:
    with pytest.raises(StoreError, match=field):
        layout.parse_index(json.dumps(doc).encode(), "STORE/index.json")


@given(st.binary(max_size=200))
def test_index_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(StoreError):
        layout.parse_index(data, "index.json")


def test_paths_reject_non_digests() -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        layout.blob_relpath("../../etc/passwd")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        BlobRef("A" * 64, 1)
    assert layout.partial_relpath(A) == f"tmp/{A}.partial"

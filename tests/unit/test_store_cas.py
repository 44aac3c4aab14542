"""The content-addressed store on disk: publish only verified blobs, resume partials, lock, GC."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgeagent.errors import DigestMismatchError, StoreError
from edgeagent.store.cas import Store
from edgeagent.store.layout import BlobRef, Entry

DATA = b"0123456789" * 1000
REF = BlobRef(hashlib.sha256(DATA).hexdigest(), len(DATA))


def test_blob_published_only_after_verification(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        p = store.open_partial(REF, "app")
        p.append([DATA[:100], DATA[100:5000]])
        assert not store.blob_path(REF.sha256).exists()
        p.append([DATA[5000:]])
        path = p.finish()
        assert path == store.blob_path(REF.sha256)
        assert path.read_bytes() == DATA
        assert not p.path.exists()


def test_resume_rehashes_kept_prefix(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        p = store.open_partial(REF, "app")
        p.append([DATA[:4000]])
        p.close()
    with Store.open(tmp_path) as store:  # A new process: the prefix is kept by the scan.
        p = store.open_partial(REF, "app")
        assert p.kept == 4000
        p.append([DATA[4000:]])
        assert p.finish().read_bytes() == DATA


def test_rejects_tampered_bytes_and_deletes_partial(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        p = store.open_partial(REF, "app")
        p.append([b"X" * len(DATA)])
        with pytest.raises(DigestMismatchError, match=r"target app: sha256 check failed"):
            p.finish()
        assert not p.path.exists()
        assert not store.blob_path(REF.sha256).exists()


def test_rejects_short_download(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        p = store.open_partial(REF, "app")
        p.append([DATA[:10]])
        with pytest.raises(DigestMismatchError, match=r"target app: length check failed"):
            p.finish()


def test_refuses_to_write_past_signed_length(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        p = store.open_partial(REF, "app")
        with pytest.raises(StoreError, match="past the signed length"):
            p.append([DATA, b"x"])
        p.discard()


def test_verified_blob_rehashes_and_deletes_corrupted(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.blob_path(REF.sha256).write_bytes(b"Y" * len(DATA))
        assert store.verified_blob(REF) is None
        assert not store.blob_path(REF.sha256).exists()


def test_second_process_cannot_open_a_locked_store(tmp_path: Path) -> None:
    with Store.open(tmp_path), pytest.raises(StoreError, match="in use by another"):
        Store.open(tmp_path)


def test_gc_keeps_current_and_previous(tmp_path: Path) -> None:
    blobs = [b"v1", b"v2", b"v3"]
    with Store.open(tmp_path) as store:
        for i, b in enumerate(blobs):
            ref = BlobRef(hashlib.sha256(b).hexdigest(), len(b))
            p = store.open_partial(ref, "app")
            p.append([b])
            p.finish()
            store.record("app", Entry(ref.sha256, ref.length, str(i)))
        deleted = store.scan(gc=True)
        assert deleted == [f"blobs/sha256/{hashlib.sha256(b'v1').hexdigest()}"]
        left = sorted(p.name for p in (tmp_path / "blobs" / "sha256").iterdir())
        assert left == sorted(hashlib.sha256(b).hexdigest() for b in blobs[1:])

"""Helper threads of a flash [no I/O of its own]: ordered jobs, a buffer pool, span checks.

What it does:

- `Ordered` runs numbered jobs (read and hash a group; read a group back) on a few threads and
  hands their results to the calling thread in order, with a deterministic rule for failures
  (the first failing job wins; nothing after it starts);
- `Pool` lends page-aligned 4 MiB buffers (usable for O_DIRECT) group by group, in group order,
  so a bounded amount of memory holds checked bytes until they are written;
- `SpanCheck` checks bytes fed in ascending order against a group's spans (a sha256, or zeros).

``hashlib`` releases the GIL on large buffers, so two helpers hash on two cores while the calling
thread writes. What it does not do: read or write files, or decide anything (`edgeagent.flash.plan`
makes the spans; `edgeagent.flash.writer` does the I/O).
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from edgeagent.flash.plan import CHUNK_BYTES, Span

# Helper threads per phase: two hash while the calling thread writes (or waits), on two cores.
WORKERS = 2
T = TypeVar("T")
Poll = Callable[[], None]


def aligned_buffer(size: int = CHUNK_BYTES) -> mmap.mmap:
    """A page-aligned buffer (an anonymous mmap: usable for O_DIRECT), its pages populated.

    Populating the pages in one call costs about 2/3 of faulting them in one by one (measured
    here: 2.1 vs 3.2 ms of CPU per 4 MiB). Freed by the garbage collector (views of it may
    still be referenced by a traceback when a phase fails).
    """
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    return mmap.mmap(-1, size, flags=flags)


@functools.cache
def zero_chunk() -> bytes:
    # Made on first use: touching 4 MiB costs milliseconds, and most flashes never need it.
    return bytes(CHUNK_BYTES)


def is_zero(view: memoryview) -> bool:
    # bytes == bytes is a memcmp; memoryview == memoryview compares item by item (20x slower).
    zeros = zero_chunk()
    return view.tobytes() == (zeros if len(view) == len(zeros) else zeros[: len(view)])


class Stopped(Exception):
    """A helper thread noticed that the flash is stopping (error or cancellation)."""


class Ordered(Generic[T]):
    """Run ``job(i)`` for ``i`` in ``range(n)`` on helper threads; results are taken in order.

    Rules: jobs start in index order. When job ``j`` fails, no job after ``j`` starts, jobs
    before ``j`` run to completion, and `result` hands out their values in order, then raises
    the error at ``j`` (the first failing index wins). So what happens before the first failure
    does not depend on thread timing. Leaving the context stops the helpers (a running job
    stops at its next `check_stop`) and joins them.
    """

    def __init__(self, job: Callable[[int], T], n: int, workers: int | None = None) -> None:
        self._job = job
        self._n = n
        self._cond = threading.Condition()
        self._next = 0
        self._done: dict[int, T] = {}
        self._error: BaseException | None = None
        self._error_at = n
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"flash-helper-{k}", daemon=True)
            for k in range(max(1, min(workers or WORKERS, n)))
        ]

    def __enter__(self) -> Ordered[T]:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join()

    def check_stop(self) -> None:
        """Raise `Stopped` in a job when the flash is stopping."""
        if self.stopping.is_set():
            raise Stopped

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self._cond:
                i = self._next
                if i >= min(self._n, self._error_at):
                    return
                self._next += 1
            try:
                value = self._job(i)
            except Stopped:
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread.
                with self._cond:
                    if i < self._error_at:
                        self._error, self._error_at = exc, i
                    self._cond.notify_all()
                return
            with self._cond:
                self._done[i] = value
                self._cond.notify_all()

    def result(self, i: int, poll: Poll) -> T:
        """Wait for job ``i`` (calling ``poll`` meanwhile) and return its value.

        Raises:
            BaseException: the error of the first failed job, when that is job ``i`` or earlier.
        """
        while True:
            with self._cond:
                if i in self._done:
                    return self._done.pop(i)
                if self._error is not None and i >= self._error_at:
                    raise self._error
                self._cond.wait(0.05)
            poll()


class Pool:
    """Page-aligned 4 MiB buffers handed out whole-group at a time, in group order.

    Groups take their buffers in ascending order, so the writer (which frees them in the same
    order) can never wait for a group that waits for buffers held by a later one.
    """

    def __init__(self, limit: int, stopping: threading.Event) -> None:
        self.limit = limit
        self._free: list[mmap.mmap] = []
        self._made = 0
        self._turn = 0
        self._cond = threading.Condition()
        self._stopping = stopping

    def take(self, turn: int, count: int) -> list[mmap.mmap]:
        """Take ``count`` buffers as group ``turn`` (0 for a group that holds none)."""
        with self._cond:
            while self._turn != turn or (len(self._free) + self.limit - self._made) < count:
                if self._stopping.is_set():
                    raise Stopped
                self._cond.wait(0.05)
            taken = self._free[len(self._free) - min(count, len(self._free)) :]
            del self._free[len(self._free) - len(taken) :]
            while len(taken) < count:
                taken.append(aligned_buffer())
                self._made += 1
            self._turn += 1
            self._cond.notify_all()
            return taken

    def give(self, buffers: Sequence[mmap.mmap]) -> None:
        """Return buffers."""
        with self._cond:
            self._free.extend(buffers)
            self._cond.notify_all()


class SpanCheck:
    """Checks a group's bytes, fed in ascending order, against its spans."""

    def __init__(self, spans: Sequence[Span], mismatch: Callable[[Span], Exception]) -> None:
        self.spans = spans
        self.mismatch = mismatch
        self.at = 0
        self.hash: hashlib._Hash | None = None

    def feed(self, pos: int, piece: memoryview) -> None:
        """Feed ``piece`` found at offset ``pos``; raise ``mismatch`` for a wrong span."""
        while piece and self.at < len(self.spans):
            span = self.spans[self.at]
            if pos < span.start:  # Not covered by a span (not produced by plan.py).
                raise AssertionError(f"offset {pos} is not covered by a span")
            n = min(span.end - pos, len(piece))
            part, piece = piece[:n], piece[n:]
            pos += n
            if not span.sha256:
                if not is_zero(part):
                    raise self.mismatch(span)
            else:
                if self.hash is None:
                    self.hash = hashlib.sha256()
                self.hash.update(part)
            if pos == span.end:
                if span.sha256:
                    assert self.hash is not None
                    digest, self.hash = self.hash.digest(), None
                    if digest != span.sha256:
                        raise self.mismatch(span)
                self.at += 1

    def finish(self) -> None:
        """Raise ``mismatch`` if a span was not fed completely."""
        if self.at < len(self.spans):
            raise self.mismatch(self.spans[self.at])

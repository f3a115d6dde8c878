"""Write chunks to a file on a helper thread, so receiving the next chunk overlaps the write.

Writing from user space into the page cache costs about as much CPU here as receiving the same
bytes over HTTP (1 GiB: ~1.5 s on these VMs), and while the scanning thread writes, nobody
asks uvicorn for more of the body: it stops reading the socket after 64 KiB, and the client
waits. :class:`BackgroundWriter` copies each chunk's non-zero runs into one of two buffers and
writes them on a helper thread, so the scanning thread goes back to the socket at once. Memory:
two chunk buffers per writer, allocated at the first chunk (an idle upload costs nothing). A
chunk that is a view of ``bytes`` (an API upload's: :func:`imageport.api.bridge.body_chunks`)
cannot change, so it is kept as it is until written, not copied: that copy of every byte was a
third of the API process's CPU during an upload (perf, 1 GiB, 2026-12-03).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from imageport.pipeline.data import extents
from imageport.pipeline.data.extents import data_runs

BUFFERS = 2  # one being written, one being filled


class BackgroundWriter:
    """Writes the non-zero runs of chunks at their offsets in ``fd``; zero blocks stay holes."""

    def __init__(self, fd: int, *, done: Callable[[int], None] | None = None) -> None:
        """Write into ``fd``.

        Args:
            fd: the target, open for writing.
            done: called on the helper thread with the end offset of each chunk once it is
                in the file, in order (a reader following the file as it fills).
        """
        self._fd = fd
        self._done = done
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._free: list[bytearray] = []
        self._allocated = 0
        # Each queued write and what it holds: one of the buffers, a chunk kept as it is, or
        # nothing (an all-zero chunk only tells the follower).
        self._pending: list[tuple[Future[None], bytearray | memoryview]] = []
        self._holding = 0  # entries of _pending that hold bytes (a buffer or a kept chunk)

    def write(self, chunk: memoryview, offset: int) -> None:
        """Queue ``chunk`` for writing at ``offset``; the caller may reuse it at once.

        A chunk of a mutable buffer is copied; a view of ``bytes`` is kept (it cannot change).

        Raises:
            NoSpace: an earlier write found the file system full.
            OSError: an earlier write failed otherwise.
        """
        runs = list(data_runs(chunk))
        if not runs:
            if self._done is not None:
                # Nothing to write, but the follower hears of it after the earlier writes.
                told = self._pool.submit(self._done, offset + len(chunk))
                self._pending.append((told, bytearray()))
            return  # all zeros: a hole, nothing to write
        held: bytearray | memoryview
        if isinstance(chunk.obj, bytes):
            while self._holding >= BUFFERS:
                self._settle_oldest()  # as many chunks in flight as buffers, no more
            held = view = chunk
        else:
            held = self._buffer(len(chunk))
            view = memoryview(held)
            view[: len(chunk)] = chunk
        written = self._pool.submit(self._write, view, runs, offset, len(chunk))
        self._pending.append((written, held))
        self._holding += 1

    def finish(self) -> None:
        """Wait until every queued chunk is written; raise the first failure."""
        while self._pending:
            self._settle_oldest()

    def close(self) -> None:
        """Stop the helper thread (queued writes are dropped when a failure ended the scan)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _buffer(self, size: int) -> bytearray:
        if self._allocated < BUFFERS:
            self._allocated += 1
            return bytearray(size)
        while not self._free:
            # Both buffers in use: wait for the older write (entries for all-zero chunks,
            # which only tell the follower, hold no buffer).
            self._settle_oldest()
        buffer = self._free.pop()
        if len(buffer) < size:
            buffer = bytearray(size)  # a larger chunk than before (rare): a new buffer
        return buffer

    def _settle_oldest(self) -> None:
        future, held = self._pending.pop(0)
        if held:
            self._holding -= 1
        if isinstance(held, bytearray) and held:
            self._free.append(held)
        future.result()

    def _write(
        self, view: memoryview, runs: list[tuple[int, int]], offset: int, length: int
    ) -> None:
        for start, end in runs:
            extents.pwrite_all(self._fd, view[start:end], offset + start)
        if self._done is not None:
            self._done(offset + length)

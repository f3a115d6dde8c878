"""Write a stream into a file on a helper thread, around the page cache, in aligned blocks.

A staged file is written once and read once (by the conversion that follows it), so it does
not belong in the page cache: filling 1 GiB of fresh page cache cost this VM 1.6-2.7 CPU-s
(the host backs every newly used page again; reading pages already cached costs 0.05), while
the same gigabyte written with O_DIRECT from a reused buffer cost 0.12-0.2 CPU-s (one thread,
8 MiB chunks, 2026-12-03; README, Performance). :class:`BackgroundWriter` copies the stream into two
page-aligned buffers in turn (a copy between reused buffers costs little) and writes each full
buffer on a helper thread with O_DIRECT, so the scanning thread goes back to its source at
once; its readers (:mod:`~imageport.pipeline.data.mapped`) read it back with O_DIRECT too.
Whatever is not block-aligned (a first partial block of a resumed download, the last partial
block), or a file system without O_DIRECT (tmpfs), is written through the page cache. Zero
blocks are never written: they stay holes. Memory: two buffers per writer, allocated at the
first chunk (an idle upload costs nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from imageport.pipeline.data import extents
from imageport.pipeline.data.extents import BLOCK, data_runs

BUFFERS = 2  # one being written, one being filled
BUFFER_SIZE = 8 * 1024**2  # bytes per buffer (the default ``chunk_size``)


class BackgroundWriter:
    """Writes a stream of chunks at their offsets in a file; zero blocks stay holes."""

    def __init__(
        self,
        fd: int,
        *,
        path: Path | None = None,
        done: Callable[[int], None] | None = None,
        size: int = BUFFER_SIZE,
    ) -> None:
        """Write into ``fd``.

        Args:
            fd: the target, open for writing.
            path: the target's path, opened again with O_DIRECT (None: the page cache only).
            done: called on the helper thread with the end offset of what is in the file,
                in order (a reader following the file as it fills), after every buffer.
            size: bytes per buffer (rounded up to whole blocks).
        """
        self._fd = fd
        self._direct = extents.open_direct(path) if path is not None else None
        self._done = done
        self._size = -(-max(size, BLOCK) // BLOCK) * BLOCK  # whole blocks: stays aligned
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._free: list[memoryview] = []
        self._allocated = 0
        self._pending: list[tuple[Future[None], memoryview]] = []
        self._buffer: memoryview | None = None  # being filled
        self._base = 0  # file offset of the buffer's first byte (a multiple of BLOCK)
        self._start = 0  # first byte of the buffer that is ours (an unaligned first offset)
        self._fill = 0  # bytes of the buffer filled, counted from its first byte

    def write(self, chunk: memoryview, offset: int) -> None:
        """Queue ``chunk`` for writing at ``offset``; the caller may reuse it at once.

        Raises:
            NoSpace: an earlier write found the file system full.
            OSError: an earlier write failed otherwise.
        """
        if self._buffer is not None and offset != self._base + self._fill:
            self._submit()  # not where the last chunk ended: what came before goes alone
        done = 0
        while done < len(chunk):
            if self._buffer is None:
                self._begin(offset + done)
            buffer = self._buffer
            assert buffer is not None  # noqa: S101 - _begin set it
            n = min(len(chunk) - done, len(buffer) - self._fill)
            buffer[self._fill : self._fill + n] = chunk[done : done + n]
            self._fill += n
            done += n
            if self._fill == len(buffer):
                self._submit()

    def finish(self) -> None:
        """Write what is buffered, wait until everything is written; raise the first failure."""
        if self._buffer is not None:
            self._submit()
        while self._pending:
            self._settle_oldest()

    def close(self) -> None:
        """Stop the helper thread (queued writes are dropped when a failure ended the scan)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def _begin(self, offset: int) -> None:
        """Start filling a buffer at file ``offset``, placed so the buffer stays aligned."""
        self._buffer = self._take()
        self._base = offset - offset % BLOCK
        self._start = self._fill = offset - self._base

    def _take(self) -> memoryview:
        if self._allocated < BUFFERS:
            self._allocated += 1
            return extents.aligned_buffer(self._size)
        while not self._free:
            self._settle_oldest()
        return self._free.pop()

    def _submit(self) -> None:
        buffer, self._buffer = self._buffer, None
        assert buffer is not None  # noqa: S101 - only called with a buffer being filled
        written = self._pool.submit(self._write, buffer, self._base, self._start, self._fill)
        self._pending.append((written, buffer))

    def _settle_oldest(self) -> None:
        future, buffer = self._pending.pop(0)
        self._free.append(buffer)
        future.result()

    def _write(self, buffer: memoryview, base: int, start: int, end: int) -> None:
        for lo, hi in data_runs(buffer[start:end]):
            extents.write_range(self._fd, self._direct, buffer, base, start + lo, start + hi)
        if self._done is not None:
            self._done(base + end)

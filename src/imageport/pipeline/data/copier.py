"""Copy a local file's ranges with the kernel's ``copy_file_range`` while Python reads them."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from imageport.errors import NoSpace, SourceUnavailable
from imageport.pipeline.data.extents import data_runs


class KernelCopier:
    """Stages a local file with ``copy_file_range`` on a helper thread, run by run.

    The scan loop still reads every byte once (to hash and inspect it); writing those bytes
    from user space costs ~3x more here than letting the kernel copy the same, page-cache-hot
    ranges of the source, and the helper thread overlaps that copy with the hashing. Zero runs
    are skipped, so holes stay holes.
    """

    def __init__(
        self,
        source: Path,
        fd: int,
        *,
        done: Callable[[int], None] | None = None,
    ) -> None:
        """Copy from ``source`` into ``fd``.

        Args:
            source: the file to copy ranges of.
            fd: the target, open for writing.
            done: called on the helper thread with the end offset of each chunk once it is
                in the target, in order (a reader following the target as it fills).
        """
        self._src = os.open(source, os.O_RDONLY)
        self._dst = fd
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-copy")
        self._done = done
        self._futures: list[Future[None]] = []

    def copy(self, chunk: memoryview, offset: int) -> None:
        """Queue the non-zero runs of ``chunk`` for copying to the same offset in the target.

        Args:
            chunk: the bytes at ``offset`` in the source, as read (only to find zero runs).
            offset: where ``chunk`` starts in the source.
        """
        self._raise_failures()
        runs = [(offset + a, b - a) for a, b in data_runs(chunk)]
        self._futures.append(self._pool.submit(self._copy_runs, runs, offset + len(chunk)))

    def finish(self) -> None:
        """Wait for every queued copy; raise the first failure."""
        for future in self._futures:
            future.result()
        self._futures.clear()

    def close(self) -> None:
        """Stop the helper thread and close the source."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self._src)

    def _raise_failures(self) -> None:
        done = [f for f in self._futures if f.done()]
        for future in done:
            future.result()
            self._futures.remove(future)

    def _copy_runs(self, runs: list[tuple[int, int]], end: int) -> None:
        for start, length in runs:
            copied = 0
            try:
                while copied < length:
                    at = start + copied
                    n = os.copy_file_range(self._src, self._dst, length - copied, at, at)
                    if n == 0:
                        raise SourceUnavailable("the source file shrank while it was staged")
                    copied += n
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace("staging ran out of space: free space there and retry") from exc
                raise
        if self._done is not None:
            self._done(end)

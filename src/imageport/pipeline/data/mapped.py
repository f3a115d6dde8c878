"""Convert to raw in one pass: read the guest's data where ``qemu-img map`` says it lies.

A raw image is the guest's bytes in order. For an image whose data clusters are stored as
they are (not compressed, not encrypted), ``qemu-img map`` tells, for every guest range, either
that it reads as zeros or the offset in the image file where its bytes lie. Reading those
ranges in guest order gives exactly the bytes ``qemu-img convert -O raw`` writes, so the
conversion can be one pass: each data range (still in the page cache from staging) is hashed
where it lies, through a read-only map of the complete file (:func:`_window`; read into a
buffer while the file still grows), while a writer thread reads it from the page cache and
writes it into the output with O_DIRECT; each zero range is hashed from a zero buffer and
left as a hole.
That replaces ``qemu-img convert`` followed by a second read of its output to hash it.

qemu-img still does every bit of parsing of the image (``map`` runs sandboxed like every qemu
call, on a file the inspector accepted): this module only reads byte ranges of a file the
pipeline wrote. Whatever it cannot account for — a compressed or encrypted range (no offset),
a range past the end of the file, a gap, a map longer than its cap — makes :func:`plan` say
None, and the caller converts with ``qemu-img convert`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageport.errors import StagingLost
from imageport.pipeline.data.extents import data_runs, pwrite_all
from imageport.pipeline.data.hashing import Digests, MultiHasher

#: Source formats (Image API names) whose ``qemu-img map`` offsets always point into the
#: image file itself. A VMDK's may point into another extent file (qemu 7.2's JSON map does
#: not name the file) and VHDX maps give no offsets: both go through ``qemu-img convert``.
FORMATS = frozenset({"qcow2", "vhd"})
SYNC_EVERY = 256 * 1024**2  # bytes of output written between two flushes to disk


@dataclass(frozen=True)
class Run:
    """A guest range: its bytes at ``offset`` in the image file, or zeros (``offset`` None)."""

    start: int
    length: int
    offset: int | None


def plan(extents: Sequence[dict[str, Any]], virtual_size: int, file_size: int) -> list[Run] | None:
    """The runs that make up the guest, in order, or None when qemu-img must read some part.

    Args:
        extents: ``qemu-img map --output=json`` as parsed.
        virtual_size: the guest size the inspector and ``qemu-img info`` agreed on.
        file_size: the size of the image file the offsets point into.
    """
    runs: list[Run] = []
    pos = 0
    for extent in extents:
        run = _run(extent, pos, file_size)
        if run is None:
            return None
        last = runs[-1] if runs else None
        if last is not None and last.offset is None and run.offset is None:
            runs[-1] = Run(last.start, last.length + run.length, None)  # one hole, not many
        else:
            runs.append(run)
        pos += run.length
    return runs if pos == virtual_size else None


def _run(extent: dict[str, Any], pos: int, file_size: int) -> Run | None:
    start, length = extent.get("start"), extent.get("length")
    if type(start) is not int or type(length) is not int or start != pos or length <= 0:
        return None  # out of order, overlapping or malformed: not ours to interpret
    if extent.get("compressed") or extent.get("depth", 0) != 0:
        return None  # compressed clusters need qemu's decoder; depth > 0 would be a backing file
    if not extent.get("data"):
        # Unallocated (no backing file: the chain is cut) or a zero cluster: reads as zeros.
        return Run(start, length, None) if extent.get("zero") else None
    offset = extent.get("offset")
    if type(offset) is not int or offset < 0 or offset + length > file_size:
        return None  # no offset (encrypted or compressed data) or past the file's end
    return Run(start, length, offset)


def coalesce(runs: Iterable[Run], max_data: int | None = None) -> Iterator[Run]:
    """Merge neighbouring runs: holes with holes, data with data that continues in the file.

    Two lists of runs describe the same guest exactly when their coalesced forms are equal
    (``qemu-img map`` splits and merges extents by its own rules). ``max_data`` caps a merged
    data run, so a reader that follows a file as it arrives can start on it sooner.
    """
    pending: Run | None = None
    for run in runs:
        if pending is not None and _continues(pending, run, max_data):
            pending = _joined(pending, run)
            continue
        if pending is not None:
            yield pending
        pending = run
    if pending is not None:
        yield pending


def _joined(last: Run, run: Run) -> Run:
    return Run(last.start, last.length + run.length, last.offset)


def _continues(last: Run, run: Run, max_data: int | None) -> bool:
    if last.offset is None or run.offset is None:
        return last.offset is None and run.offset is None
    if max_data is not None and last.length + run.length > max_data:
        return False
    return last.offset + last.length == run.offset


class LayoutDigest:
    """A digest of a guest layout (its coalesced runs), fed one run at a time in guest order.

    Lets two descriptions of one image be compared without keeping either in memory: a
    hostile layout can have millions of runs.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pending: Run | None = None

    def add(self, run: Run) -> None:
        """Account for the next run."""
        pending = self._pending
        if pending is not None and _continues(pending, run, None):
            self._pending = _joined(pending, run)
            return
        self._flush()
        self._pending = run

    def hexdigest(self) -> str:
        """The digest of every run added so far."""
        self._flush()
        return self._hash.hexdigest()

    def _flush(self) -> None:
        run, self._pending = self._pending, None
        if run is not None:
            self._hash.update(f"{run.start}:{run.length}:{run.offset};".encode())


def layout_digest(runs: Iterable[Run]) -> str:
    """The :class:`LayoutDigest` of ``runs``."""
    digest = LayoutDigest()
    for run in runs:
        digest.add(run)
    return digest.hexdigest()


def data_bytes(runs: Sequence[Run]) -> int:
    """How many bytes of the guest are read from the image file."""
    return sum(r.length for r in runs if r.offset is not None)


RING = 3  # chunk buffers a conversion reads into while the secure hash works on older ones
BLOCK = 4096  # O_DIRECT alignment of offsets, lengths and buffers (any logical block size)


class _Ring:
    """Chunk buffers reused in turn, each once the secure hash is done with it.

    With one buffer, every read would wait for both hashes and both hashes for the read; with
    three, the slower hash (SHA-512 here) always has the next chunk waiting. A chunk hashed
    where it lies (a mapped window) holds no buffer but counts as one in flight; from the
    first one on, buffers are given back instead of kept (a complete file needs none), so the
    windows' pages take their place in memory instead of adding to it.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: list[memoryview] = []
        self._allocated = 0
        self._keep = True  # buffers are reused, until the file is mapped instead
        self._held: deque[tuple[memoryview | None, Future[None]]] = deque()

    def next(self) -> memoryview:
        """A buffer nobody uses any more (allocated on demand, up to RING)."""
        while not self._free:
            if self._allocated < RING:
                self._allocated += 1
                # An anonymous map, not the heap's: once dropped, it is the system's at once.
                return memoryview(mmap.mmap(-1, self._size))
            self._settle()
        return self._free.pop()

    def room(self) -> None:
        """Wait until fewer than RING chunks are being hashed (for a mapped window)."""
        self._keep = False
        self._allocated -= len(self._free)
        self._free.clear()
        while len(self._held) >= RING:
            self._settle()

    def busy(self, view: memoryview | None, future: Future[None]) -> None:
        """``view`` (from :meth:`next`, or None) is in use until ``future`` is done."""
        self._held.append((view, future))

    def _settle(self) -> None:
        view, future = self._held.popleft()
        future.result()
        if view is not None and self._keep:
            self._free.append(view)
        elif view is not None:
            self._allocated -= 1


class _Output:
    """The raw output, written by a helper thread that reads the data ranges itself.

    The hashing loop only queues ``(source offset, length, output offset)``: the helper reads
    each range again from the page cache into its own page-aligned buffer and writes it with
    O_DIRECT, so the disk takes the bytes straight from that buffer. That costs little CPU
    (measured here for 1 GiB of data: ~0.35 CPU-s to read and write, against ~1.2 for
    ``copy_file_range`` into the page cache and ~1.6 for buffered writes, plus the write-back
    those leave behind) while the two hashes need both cores; and the writer may lag behind
    the hashes by any number of ranges, at no memory cost, until the zero ranges give the disk
    time to catch up. Anything unaligned (a last partial block), or a file system without
    O_DIRECT (tmpfs), is written buffered. Zero blocks are skipped either way: holes stay holes.
    """

    def __init__(
        self,
        source: Path,
        target: Path,
        chunk_size: int,
        *,
        ready: Callable[[int], None] | None,
        thread_init: Callable[[], None] | None,
    ) -> None:
        self._src = os.open(source, os.O_RDONLY)
        self.fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._direct: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._direct = os.open(target, os.O_WRONLY | os.O_DIRECT)
        self._ready = ready
        self._buffer = memoryview(mmap.mmap(-1, chunk_size))  # page-aligned, as O_DIRECT wants
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="raw-write", initializer=thread_init
        )
        self._pending: deque[Future[None]] = deque()
        self._unsynced = 0  # bytes written since the last flush (helper thread only)

    def write(self, at: int, length: int, to: int) -> None:
        """Queue the source's ``length`` bytes at ``at`` for writing at ``to`` in the output."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()  # raise an earlier failure here, at once
        self._pending.append(self._pool.submit(self._write, at, length, to))

    def finish(self) -> None:
        """Wait for every queued write; raise the first failure."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop the helper thread and close the descriptors."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in (self._direct, self.fd, self._src):
            if fd is not None:
                os.close(fd)

    def _write(self, at: int, length: int, to: int) -> None:
        view = self._buffer[:length]
        _read(self._src, view, at, self._ready)
        direct = self._direct is not None and to % BLOCK == 0 and length % BLOCK == 0
        for start, end in data_runs(view):
            # Runs start at 64 KiB steps of an aligned range and end at one or at its end:
            # every piece of a direct range is block-aligned too.
            if direct and self._direct is not None:
                pwrite_all(self._direct, view[start:end], to + start)
            else:
                pwrite_all(self.fd, view[start:end], to + start)
            self._unsynced += end - start
        if self._unsynced >= SYNC_EVERY:
            # Flushed as it is written, not all by the store's fsync: buffered bytes, and for
            # direct ones the block allocations the file system must still commit.
            os.fdatasync(self.fd)
            self._unsynced = 0


def write_raw(
    source: Path,
    runs: Iterable[Run],
    target: Path,
    hasher: MultiHasher,
    chunk_size: int,
    progress: Callable[[int], None],
    *,
    ready: Callable[[int], None] | None = None,
    thread_init: Callable[[], None] | None = None,
    final: Callable[[], bool] | None = None,
) -> Digests:
    """Write the guest described by ``runs`` to ``target`` as a sparse raw file; hash it.

    ``progress`` is called with the guest bytes done after every chunk; it may raise to stop
    (cancel, shutdown): the partial ``target`` is the caller's to remove. ``ready(end)``, when
    given, is called before bytes up to ``end`` of ``source`` are read: it returns once they
    are there (a file still being staged); ``final()`` then says whether the file is complete
    (without ``ready`` it is). ``thread_init`` runs first on the write thread.
    """
    ring = _Ring(chunk_size)
    done = 0
    output = _Output(source, target, chunk_size, ready=ready, thread_init=thread_init)
    try:
        with source.open("rb", buffering=0) as handle:
            src = handle.fileno()
            for run in runs:
                end = run.start + run.length
                while done < end:
                    n = min(chunk_size, end - done)
                    if run.offset is None:
                        hasher.update_zeros(n)  # a hole: hashed, never written
                    else:
                        at = run.offset + done - run.start
                        window = _window(src, at, n, ready, final)
                        if window is not None:
                            ring.room()
                            ring.busy(None, hasher.feed(window))
                        else:
                            buffer = ring.next()
                            _read(src, buffer[:n], at, ready)
                            ring.busy(buffer, hasher.feed(buffer[:n]))
                        output.write(at, n, done)
                    done += n
                    progress(done)
        output.finish()
        os.ftruncate(output.fd, done)
    finally:
        output.close()
    return hasher.digests()


def _window(
    src: int,
    at: int,
    length: int,
    ready: Callable[[int], None] | None,
    final: Callable[[], bool] | None,
) -> memoryview | None:
    """Bytes ``[at, at + length)`` of a complete ``src``, mapped read-only; None: read them.

    The hashes then read the page cache itself: copying a GiB out of it cost this VM 0.9
    CPU-s (perf). Only a complete file is mapped, never past its end, and imageport never
    shortens a staged file in place (a new staging unlinks the old file first): a mapped page
    cut off by a truncation would kill the process (SIGBUS). The mapping goes away with the
    last view of it, once both hashes are done.
    """
    if ready is not None:
        ready(at + length)
        if final is None or not final():
            return None  # still being staged: it may grow, and its tail may be a hole
    start = at - at % mmap.ALLOCATIONGRANULARITY
    try:
        if at + length > os.fstat(src).st_size:
            return None  # a final hole the file's length does not cover: read (zeros)
        mapped = mmap.mmap(src, at + length - start, access=mmap.ACCESS_READ, offset=start)
    except (OSError, ValueError):
        return None  # a file system that cannot map: read instead
    return memoryview(mapped)[at - start :]


def _read(src: int, view: memoryview, at: int, ready: Callable[[int], None] | None) -> None:
    """Fill ``view`` from ``src`` at ``at`` (once ``ready`` says those bytes are there)."""
    if ready is not None:
        ready(at + len(view))
    got = os.preadv(src, [view], at)
    if got != len(view) and ready is None:
        raise StagingLost("the staged file shrank while it was converted")
    if got != len(view):
        # A file being staged has its trailing zeros as a hole that is not yet part of its
        # length: ``ready`` said these bytes are final.
        view[got:] = bytes(len(view) - got)

"""Convert to raw in one pass: read the guest's data where ``qemu-img map`` says it lies.

A raw image is the guest's bytes in order. For an image whose data clusters are stored as
they are (not compressed, not encrypted), ``qemu-img map`` tells, for every guest range, either
that it reads as zeros or the offset in the image file where its bytes lie. Reading those
ranges in guest order gives exactly the bytes ``qemu-img convert -O raw`` writes, so the
conversion can be one pass: each data range is read once into a buffer (with O_DIRECT: the
stage writer left the staged file on the disk, not in the page cache), hashed there by MD5 and
the secure hash, and written into the output with O_DIRECT from the same buffer; each zero
range is hashed from a zero buffer and left as a hole.
That replaces ``qemu-img convert`` followed by a second read of its output to hash it.

qemu-img still does every bit of parsing of the image (``map`` runs sandboxed like every qemu
call, on a file the inspector accepted): this module only reads byte ranges of a file the
pipeline wrote. Whatever it cannot account for — a compressed or encrypted range (no offset),
a range past the end of the file, a gap, a map longer than its cap — makes :func:`plan` say
None, and the caller converts with ``qemu-img convert`` instead.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageport.errors import StagingLost
from imageport.pipeline.data import extents
from imageport.pipeline.data.extents import BLOCK, data_runs
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


RING = 3  # chunk buffers a conversion reads into while the hashes and the writer use older ones


class _Ring:
    """Chunk buffers reused in turn, each once both hashes and the writer are done with it.

    With one buffer, every read would wait for both hashes and both hashes for the read; with
    three, the slower hash (SHA-512 here) always has the next chunk waiting.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: list[memoryview] = []
        self._allocated = 0
        self._held: deque[tuple[memoryview, tuple[Future[None], ...]]] = deque()

    def next(self) -> memoryview:
        """A buffer nobody uses any more (allocated on demand, up to RING)."""
        while not self._free:
            if self._allocated < RING:
                self._allocated += 1
                return extents.aligned_buffer(self._size)
            self._settle()
        return self._free.pop()

    def busy(self, view: memoryview, *futures: Future[None]) -> None:
        """``view`` (from :meth:`next`) is in use until every one of ``futures`` is done."""
        self._held.append((view, futures))

    def drain(self) -> None:
        """Wait until no buffer is in use; raise the first failure."""
        while self._held:
            self._settle()

    def _settle(self) -> None:
        view, futures = self._held.popleft()
        for future in futures:
            future.result()
        self._free.append(view)


class _Reader:
    """Reads ranges of the staged file: with O_DIRECT where aligned, never into the page cache.

    The stage writer wrote the file around the page cache (:mod:`~imageport.pipeline.data.
    writer`), so its bytes are on the disk, not in memory: read with O_DIRECT they go straight
    into the conversion's buffer; read through the page cache, every page would first be
    allocated there, which costs this VM more than the read (1.6-2.7 CPU-s per GiB, against
    0.1; README, Performance). Unaligned ranges (clusters under 4 KiB) and file systems
    without O_DIRECT read through the page cache.
    """

    def __init__(self, source: Path, ready: Callable[[int], None] | None) -> None:
        self._fd = os.open(source, os.O_RDONLY)
        self._direct = extents.open_direct(source, os.O_RDONLY)
        self._ready = ready

    def read(self, view: memoryview, at: int) -> None:
        """Fill ``view`` from the file at ``at`` (once ``ready`` says those bytes are there)."""
        if self._ready is not None:
            self._ready(at + len(view))
        fd = self._fd
        if self._direct is not None and at % BLOCK == 0 and len(view) % BLOCK == 0:
            fd = self._direct
        got = os.preadv(fd, [view], at)
        if got != len(view) and self._ready is None:
            raise StagingLost("the staged file shrank while it was converted")
        if got != len(view):
            # A file being staged has its trailing zeros as a hole that is not yet part of its
            # length: ``ready`` said these bytes are final.
            view[got:] = bytes(len(view) - got)

    def close(self) -> None:
        """Close the descriptors."""
        for fd in (self._direct, self._fd):
            if fd is not None:
                os.close(fd)


class _Output:
    """The raw output, written by a helper thread from the buffers the hashes read.

    Written with O_DIRECT, so the disk takes the bytes straight from the buffer: ~0.2 CPU-s
    per GiB here, against ~1.2 for ``copy_file_range`` into the page cache and ~1.6 for
    buffered writes, plus the write-back those leave behind, while the two hashes need both
    cores. Anything unaligned (a last partial block), or a file system without O_DIRECT
    (tmpfs), is written buffered. Zero blocks are skipped either way: holes stay holes.
    """

    def __init__(self, target: Path, *, thread_init: Callable[[], None] | None) -> None:
        self.fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._direct = extents.open_direct(target)
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="raw-write", initializer=thread_init
        )
        self._unsynced = 0  # bytes written since the last flush (helper thread only)

    def write(self, view: memoryview, to: int) -> Future[None]:
        """Queue ``view`` (page-aligned; unchanged until the future is done) for ``to``."""
        return self._pool.submit(self._write, view, to)

    def close(self) -> None:
        """Stop the helper thread and close the descriptors."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in (self._direct, self.fd):
            if fd is not None:
                os.close(fd)

    def _write(self, view: memoryview, to: int) -> None:
        # Only a buffer that starts on a block boundary of the output can be written direct.
        direct = self._direct if to % BLOCK == 0 else None
        for start, end in data_runs(view):
            extents.write_range(self.fd, direct, view, to, start, end)
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
) -> Digests:
    """Write the guest described by ``runs`` to ``target`` as a sparse raw file; hash it.

    ``progress`` is called with the guest bytes done after every chunk; it may raise to stop
    (cancel, shutdown): the partial ``target`` is the caller's to remove. ``ready(end)``, when
    given, is called before bytes up to ``end`` of ``source`` are read: it returns once they
    are there (a file still being staged). ``thread_init`` runs first on the write thread.
    """
    ring = _Ring(chunk_size)
    done = 0
    reader = _Reader(source, ready)
    output = _Output(target, thread_init=thread_init)
    try:
        for run in runs:
            end = run.start + run.length
            while done < end:
                n = min(chunk_size, end - done)
                if run.offset is None:
                    hasher.update_zeros(n)  # a hole: hashed, never written
                else:
                    buffer = ring.next()
                    view = buffer[:n]
                    reader.read(view, run.offset + done - run.start)
                    ring.busy(buffer, hasher.feed(view), output.write(view, done))
                done += n
                progress(done)
        ring.drain()  # every write done, or the first failure raised
        os.ftruncate(output.fd, done)
    finally:
        output.close()
        reader.close()
    return hasher.digests()

"""PartFile: the parts of a multipart upload kept in a temporary file, not in memory.

A parallel multipart upload must hold every part in flight until S3 has taken it, so that a
part can be hashed (Content-MD5, and the SigV4 payload hash over plain HTTP) before it is sent
and sent again when botocore retries it. Held in memory, that is ``(in flight + 1) * part
size`` of RSS — 80 MiB with 16 MiB parts and 4 in flight, 320 MiB with the default 64 MiB
parts. Held here, it is one unlinked file of that size in a local directory: the bytes sit in
the page cache (reclaimable, and not part of the process's RSS), and each part is written once
with ``pwrite`` and read back by its upload in small blocks (:class:`PartBody`), as boto3's own
``upload_file`` reads a file. The price is CPU: about 0.4 CPU-s per GiB more than parts in
memory (the copy into the page cache and the reads back), which a server as slow as moto's
never shows but a client-bound upload does.

The file has one slot per part buffer. The writer takes a free slot (:meth:`PartFile.take`
blocks while every other one is in flight: that is the bound on parts in flight), fills it,
and hands it to an upload thread, which gives it back when the part is done, whatever the
outcome.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
from pathlib import Path

from imageport.errors import StoreUnavailable


class PartBody:
    """A read-only, seekable file over one filled slot: the ``Body`` botocore sends.

    botocore learns the length with ``len``, hashes the payload with ``read`` and ``seek``,
    rewinds with ``seek(0)`` before a retry, and urllib3 sends it with ``read(blocksize)``;
    every read is a ``pread`` at the body's own position, so bodies of one file never
    interfere. Its own length is never larger than the slot (a short last part is shorter).
    """

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd = fd
        self._start = start
        self._length = length
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable (botocore rewinds a body before retrying its request)."""
        return True

    def tell(self) -> int:
        """The position from the start of the part."""
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move within the part, as :meth:`io.IOBase.seek` does; positions are clamped to it."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (the rest of the part if ``size`` is None or negative)."""
        left = self._length - self._pos
        n = left if size is None or size < 0 else min(size, left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._start + self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` from the part without allocating (what :func:`md5_of` uses)."""
        view = memoryview(buffer)[: self._length - self._pos]
        if not view:
            return 0
        n = os.preadv(self._fd, [view], self._start + self._pos)
        self._pos += n
        return n


def md5_of(body: PartBody) -> bytes:
    """The MD5 digest of a part (S3's Content-MD5), read through one small reused buffer."""
    digest = hashlib.file_digest(body, lambda: hashlib.md5(usedforsecurity=False)).digest()
    body.seek(0)
    return digest


class PartFile:
    """``slots`` part buffers of ``part_size`` bytes each, in one unlinked temporary file.

    The file is created on the first :meth:`take` (so a writer that never writes costs
    nothing) in ``directory`` (the system's temporary directory if None) and vanishes when
    closed or when the process dies: it has no name (``O_TMPFILE``; elsewhere it is unlinked
    as soon as it is created). Its size never exceeds ``slots * part_size``: slots are
    overwritten, never appended.
    """

    def __init__(self, directory: Path | None, part_size: int, slots: int) -> None:
        self.part_size = part_size
        self._directory = directory
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(slots):
            self._free.put(slot)
        self._fd: int | None = None

    def take(self) -> int:
        """A free slot to fill; blocks while every slot is being uploaded.

        Raises:
            StoreUnavailable: the temporary file cannot be created.
        """
        if self._fd is None:
            self._fd = self._open()
        return self._free.get()

    def give(self, slot: int) -> None:
        """Hand back a slot whose upload is over (done or failed)."""
        self._free.put(slot)

    def write(self, slot: int, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` within ``slot`` (the caller keeps it inside the slot).

        Raises:
            OSError: the write failed (no space left, I/O error).
        """
        assert self._fd is not None  # noqa: S101 - a slot is only had through take()
        position = slot * self.part_size + offset
        while data:
            n = os.pwrite(self._fd, data, position)
            data, position = data[n:], position + n

    def body(self, slot: int, length: int) -> PartBody:
        """The first ``length`` bytes of ``slot``, as a body to upload."""
        assert self._fd is not None  # noqa: S101 - as in write()
        return PartBody(self._fd, slot * self.part_size, length)

    def close(self) -> None:
        """Close (and so remove) the file; safe to call twice. No body may be read after."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        try:
            if self._directory is not None:
                self._directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self._directory, prefix="s3-parts-") as f:
                return os.dup(f.fileno())  # keep the unlinked file open once f is closed
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the part file of an S3 upload in "
                f"{self._directory or tempfile.gettempdir()}: {exc}"
            ) from exc

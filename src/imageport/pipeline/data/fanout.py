"""One read fanned out to many store writers, each in its own thread, hashed once on the way.

The reader (the calling thread) copies each piece into one of a few pooled buffers and hands it
to every writer's bounded queue, then hashes it while the writers write. A buffer goes back to
the pool when the last writer is done with it, so memory is bounded by the pool
(``POOL_BUFFERS * chunk_size``) however slow a store is, and the slowest store sets the pace.
A failing store is dropped and remembered; the others go on. Holes travel as lengths.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from imageport.errors import PipelineError, StoreCopyFailed
from imageport.pipeline.context import Progress
from imageport.pipeline.data.extents import Piece
from imageport.pipeline.data.hashing import Digests, MultiHasher
from imageport.stores import Store, StoredObject, StoreWriter

POOL_BUFFERS = 4  # chunk buffers shared by the reader and all writers
_COMMIT = "commit"  # end of stream: commit the object
_ABORT = "abort"  # end of stream: the reader failed, drop the object


@dataclass
class FanOutResult:
    """What a fan-out wrote: committed objects, failed stores, and the hashes when asked."""

    digests: Digests | None
    stored: list[StoredObject] = field(default_factory=list)
    failed: dict[str, PipelineError] = field(default_factory=dict)


class _Buffer:
    """A pooled chunk buffer with a count of the writers still reading it."""

    def __init__(self, size: int, pool: queue.Queue[_Buffer]) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self._pool = pool
        self._users = 0
        self._lock = threading.Lock()

    def hand_out(self, users: int) -> None:
        """Set how many readers must release the buffer before it returns to the pool."""
        self._users = users

    def release(self) -> None:
        """One reader is done; the last one returns the buffer to the pool."""
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._pool.put(self)


class _Feeder(threading.Thread):
    """Writes what the reader hands it to one store writer, then commits or aborts."""

    def __init__(self, store_id: str, writer: StoreWriter) -> None:
        super().__init__(name=f"fanout-{store_id}", daemon=True)
        self.store_id = store_id
        self.writer = writer
        self.queue: queue.Queue[tuple[_Buffer, int] | int | str] = queue.Queue(POOL_BUFFERS * 2)
        self.error: PipelineError | None = None
        self.stored: StoredObject | None = None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if isinstance(item, str):
                self._finish(commit=item == _COMMIT)
                return
            try:
                if self.error is None:
                    self._write(item)
            except Exception as exc:  # noqa: BLE001 - any failure drops this store only
                self._fail(exc)
            finally:
                if isinstance(item, tuple):
                    item[0].release()  # even after a failure, so the reader never stalls

    def _write(self, item: tuple[_Buffer, int] | int) -> None:
        if isinstance(item, int):
            self.writer.write_hole(item)
        else:
            buffer, length = item
            self.writer.write(buffer.view[:length])

    def _finish(self, *, commit: bool) -> None:
        try:
            if commit and self.error is None:
                self.stored = self.writer.commit()
        except Exception as exc:  # noqa: BLE001 - recorded per store, like a write failure
            self._fail(exc)
        finally:
            self.writer.abort()  # a no-op after commit; drops the partial object otherwise

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, PipelineError):
            self.error = exc
        else:
            # A bug in a store must not pass for a store outage; keep its repr for the task.
            self.error = PipelineError(f"internal error writing to {self.store_id}: {exc!r}")
            self.error.__cause__ = exc
        self.writer.abort()


def fan_out(
    pieces: Iterable[Piece],
    writers: dict[str, StoreWriter],
    *,
    chunk_size: int,
    hash_algo: str | None,
    total: int | None,
    progress: Progress,
) -> FanOutResult:
    """Write ``pieces`` to every writer concurrently; hash them once unless ``hash_algo`` is None.

    Each writer is committed at the end, or aborted if its store failed or the read failed.
    Errors of the read itself propagate after every writer has been aborted.
    """
    feeders = [_Feeder(store_id, writer) for store_id, writer in writers.items()]
    for feeder in feeders:
        feeder.start()
    hasher = MultiHasher(hash_algo) if hash_algo else None
    end = _ABORT
    try:
        _Reader(feeders, chunk_size, hasher).pump(pieces, total, progress)
        end = _COMMIT
    finally:
        for feeder in feeders:
            feeder.queue.put(end)
        for feeder in feeders:
            feeder.join()
        if hasher is not None:
            hasher.close()
    result = FanOutResult(digests=hasher.digests() if hasher else None)
    for feeder in feeders:
        if feeder.stored is not None:
            result.stored.append(feeder.stored)
        elif feeder.error is not None:
            result.failed[feeder.store_id] = feeder.error
    return result


def fan_out_to_stores(
    pieces: Iterable[Piece],
    stores: Iterable[Store],
    image_id: str,
    *,
    size: int | None,
    chunk_size: int,
    hash_algo: str | None,
    progress: Progress,
) -> FanOutResult:
    """Open a writer for ``image_id`` on every store, then :func:`fan_out` ``pieces`` to them.

    A store that refuses to start a write is reported in ``failed``, as one that fails midway
    is. If the fan-out does not even start, every writer opened so far is aborted.
    """
    writers: dict[str, StoreWriter] = {}
    failed: dict[str, PipelineError] = {}
    try:
        for store in stores:
            try:
                writers[store.store_id] = store.begin_write(image_id, size=size)
            except PipelineError as exc:
                failed[store.store_id] = exc
        result = fan_out(
            pieces,
            writers,
            chunk_size=chunk_size,
            hash_algo=hash_algo,
            total=size or None,
            progress=progress,
        )
    except BaseException:
        for writer in writers.values():
            writer.abort()  # fan_out aborts the writers it took; this covers a failed start
        raise
    result.failed.update(failed)
    return result


class _Reader:
    """The reader's side: copy into pooled buffers, hand out, hash."""

    def __init__(self, feeders: list[_Feeder], chunk_size: int, hasher: MultiHasher | None) -> None:
        self._feeders = feeders
        self._hasher = hasher
        self._pool: queue.Queue[_Buffer] = queue.Queue()
        for _ in range(POOL_BUFFERS):
            self._pool.put(_Buffer(chunk_size, self._pool))

    def pump(self, pieces: Iterable[Piece], total: int | None, progress: Progress) -> None:
        """Hand every piece to the live writers and the hasher."""
        done = 0
        for piece in pieces:
            if self._feeders and all(f.error is not None for f in self._feeders):
                return  # every store failed: reading on cannot help
            if piece.data is not None:
                self._data(piece.data)
            else:
                self._hole(piece.hole)
            done += len(piece)
            progress(done, total)

    def _data(self, data: memoryview) -> None:
        while data:
            buffer = self._pool.get()  # blocks while every buffer is still being written
            n = min(len(data), len(buffer.data))
            buffer.view[:n] = data[:n]
            live = [f for f in self._feeders if f.error is None]
            buffer.hand_out(len(live) + 1)  # +1: the hasher below reads it too
            for feeder in live:
                feeder.queue.put((buffer, n))
            if self._hasher is not None:
                self._hasher.update(buffer.view[:n])
            buffer.release()
            data = data[n:]

    def _hole(self, length: int) -> None:
        for feeder in self._feeders:
            if feeder.error is None:
                feeder.queue.put(length)
        if self._hasher is not None:
            self._hasher.update_zeros(length)


def settle_failures(
    targets: Sequence[Store],
    stored: list[StoredObject],
    failed: dict[str, PipelineError],
    *,
    all_must_succeed: bool,
) -> None:
    """Keep the copies (best effort) or remove them all and raise (all or nothing).

    Raises:
        StoreUnavailable: a store failed and all must succeed, or every store failed.
    """
    if not failed:
        return
    if stored and not all_must_succeed:
        return  # best effort: the failed stores are reported in os_glance_failed_import
    by_id = {s.store_id: s for s in targets}
    for obj in stored:
        by_id[obj.store_id].delete(obj.url)  # all or nothing: remove the copies written
    store_id, first = next(iter(failed.items()))
    raise StoreCopyFailed(
        f"store {store_id} failed: {first}; no copy was kept",
        code=first.code,
        failed_stores=sorted(failed),
    ) from first

"""From the ASGI request body (async) to the pipeline's chunk iterators (sync, in a thread).

The staging scan is synchronous and CPU-bound (hashing, inspection), so it runs in a worker
thread; that thread pulls the body from the event loop, up to :data:`BATCH_BYTES` per trip.
uvicorn stops reading the socket while its buffer is full, so an upload holds at most one batch,
the chunk being scanned and the chunks its writer has not written yet (two) in memory, whatever
its size.

The thread waits for the client between two pieces, so it must come from the uploads' own
limiter (:mod:`imageport.api.upload_slots`), never from the pool other requests are served
from; each wait is bounded by ``client_socket_timeout``
(:mod:`imageport.api.body_timeout`), whose ``BodyReadTimeout`` reaches the thread as the
exception of :func:`body_chunks`' iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio.from_thread
from starlette.requests import Request

from imageport.pipeline import coalesce

BATCH_BYTES = 1024 * 1024  # body pieces handed to the thread per event-loop round trip


def body_chunks(request: Request) -> Iterator[memoryview]:
    """The request body as chunks of 1 MiB or more (:func:`~imageport.pipeline.coalesce`).

    Call only from an anyio worker thread. Each chunk is a view of a ``bytes`` object of its
    own, never of a reused buffer: whoever consumes it may keep it without copying it (the
    upload's writer does, which spares a copy of every byte).
    """
    stream: AsyncIterator[bytes] = request.stream().__aiter__()

    async def pull() -> list[bytes] | None:
        # uvicorn hands the body over in socket-sized pieces (64 KiB at most); one trip from
        # the thread to the loop and back per piece would cost more than the bytes' own
        # handling, so each trip brings up to BATCH_BYTES. StopAsyncIteration must not cross
        # the thread boundary: the end of the body is an empty answer, then None.
        pieces: list[bytes] = []
        size = 0
        try:
            while size < BATCH_BYTES:
                piece = await stream.__anext__()
                if piece:
                    pieces.append(piece)
                    size += len(piece)
        except StopAsyncIteration:
            if not pieces:
                return None
        return pieces

    def pieces() -> Iterator[memoryview]:
        while True:
            batch = anyio.from_thread.run(pull)
            if batch is None:
                return
            for piece in batch:
                yield memoryview(piece)

    return coalesce(pieces())

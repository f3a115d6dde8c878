"""From the ASGI request body (async) to the pipeline's chunk iterators (sync, in a thread).

The staging scan is synchronous and CPU-bound (hashing, inspection), so it runs in a worker
thread; that thread pulls the body from the event loop one piece at a time. uvicorn stops
reading the socket while its buffer is full, so at most one chunk per stage is held in memory,
whatever the size of the upload.

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


def body_chunks(request: Request, buffer: bytearray) -> Iterator[memoryview]:
    """The request body as ``buffer``-sized chunks; call only from an anyio worker thread."""
    stream: AsyncIterator[bytes] = request.stream().__aiter__()

    async def pull() -> bytes | None:
        # StopAsyncIteration must not cross the thread boundary: it is turned into None here.
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    def pieces() -> Iterator[memoryview]:
        while True:
            piece = anyio.from_thread.run(pull)
            if piece is None:
                return
            if piece:
                yield memoryview(piece)

    return coalesce(pieces(), buffer)

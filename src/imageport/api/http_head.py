"""uvicorn's httptools protocol, with the request head bounded in size and in time.

Why httptools rather than h11: its C parser (llhttp) costs about 1.5 CPU-seconds less per GiB
uploaded than h11's pure-Python one (a 1 GiB ``PUT`` into a sink that only writes the body: 2.5
against 4.0 CPU-s of the server process here), and on a small machine that CPU is taken from
the import hashing beside the upload (issue 17).

What h11 bounded itself (``h11_max_incomplete_event_size``) and uvicorn's httptools protocol
does not: httptools keeps a header's name and value until the value ends, and uvicorn keeps the
URL and every header until the head is complete, so a client sending one endless header line
would grow the process without limit. And neither protocol times out a head that stops
arriving: uvicorn cancels its keep-alive timer at the first byte of a request, so a client
trickling a head one byte at a time would hold its connection for as long as it likes (the
body has its own timeout, :mod:`imageport.api.body_timeout`).

:func:`bounded_protocol` makes the protocol class ``imageport api`` serves with: a head larger
than ``limit`` bytes is answered 431, and one not complete within ``timeout`` seconds of its
first byte is answered 408, each with ``Connection: close``; the route never sees either.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from imageport.api.body_timeout import TIMEOUT_CODE  # a stalled head is a stalled request
from imageport.api.errors import ERROR_CODE_HEADER, render_error

#: The ``error_code`` of the 431 answer to a head over the limit.
HEAD_TOO_LARGE = "request_head_too_large"


class BoundedHeadProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request head too large or too slow (see module doc)."""

    head_limit: int = 64 * 1024
    head_timeout: float = 900.0
    #: Body bytes buffered before the socket is no longer read (one asyncio read is 256 KiB).
    body_high_water: int = 256 * 1024

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # between requests, the next bytes are a head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        """Parse ``data``; refuse the request if its head has grown past ``head_limit``."""
        if self._in_head:
            # Counted before parsing, so one read (up to 256 KiB in asyncio) may pass the
            # limit before it is refused: the memory held stays bounded all the same.
            self._head_bytes += len(data)
            if self._head_timer is None and data:
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.head_limit:
            self._refuse(
                431,
                HEAD_TOO_LARGE,
                f"The request line and headers are longer than {self.head_limit} bytes: "
                "send fewer or shorter headers.",
            )

    def on_headers_complete(self) -> None:
        """The head is complete: neither bound applies to the body."""
        self._end_head()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Buffer a piece of the body; stop reading the socket past ``body_high_water``.

        uvicorn's own method, with a larger mark: at its 64 KiB, nearly every socket read (up
        to 256 KiB) paused reading and the app's next ``receive`` resumed it, two epoll
        calls and a tenth of the event loop's time per piece of an upload (issue 17).
        """
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        cycle.body += body
        if len(cycle.body) > self.body_high_water:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        """The request is complete: whatever comes next on the connection is a new head."""
        super().on_message_complete()
        # A pipelined request may follow on the same connection: its head starts afresh.
        self._in_head = True
        self._head_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head timer with the connection."""
        self._end_head()
        super().connection_lost(exc)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                408,
                TIMEOUT_CODE,
                f"The request line and headers did not arrive within {self.head_timeout:g} "
                "seconds: send the request again.",
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` in Glance's JSON error shape and close the connection."""
        self._end_head()
        if self.transport.is_closing():
            return
        body, media = render_error(status, message, code, "application/json")
        head = [
            STATUS_LINE[status],
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: " + media.encode() + b"\r\n",
            ERROR_CODE_HEADER.lower().encode() + b": " + code.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def bounded_protocol(limit: int, timeout: float) -> type[BoundedHeadProtocol]:
    """A BoundedHeadProtocol class refusing heads over ``limit`` bytes or ``timeout`` seconds.

    A class, not an instance: uvicorn makes one protocol object per connection from it.
    """
    return type(
        "BoundedHeadProtocol",
        (BoundedHeadProtocol,),
        {"head_limit": limit, "head_timeout": timeout},
    )

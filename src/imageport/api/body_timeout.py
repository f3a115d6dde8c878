"""A per-read timeout on every request body (``client_socket_timeout``, Glance's 900 s).

uvicorn times out idle keep-alive connections but not a request whose body stops arriving: a
client that announces a large ``Content-Length``, sends a little and goes quiet would keep its
request (and whatever the route holds for it: an upload's scan thread, its staging file) for
as long as the socket stays open. :class:`BodyTimeoutMiddleware` wraps the ASGI ``receive``
of every HTTP request so that each wait for the next piece of the body lasts at most the
timeout. When one runs out:

* the read raises :class:`BodyReadTimeout` in the route (an upload's scan thread gets it from
  :func:`imageport.api.bridge.body_chunks`, so its partial upload is discarded and the image
  goes back to ``queued`` by the usual clean-up);
* whatever the application answers after that (an error page about a broken body) is dropped
  and the client gets 408 ``request_timeout`` with ``Connection: close``, so uvicorn closes
  the connection instead of waiting for the rest of a body nobody will read.

Once the body is complete, ``receive`` is passed through untouched: after the body, ASGI
``receive`` only reports a disconnect, and waiting for that has no time limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageport.api.errors import ERROR_CODE_HEADER, render_error

log = structlog.get_logger(__name__)

#: The ``error_code`` of the 408 answer.
TIMEOUT_CODE = "request_timeout"


class BodyReadTimeout(Exception):
    """No piece of the request body arrived within ``client_socket_timeout`` seconds."""


@dataclass
class _Exchange:
    """One request's ``receive`` and ``send``, as the application sees them.

    A read of the body is timed by one watchdog per request, not by a timeout scope around
    each read: an upload makes tens of thousands of reads, and an anyio ``fail_after`` per
    read cost a seventh of the event loop's time during an upload (issue 17). A read only
    notes when it started waiting; the watchdog (a timer of the event loop) wakes at the
    earliest moment the current wait could run out, and cancels the waiting task if it did
    (cancelled and un-cancelled as :func:`asyncio.timeout` does, so no other cancellation is
    swallowed).

    Attributes:
        receive: the server's ``receive``.
        send: the server's ``send``.
        timeout: seconds one read of the body may wait.
        body_done: the whole body (or a disconnect) has been received.
        timed_out: a read of the body ran out of time.
        answered: a response has been started.
    """

    receive: Receive
    send: Send
    timeout: float
    body_done: bool = False
    timed_out: bool = False
    answered: bool = False
    _waiting_since: float | None = None  # loop time the current read started waiting
    _waiter: asyncio.Task[Any] | None = None
    _watchdog: asyncio.TimerHandle | None = None

    async def timed_receive(self) -> Message:
        """The next message; while the body is incomplete, within the timeout.

        Raises:
            BodyReadTimeout: nothing arrived in time.
        """
        if self.body_done:
            return await self.receive()  # only a disconnect can come now: no time limit
        loop = asyncio.get_running_loop()
        self._waiting_since = loop.time()
        self._waiter = asyncio.current_task()
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._waiting_since + self.timeout, self._watch)
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            # Ours only if the watchdog cancelled, and no one else did as well.
            if self.timed_out and self._waiter is not None and self._waiter.uncancel() == 0:
                raise BodyReadTimeout(
                    f"no request body data for {self.timeout:g} s (client_socket_timeout)"
                ) from None
            raise
        finally:
            self._waiting_since = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
            self.stop_watching()
        return message

    def stop_watching(self) -> None:
        """Cancel the watchdog (the body is complete, or the request is over)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        self._watchdog = None
        if self._waiting_since is None or self._waiter is None:
            return  # not waiting for the client now: the next read sets the watchdog again
        due = self._waiting_since + self.timeout
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._watchdog = loop.call_at(due, self._watch)  # a later read: wake at its end
            return
        self.timed_out = True
        self._waiter.cancel()

    async def guarded_send(self, message: Message) -> None:
        """Send, unless a read timed out before any answer (the 408 replaces the app's)."""
        # After a stalled read the application's own answer (a 400 about an unreadable body,
        # a 500 from a route that did not expect it) is dropped; the middleware answers 408.
        if self.timed_out and not self.answered:
            return
        if message["type"] == "http.response.start":
            self.answered = True
        await self.send(message)


class BodyTimeoutMiddleware:
    """Bounds each read of a request body; answers 408 and closes when one stalls (ASGI)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        """Wrap ``app``.

        Args:
            app: the ASGI application.
            timeout: seconds one read of the body may wait for the client.
        """
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with a timed ``receive``; answer 408 if the body stalled."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(receive, send, self.timeout)
        try:
            await self.app(scope, exchange.timed_receive, exchange.guarded_send)
        except Exception:
            if not exchange.timed_out or exchange.answered:
                raise
            # The exception is the stalled read itself, as it went up through the route:
            # expected, and answered below.
        finally:
            exchange.stop_watching()
        if exchange.timed_out and not exchange.answered:
            log.warning(
                "request body stalled",
                method=scope.get("method"),
                path=scope.get("path"),
                client=_client(scope),
                seconds=self.timeout,
            )
            await _answer_timeout(send, self.timeout, _accept(scope))


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def _accept(scope: Scope) -> str | None:
    accept = next((v for k, v in scope["headers"] if k.lower() == b"accept"), None)
    return None if accept is None else accept.decode("latin-1")


async def _answer_timeout(send: Send, seconds: float, accept: str | None) -> None:
    message = (
        f"the request body stopped arriving: no data for {seconds:g} seconds "
        "(client_socket_timeout); nothing was kept, send the request again"
    )
    body, media = render_error(408, message, TIMEOUT_CODE, accept)
    headers = [
        (b"content-type", media.encode()),
        (ERROR_CODE_HEADER.lower().encode(), TIMEOUT_CODE.encode()),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body may still come: closing is the only way not to read it.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The request id every answer carries in ``x-openstack-request-id``, as Glance's does.

Glance's context middleware takes the id the client sent in ``X-Openstack-Request-ID`` (at
most :data:`MAX_REQUEST_ID_LENGTH` characters, else 431) or makes one (``req-`` and a UUID),
prefixes ``req-`` when missing, and sends it back on the answer. Routes read it with
:func:`request_id_of`; an import records it on its task (Glance's task ``request_id``).
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageport.api.errors import ERROR_CODE_HEADER, render_error

#: Glance's ``max_request_id_length`` default (characters).
MAX_REQUEST_ID_LENGTH = 64
HEADER = b"x-openstack-request-id"
PREFIX = "req-"


class RequestIdMiddleware:
    """Gives every HTTP request an id and sends it back (ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Establish the request id, then hand on; the answer carries it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Request(scope).headers
        given = headers.get("x-openstack-request-id")
        if given and len(given) > MAX_REQUEST_ID_LENGTH:
            await _too_long(send, headers.get("accept"))
            return
        request_id = given or f"{PREFIX}{uuid.uuid4()}"
        if not request_id.startswith(PREFIX):
            request_id = PREFIX + request_id
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*kept, (HEADER, request_id.encode("latin-1"))]}
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _too_long(send: Send, accept: str | None) -> None:
    message = f"x-openstack-request-id is too long, max size {MAX_REQUEST_ID_LENGTH}"
    body, media = render_error(431, message, "invalid_request", accept)
    headers = [
        (b"content-type", media.encode()),
        (ERROR_CODE_HEADER.lower().encode(), b"invalid_request"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def request_id_of(request: Request) -> str | None:
    """The id :class:`RequestIdMiddleware` gave ``request`` (None outside it)."""
    found: str | None = getattr(request.state, "request_id", None)
    return found

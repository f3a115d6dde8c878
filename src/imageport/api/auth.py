"""Who is calling: the authentication middleware, and the identity routes receive.

:class:`AuthMiddleware` runs before any route. On every path but the open ones (``/``,
``/versions``, ``/healthz``, ``/readyz``) it drops the identity headers the client sent,
asks the configured strategy (:mod:`imageport.access.authn`) who is calling, and answers 401
when nobody is. Routes receive the result as a :data:`Caller` parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageport.access.authn import Authenticator, TokenGate
from imageport.access.identity import ADMIN_ROLE, Identity, is_identity_header
from imageport.api.errors import ERROR_CODE_HEADER, ApiError, render_error
from imageport.config import Settings
from imageport.errors import TransientError, Unauthenticated

__all__ = ["ADMIN_ROLE", "AuthMiddleware", "Caller", "Identity", "identify", "settings_of"]

#: Paths anyone may call: version discovery and the health checks.
OPEN_PATHS = frozenset({"/", "/versions", "/healthz", "/readyz"})


class AuthMiddleware:
    """Authenticates every request but those to :data:`OPEN_PATHS` (ASGI middleware)."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, gate: TokenGate | None = None
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.gate = gate
        # Token validation may block on Keystone: its threads must not be the ones uploads
        # and routes run in, or a slow Keystone would stall every request.
        self._limiter = anyio.CapacityLimiter(16)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate an HTTP request, then hand it on (or answer 401)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Read before they are dropped: only the strategy may look at what the client claims.
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # Whatever identity the client claims in headers is dropped, on every path, so no
        # route can read it.
        scope["headers"] = [
            (k, v) for k, v in scope["headers"] if not is_identity_header(k.decode("latin-1"))
        ]
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            if self.gate is not None:
                self.gate.check(headers)
            identity = await self._authenticate(headers)
        except (Unauthenticated, TransientError) as exc:
            # TransientError: Keystone unreachable or failing. A 503 here, never a pass, and
            # never the 500 a middleware exception would become.
            await self._refuse(send, exc, headers.get("accept"))
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)

    async def _authenticate(self, headers: Mapping[str, str]) -> Identity:
        if not self.authenticator.blocking:
            return self.authenticator.authenticate(headers)
        return await anyio.to_thread.run_sync(
            self.authenticator.authenticate, headers, limiter=self._limiter
        )

    async def _refuse(
        self, send: Send, exc: Unauthenticated | TransientError, accept: str | None
    ) -> None:
        status = 401 if isinstance(exc, Unauthenticated) else 503
        body, media = render_error(status, exc.message, exc.code, accept)
        headers = [
            (b"content-type", media.encode()),
            (ERROR_CODE_HEADER.lower().encode(), exc.code.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        challenge = self.authenticator.challenge() if status == 401 else None
        if challenge is not None:
            headers.append((b"www-authenticate", challenge.encode("latin-1")))
        start: Message = {"type": "http.response.start", "status": status, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})


def settings_of(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def identify(request: Request) -> Identity:
    """FastAPI dependency: the identity the middleware established.

    Raises:
        ApiError: 401 when the request was not authenticated (an open path).
    """
    # async: no thread-pool hand-off per request (see context_of in imageport.api.deps)
    identity: Identity | None = getattr(request.state, "identity", None)
    if identity is None:
        raise ApiError(401, "this request needs an authenticated identity", code="unauthorized")
    return identity


#: Parameter type of a route that needs the caller's identity.
Caller = Annotated[Identity, Depends(identify)]

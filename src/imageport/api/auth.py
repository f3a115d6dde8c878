"""Who is calling: Glance's header identity (no Keystone), and the optional static token.

Like Glance's deployment without Keystone, the caller's identity is read from ``X-Project-Id``
(or the older ``X-Tenant-Id``), ``X-User-Id`` and ``X-Roles`` (comma-separated; ``admin``
makes an administrator). A request with neither a project nor roles is anonymous and, as in
Glance's ``UnauthenticatedContextMiddleware``, acts as an administrator: bind the API to a
private address or set ``api_token``. With ``api_token`` set, every API request must carry that
token in ``X-Auth-Token`` (401 otherwise).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from imageport.api.errors import ApiError
from imageport.config import Settings

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Identity:
    """The caller: project, user and roles."""

    project_id: str | None
    user_id: str | None
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        """Admins see and change every image; anonymous callers are admins (see the module)."""
        return ADMIN_ROLE in self.roles or (self.project_id is None and not self.roles)


def settings_of(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def identify(request: Request) -> Identity:
    """FastAPI dependency: check the token, then read the identity headers.

    Raises:
        ApiError: 401 when ``api_token`` is set and the request does not carry it.
    """
    token = settings_of(request).api_token
    if token is not None:
        given = request.headers.get("X-Auth-Token", "")
        # Constant-time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "this API needs a valid X-Auth-Token", code="unauthorized")
    headers = request.headers
    project = headers.get("X-Project-Id") or headers.get("X-Tenant-Id") or None
    roles = frozenset(r.strip().lower() for r in headers.get("X-Roles", "").split(",") if r.strip())
    return Identity(project_id=project, user_id=headers.get("X-User-Id") or None, roles=roles)


#: Parameter type of a route that needs the caller's identity.
Caller = Annotated[Identity, Depends(identify)]

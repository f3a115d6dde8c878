"""Version discovery and negotiation, as Glance 33's ``versionnegotiation`` filter does it.

Glance looks at the first segment of every path before anything else (before authentication,
so these answers need no token):

* ``/versions`` (and anything under it) is the versions document, 200;
* ``/v2``, and ``/v2.0`` … ``/v2.17`` (every version the document lists; not ``/v2.14``,
  ``/v2.16``, ``/v2.18``, which need Glance's image cache), are the v2 API: ``/v2.5/images``
  is ``/v2/images``;
* anything else — ``/``, ``/v1/images``, ``/v3/images``, ``/va.1`` — is the versions document
  with 300 Multiple Choices;
* ``Accept: application/vnd.openstack.images-v2`` names the version instead of the path:
  ``GET /images`` with it is ``GET /v2/images``.

``/v2`` (and ``/v2.N``) redirects to ``/v2/`` with 302, as Glance's URL map does. Glance
then answers ``/v2/`` with 404 (its v2 router has no route there); imageport answers the
versions document (200) instead, deliberately: openstacksdk pointed at an endpoint that ends
in ``/v2`` or ``/v2/`` (``image_endpoint_override``) looks for a version document there and
nowhere else (keystoneauth's "version hack" is off on that path), follows the redirect, and
fails with DiscoveryFailure on Glance's 404 — checked against Glance 33.0.0 with openstacksdk
4.22. Both answers come before authentication, because keystoneauth's discovery request
carries no token. The links are absolute, built from the request's scheme and host, as
Glance builds them from ``req.application_url``. imageport's own paths (``/healthz``,
``/readyz``, ``/openapi.json``) pass untouched.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

#: The versions Glance 33 lists with multiple stores and without an image cache (2.14, 2.16
#: and 2.18 are the cache API's), in Glance's own order: 2.17 is CURRENT, the others
#: SUPPORTED. All are served by the same v2 routes.
VERSIONS = (
    *("2.15", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8"),
    *("2.17", "2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.1", "2.0"),
)
#: The version reported as CURRENT.
CURRENT_VERSION = "2.17"
#: First path segments that name the v2 API (Glance's allowed versions).
V2_SEGMENTS = frozenset({"v2", *(f"v{version}" for version in VERSIONS)})
#: imageport's own paths, outside Glance's version scheme.
OWN_SEGMENTS = frozenset({"healthz", "readyz", "openapi.json"})
#: Glance's media-type versioning prefix.
VND_MEDIA_TYPE = "application/vnd.openstack.images-"


def versions_document(base_url: str) -> dict[str, Any]:
    """The versions document, with links under ``base_url`` (e.g. ``http://host:9292``)."""
    href = f"{base_url.rstrip('/')}/v2/"
    return {
        "versions": [
            {
                "id": f"v{version}",
                "status": "CURRENT" if version == CURRENT_VERSION else "SUPPORTED",
                "links": [{"rel": "self", "href": href}],
            }
            for version in VERSIONS
        ]
    }


class VersionNegotiationMiddleware:
    """Answers version discovery and maps versioned paths to ``/v2`` (ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the path to the v2 routes, or answer the versions document."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        stripped = path.lstrip("/")
        first, slash, rest = stripped.partition("/")
        if first in OWN_SEGMENTS:
            await self.app(scope, receive, send)
            return
        if first == "versions":
            await self._answer(scope, send, 200)
            return
        accept = Request(scope).headers.get("accept", "")
        if accept.startswith(VND_MEDIA_TYPE):
            # Media-type versioning: the path is kept whole, under the version named.
            version, tail = accept[len(VND_MEDIA_TYPE) :], path
        else:
            version, tail = first, slash + rest
        if version not in V2_SEGMENTS:
            await self._answer(scope, send, 300)
            return
        if tail == "":
            # Glance's URL map sends /v2 on to /v2/ (the query is dropped, as there).
            await self._redirect(scope, send)
            return
        if tail == "/":
            # Glance answers 404 here; the document lets openstacksdk's discovery from an
            # endpoint that ends in /v2 succeed (see the module doc).
            await self._answer(scope, send, 200)
            return
        new_path = "/v2" + tail
        if new_path != path:
            raw: bytes = scope.get("raw_path") or path.encode("latin-1")
            if tail is not path:
                # The raw path keeps its percent-encoding: only its first segment changes.
                first_end = raw.find(b"/", len(raw) - len(raw.lstrip(b"/")))
                raw = raw[first_end:] if first_end >= 0 else b""
            scope = {**scope, "path": new_path, "raw_path": b"/v2" + raw}
        await self.app(scope, receive, send)

    @staticmethod
    async def _redirect(scope: Scope, send: Send) -> None:
        location = f"{str(Request(scope).base_url).rstrip('/')}/v2/"
        headers = [
            (b"location", location.encode("latin-1")),
            (b"content-type", b"text/plain; charset=utf8"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _answer(scope: Scope, send: Send, status: int) -> None:
        base = str(Request(scope).base_url)
        body = json.dumps(versions_document(base)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

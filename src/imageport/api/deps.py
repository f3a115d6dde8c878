"""What routes share: the app's services and queue, and the image view for a caller."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from imageport.access.policy import Policy
from imageport.access.quotas import Quotas
from imageport.api.auth import Identity
from imageport.api.errors import bad_request
from imageport.config import Settings
from imageport.pipeline import Services
from imageport.records import Image, image_to_dict


@dataclass(frozen=True)
class ApiContext:
    """The services and how to queue an import task."""

    services: Services
    enqueue: Callable[[str], None]
    #: Glance's unified limits and per-image quotas (see imageport.access.quotas).
    quotas: Quotas
    #: Glance's policy rules, with the operator's overrides (see imageport.access.policy).
    policy: Policy

    @property
    def settings(self) -> Settings:
        """The settings."""
        return self.services.settings


async def context_of(request: Request) -> ApiContext:
    """The app's :class:`ApiContext` (set at start-up)."""
    # async although it never awaits: FastAPI runs a plain ``def`` dependency on its thread
    # pool, and those hand-offs (one per dependency and request) made GET /v2/images/ID cost
    # 7.5 ms of server CPU instead of 6.5 here. Every cheap dependency is async for this.
    ctx: ApiContext = request.app.state.api
    return ctx


#: Parameter type of a route that needs the services.
Ctx = Annotated[ApiContext, Depends(context_of)]


async def json_body(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, read as Glance's JSONRequestDeserializer reads it.

    Whatever the ``Content-Type`` (Glance parses ``text/plain`` or no type at all as JSON).

    Raises:
        ApiError: 400 "Body expected in request." for an empty body, 400 for a body that is
            not JSON or not an object. Glance answers a JSON list with 500 (its handlers call
            ``dict`` methods on it); imageport with 400, deliberately.
    """
    raw = await request.body()
    if not raw:
        raise bad_request("Body expected in request.")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("Malformed JSON in request body.") from exc
    if isinstance(document, list):
        raise bad_request("Unexpected body type. Expected a JSON object, not a list.")
    if not isinstance(document, dict):
        raise bad_request("Unexpected body type. Expected list/dict.")
    return document


#: Parameter type of a JSON object body (see json_body); routes check its fields themselves,
#: so a malformed field is a 400 in Glance's words rather than a schema error.
JsonBody = Annotated[dict[str, Any], Depends(json_body)]


def image_view(image: Image, who: Identity, settings: Settings) -> dict[str, Any]:
    """The image as ``who`` sees it, as Glance 33 shows it.

    ``locations`` only with ``show_multiple_locations`` and ``direct_url`` only with
    ``show_image_direct_url`` (both off by default, as in Glance: they expose store paths);
    then only administrators see the URLs (Glance's ``get_image_location`` rule).
    """
    return image_to_dict(
        image,
        admin=who.is_admin,
        show_locations=settings.show_multiple_locations,
        direct_url=settings.show_image_direct_url,
    )

"""What routes share: the app's services and queue, and the image view for a caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Body, Depends, Request

from imageport.access.policy import Policy
from imageport.access.quotas import Quotas
from imageport.api.auth import Identity
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


def context_of(request: Request) -> ApiContext:
    """The app's :class:`ApiContext` (set at start-up)."""
    ctx: ApiContext = request.app.state.api
    return ctx


#: Parameter type of a route that needs the services.
Ctx = Annotated[ApiContext, Depends(context_of)]
#: Parameter type of a JSON object body (absent: None); routes check its fields themselves,
#: so a malformed field is a 400 in Glance's words rather than a schema error.
JsonBody = Annotated[dict[str, Any] | None, Body()]


def image_view(image: Image, who: Identity) -> dict[str, Any]:
    """The image as ``who`` sees it (``locations`` only for administrators)."""
    return image_to_dict(image, admin=who.is_admin)

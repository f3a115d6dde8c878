"""Image actions: ``POST /v2/images/{id}/actions/deactivate`` and ``…/reactivate``.

As in Glance: deactivating an ``active`` image makes it ``deactivated`` (its data can then be
downloaded only by administrators), reactivating makes it ``active`` again; each answers 204.
Deactivating a deactivated image, or reactivating an active one, changes nothing and is a 204
too. Any other status is refused with 403 "Not allowed to deactivate image in status
'queued'", Glance's answer (its domain model raises Forbidden there). The ``deactivate`` and
``reactivate`` policy rules guard them, and only the image's owner (or an administrator) may
do either.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from imageport.api import access
from imageport.api.auth import Caller, Identity
from imageport.api.deps import ApiContext, Ctx
from imageport.api.errors import forbidden
from imageport.records import ImageStatus, repository

router = APIRouter(prefix="/v2/images", tags=["images"])


@router.post("/{image_id}/actions/deactivate", status_code=204)
def deactivate_image(image_id: str, ctx: Ctx, who: Caller) -> Response:
    """Deactivate an active image (a deactivated one stays so)."""
    _switch(ctx, image_id, who, "deactivate", ImageStatus.ACTIVE, ImageStatus.DEACTIVATED)
    return Response(status_code=204)


@router.post("/{image_id}/actions/reactivate", status_code=204)
def reactivate_image(image_id: str, ctx: Ctx, who: Caller) -> Response:
    """Reactivate a deactivated image (an active one stays so)."""
    _switch(ctx, image_id, who, "reactivate", ImageStatus.DEACTIVATED, ImageStatus.ACTIVE)
    return Response(status_code=204)


def _switch(
    ctx: ApiContext,
    image_id: str,
    who: Identity,
    action: str,
    start: ImageStatus,
    end: ImageStatus,
) -> None:
    """Move the image from ``start`` to ``end`` under the rule named ``action``."""
    with ctx.services.db.session() as session:
        image = access.changeable_image(session, image_id, who, ctx.policy, action)
        if image.status == end:
            return  # already there: Glance answers 204 and writes nothing
        if image.status != start:
            raise forbidden(f"Not allowed to {action} image in status '{image.status}'")
        # Conditional on the status read above: a concurrent change is a 409, not a lost write.
        repository.set_image_status(session, image_id, expected=start, new=end)

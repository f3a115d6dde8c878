"""Image members: share a ``shared`` image with other projects, and their answers.

The owner (or an administrator) adds and removes members and sees them all; a member sees only
itself and alone (or an administrator) sets its ``status`` (``pending``, ``accepted``,
``rejected``). Only ``shared`` images have members (403 otherwise). Each call also checks its
policy rule (``get_members``, ``add_member``, ``get_member``, ``modify_member``,
``delete_member``); these rules of ownership stay on top of it, as Glance keeps them in code.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from imageport.access.policy import Policy
from imageport.api import access, fields
from imageport.api.auth import Caller, Identity
from imageport.api.deps import Ctx, JsonBody
from imageport.api.errors import ApiError, bad_request, conflict, forbidden
from imageport.records import Image, ImageMember, MemberStatus, Visibility
from imageport.records.base import utcnow
from imageport.records.serialize import isotime

router = APIRouter(prefix="/v2/images", tags=["members"])

_MEMBER_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"member": {"type": "string"}},
                "required": ["member"],
            }
        }
    }
}
_STATUS_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": [str(s) for s in MemberStatus]}
                },
                "required": ["status"],
            }
        }
    }
}


def member_to_dict(member: ImageMember) -> dict[str, Any]:
    """A member as the Image API shows it."""
    return {
        "image_id": member.image_id,
        "member_id": member.member_id,
        "status": str(member.status),
        "created_at": isotime(member.created_at),
        "updated_at": isotime(member.updated_at),
        "schema": "/v2/schemas/member",
    }


def _shared_image(
    session: Session, image_id: str, who: Identity, policy: Policy, rule: str
) -> Image:
    # Glance's order: the image must be visible (404), its get_image and the member rule
    # allow the caller (404/403), then only shared images have members (403).
    image = access.permitted_image(session, image_id, who, policy, rule)
    if image.visibility != Visibility.SHARED:
        raise forbidden(f"image {image_id} is {image.visibility}; only shared images have members")
    return image


def _member(session: Session, image: Image, member_id: str, who: Identity) -> ImageMember:
    member = access.find_member(session, image.id, member_id)
    # A member that is not the caller is invisible to anyone but the owner.
    if member is None or not (access.is_owner(image, who) or member_id == who.project_id):
        raise ApiError(404, f"project {member_id} is not a member of image {image.id}")
    return member


@router.get("/{image_id}/members")
def list_members(image_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The members the caller may see: all for the owner, itself for a member."""
    with ctx.services.db.session() as session:
        image = _shared_image(session, image_id, who, ctx.policy, "get_members")
        query = select(ImageMember).where(ImageMember.image_id == image.id)
        if not access.is_owner(image, who):
            query = query.where(ImageMember.member_id == who.project_id)
        rows = session.scalars(query.order_by(ImageMember.created_at, ImageMember.member_id))
        return {"members": [member_to_dict(m) for m in rows], "schema": "/v2/schemas/members"}


@router.post("/{image_id}/members", openapi_extra={"requestBody": _MEMBER_BODY})
def add_member(
    image_id: str,
    ctx: Ctx,
    who: Caller,
    body: JsonBody,
) -> dict[str, Any]:
    """Share the image with a project (status ``pending``); 409 if already a member."""
    member_id = body.get("member")
    if not isinstance(member_id, str) or not member_id or len(member_id) > fields.MAX_LENGTH:
        raise bad_request("member must be a project id of 1 to 255 characters")
    with ctx.services.db.session() as session:
        image = _shared_image(session, image_id, who, ctx.policy, "add_member")
        if not access.is_owner(image, who):
            raise forbidden("only the image's owner may add members")
        if access.find_member(session, image.id, member_id) is not None:
            raise conflict(f"project {member_id} is already a member of image {image_id}")
        ctx.quotas.check_new_member(session, image.id)  # 413 past max_image_members
        member = ImageMember(image_id=image.id, member_id=member_id, status=MemberStatus.PENDING)
        session.add(member)
        session.flush()
        return member_to_dict(member)


@router.get("/{image_id}/members/{member_id}")
def show_member(image_id: str, member_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """One member (the owner sees any, a member only itself)."""
    with ctx.services.db.session() as session:
        image = _shared_image(session, image_id, who, ctx.policy, "get_member")
        return member_to_dict(_member(session, image, member_id, who))


@router.put("/{image_id}/members/{member_id}", openapi_extra={"requestBody": _STATUS_BODY})
def update_member(
    image_id: str,
    member_id: str,
    ctx: Ctx,
    who: Caller,
    body: JsonBody,
) -> dict[str, Any]:
    """Accept, reject or reset the share: only the member itself (or an administrator)."""
    status = body.get("status")
    if status not in [str(s) for s in MemberStatus]:
        raise bad_request(f"status must be one of {', '.join(MemberStatus)}")
    with ctx.services.db.session() as session:
        image = _shared_image(session, image_id, who, ctx.policy, "modify_member")
        member = _member(session, image, member_id, who)
        if not (who.is_admin or member_id == who.project_id):
            raise forbidden("only the member itself may change its status")
        member.status = MemberStatus(status)
        member.updated_at = utcnow()
        session.flush()
        return member_to_dict(member)


@router.delete("/{image_id}/members/{member_id}", status_code=204)
def remove_member(image_id: str, member_id: str, ctx: Ctx, who: Caller) -> Response:
    """Stop sharing the image with a project (the owner only)."""
    with ctx.services.db.session() as session:
        image = _shared_image(session, image_id, who, ctx.policy, "delete_member")
        member = _member(session, image, member_id, who)
        if not access.is_owner(image, who):
            raise forbidden("only the image's owner may remove members")
        session.delete(member)
    return Response(status_code=204)

"""Images: create, show, update (JSON patch), delete, and tags. The list is in listing.py."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from imageport.api import access, fields, patch
from imageport.api.auth import Caller, Identity
from imageport.api.deps import Ctx, JsonBody, image_view
from imageport.api.discovery import IMPORT_METHODS
from imageport.api.errors import ApiError, bad_request, conflict, forbidden
from imageport.pipeline import delete_image, discard_upload
from imageport.records import Image, ImageTag, repository
from imageport.records.base import utcnow

router = APIRouter(prefix="/v2/images", tags=["images"])

_IMAGE_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}
_PATCH_BODY = {
    "content": {
        patch.MEDIA_TYPES[0]: {
            "schema": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "op": {"type": "string", "enum": list(patch.OPS)},
                        "path": {"type": "string"},
                        "value": {},
                    },
                    "required": ["op", "path"],
                },
            }
        }
    }
}


@router.post("", status_code=201, openapi_extra={"requestBody": _IMAGE_BODY})
def create_image(
    ctx: Ctx,
    who: Caller,
    body: JsonBody = None,
) -> JSONResponse:
    """Create a queued image; a client-supplied ``id`` is kept (409 if already used)."""
    core, tags, properties, image_id = _creation_fields(
        body or {}, who, ctx.settings.max_image_tags
    )
    try:
        with ctx.services.db.session() as session:
            if image_id is not None and session.get(Image, image_id) is not None:
                raise conflict(f"an image with id {image_id} already exists", code="duplicate_id")
            image = repository.create_image(
                session, image_id=image_id, tags=tags, properties=properties, **core
            )
            view = image_view(image, who)
    except IntegrityError as exc:  # a concurrent request took the id between check and insert
        raise conflict(f"an image with id {image_id} already exists", code="duplicate_id") from exc
    headers = {
        "Location": f"/v2/images/{view['id']}",
        "OpenStack-image-import-methods": ",".join(IMPORT_METHODS),
        "OpenStack-image-store-ids": ",".join(ctx.services.stores),
    }
    return JSONResponse(view, status_code=201, headers=headers)


def _creation_fields(
    body: dict[str, Any], who: Identity, max_tags: int
) -> tuple[dict[str, Any], list[str], dict[str, str], str | None]:
    core: dict[str, Any] = {"name": None, "disk_format": None, "container_format": None}
    core["owner"] = who.project_id
    tags: list[str] = []
    properties: dict[str, str] = {}
    image_id = fields.check_id(body["id"]) if body.get("id") is not None else None
    for name, value in body.items():
        if name == "id":
            continue
        fields.check_writable(name, who)
        if name == "tags":
            tags = fields.check_tags(value, max_tags)
        elif name in fields.CORE:
            core[name] = fields.check_core(name, value, who)
        else:
            properties[name] = fields.check_property(name, value)
    return core, tags, properties, image_id


@router.get("/{image_id}")
def show_image(image_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """One image."""
    with ctx.services.db.session() as session:
        return image_view(access.visible_image(session, image_id, who), who)


@router.patch("/{image_id}", openapi_extra={"requestBody": _PATCH_BODY})
async def update_image(image_id: str, request: Request, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """Apply a JSON patch (``application/openstack-images-v2.1-json-patch``)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in patch.MEDIA_TYPES:
        raise ApiError(
            415,
            f"use Content-Type {patch.MEDIA_TYPES[0]} for PATCH",
            code="unsupported_media_type",
        )
    try:
        operations = patch.parse(json.loads(await request.body()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not JSON: {exc}") from exc
    return await anyio.to_thread.run_sync(_patch_image, ctx, image_id, operations, who)


def _patch_image(
    ctx: Any,  # noqa: ANN401 - an ApiContext (typed loosely: anyio passes *args untyped)
    image_id: str,
    operations: list[tuple[str, str, Any]],
    who: Identity,
) -> dict[str, Any]:
    with ctx.services.db.session() as session:
        image = access.owned_image(session, image_id, who)
        changes = patch.apply(image, operations, who, ctx.settings.max_image_tags)
        for name in changes.touched & fields.CORE:
            setattr(image, name, changes.core[name])
        _write_tags(image, changes.tags)
        _write_properties(session, image, changes.properties)
        image.updated_at = utcnow()
        session.flush()
        session.refresh(image)
        return image_view(image, who)


def _write_tags(image: Image, tags: list[str]) -> None:
    # Change the difference only: re-inserting an unchanged tag would collide on its key.
    wanted = set(tags)
    image.tags = [tag for tag in image.tags if tag.value in wanted]
    present = {tag.value for tag in image.tags}
    image.tags.extend(ImageTag(value=value) for value in tags if value not in present)


def _write_properties(session: Session, image: Image, properties: dict[str, str]) -> None:
    current = {p.name: p.value for p in image.properties}
    for name in current.keys() - properties.keys():
        repository.delete_property(session, image.id, name)
    for name, value in properties.items():
        if current.get(name) != value:
            repository.set_property(session, image.id, name, value)


@router.delete("/{image_id}", status_code=204)
def remove_image(image_id: str, ctx: Ctx, who: Caller) -> Response:
    """Delete an image at once (204); ``protected`` refuses (403).

    A running import is cancelled, not waited for: its worker removes the data it wrote when
    it stops (see pipeline/methods/deletion.py).
    """
    with ctx.services.db.session() as session:
        image = access.owned_image(session, image_id, who)
        if image.protected:
            raise forbidden(f"image {image_id} is protected and cannot be deleted")
    delete_image(ctx.services, image_id)
    discard_upload(ctx.settings, ctx.services.staging, image_id)  # data staged but never imported
    return Response(status_code=204)


@router.put("/{image_id}/tags/{tag}", status_code=204)
def add_tag(image_id: str, tag: str, ctx: Ctx, who: Caller) -> Response:
    """Add a tag (at most 255 characters, at most ``max_image_tags`` per image)."""
    fields.check_tag(tag)
    with ctx.services.db.session() as session:
        image = access.owned_image(session, image_id, who)
        if tag not in {t.value for t in image.tags}:
            fields.check_tag_count(len(image.tags) + 1, ctx.settings.max_image_tags)
            image.tags.append(ImageTag(value=tag))
            image.updated_at = utcnow()
    return Response(status_code=204)


@router.delete("/{image_id}/tags/{tag}", status_code=204)
def remove_tag(image_id: str, tag: str, ctx: Ctx, who: Caller) -> Response:
    """Remove a tag (404 if the image does not have it)."""
    with ctx.services.db.session() as session:
        image = access.owned_image(session, image_id, who)
        kept = [t for t in image.tags if t.value != tag]
        if len(kept) == len(image.tags):
            raise ApiError(404, f"image {image_id} has no tag {tag!r}")
        image.tags = kept
        image.updated_at = utcnow()
    return Response(status_code=204)

"""Images: create, show, update (JSON patch), delete, and tags. The list is in listing.py."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

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
    request: Request,
    ctx: Ctx,
    who: Caller,
    body: JsonBody,
) -> JSONResponse:
    """Create a queued image; a client-supplied ``id`` is kept (409 if already used)."""
    core, tags, properties, image_id = _creation_fields(body, who, ctx.settings.max_image_tags)
    # Glance's order: the fields' own checks above, then the policy, then the quotas.
    access.authorize_creation(ctx.policy, who, core["owner"], core.get("visibility"))
    try:
        with ctx.services.db.session() as session:
            # Glance's order: the project's image count, then the new image's properties.
            ctx.quotas.check_create(session, who.project_id)
            ctx.quotas.check_properties(properties)
            if image_id is not None and session.get(Image, image_id) is not None:
                raise conflict(f"an image with id {image_id} already exists", code="duplicate_id")
            image = repository.create_image(
                session, image_id=image_id, tags=tags, properties=properties, **core
            )
            view = image_view(image, who, ctx.settings)
    except IntegrityError as exc:  # a concurrent request took the id between check and insert
        raise conflict(f"an image with id {image_id} already exists", code="duplicate_id") from exc
    headers = {
        # Absolute, as Glance's webob makes a relative Location from the request's host.
        "Location": f"{str(request.base_url).rstrip('/')}/v2/images/{view['id']}",
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
        if name in fields.IGNORED_AT_CREATION:
            # Glance validates these against the schema and then drops them: the hashes are
            # the server's to compute, so a value sent is never stored.
            fields.check_ignored(name, value)
            continue
        fields.check_writable(name, who)
        if name == "tags":
            tags = fields.check_tags(value, max_tags)
        elif name in fields.CORE:
            core[name] = fields.check_core(name, value)
        else:
            properties[name] = fields.check_property(name, value)
    return core, tags, properties, image_id


@router.get("/{image_id}")
def show_image(image_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """One image."""
    with ctx.services.db.session() as session:
        image = access.permitted_image(session, image_id, who, ctx.policy, "get_image")
        return image_view(image, who, ctx.settings)


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
        # Locked before it is read, so the difference written is to what is stored; all the
        # operations are applied in memory and written at once, so the lock lasts milliseconds.
        repository.lock_image(session, image_id)
        rules = access.patch_rules(operations)
        image = access.changeable_image(session, image_id, who, ctx.policy, *rules)
        changes = patch.apply(image, operations, who, ctx.settings.max_image_tags)
        return image_view(patch.save(session, image, changes, ctx.quotas), who, ctx.settings)


@router.delete("/{image_id}", status_code=204)
def remove_image(image_id: str, ctx: Ctx, who: Caller) -> Response:
    """Delete an image at once (204); ``protected`` refuses (403).

    A running import is cancelled, not waited for: its worker removes the data it wrote when
    it stops (see pipeline/methods/deletion.py).
    """
    with ctx.services.db.session() as session:
        image = access.changeable_image(session, image_id, who, ctx.policy, "delete_image")
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
        image = access.changeable_image(session, image_id, who, ctx.policy, "modify_image")
        if tag not in {t.value for t in image.tags}:
            fields.check_tag_count(len(image.tags) + 1, ctx.settings.max_image_tags)
            image.tags.append(ImageTag(value=tag))
            image.updated_at = utcnow()
    return Response(status_code=204)


@router.delete("/{image_id}/tags/{tag}", status_code=204)
def remove_tag(image_id: str, tag: str, ctx: Ctx, who: Caller) -> Response:
    """Remove a tag (404 if the image does not have it)."""
    with ctx.services.db.session() as session:
        image = access.changeable_image(session, image_id, who, ctx.policy, "modify_image")
        kept = [t for t in image.tags if t.value != tag]
        if len(kept) == len(image.tags):
            raise ApiError(404, f"image {image_id} has no tag {tag!r}")
        image.tags = kept
        image.updated_at = utcnow()
    return Response(status_code=204)

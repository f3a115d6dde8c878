"""``POST /v2/images/{id}/import``: start an import with one of the four methods.

Status gates, as in Glance (409): glance-direct needs staged data (``uploading``),
web-download and glance-download a ``queued`` image, copy-image an ``active`` one; a
glance-direct or web-download import also needs ``container_format`` and ``disk_format``
(glance-download takes them from the remote record when unset). Policy, as in Glance:
copy-image is the ``copy_image`` rule (administrators by default), the other methods
``modify_image`` and the image's owner; each also ``add_task``. Stores, the web-download URL
and what the task records are checked and written as Glance does (see
:mod:`imageport.api.import_rules`); a copy-image to ``all_stores`` of an image every store
holds already is a 202 with no task, as in Glance. The answer is 202 and the task runs on a
worker (in this process in embedded mode).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from imageport.api import access
from imageport.api.auth import Caller, Identity
from imageport.api.deps import ApiContext, Ctx, JsonBody
from imageport.api.discovery import IMPORT_METHODS
from imageport.api.errors import bad_request, conflict
from imageport.api.import_rules import check_web_download_uri, chosen_stores, record_request
from imageport.api.request_id import request_id_of
from imageport.errors import InvalidRequest
from imageport.pipeline import (
    ImportRequest,
    check_remote_id,
    check_visible,
    file_url,
    has_upload,
    import_existing,
    remote_auth,
    remote_image,
    resolve_endpoint,
    submit_copy,
)
from imageport.records import Image, ImageStatus, Task, TaskStatus
from imageport.records.reserved import IMPORT_TASK

router = APIRouter(prefix="/v2/images", tags=["imports"])

#: The image status each method starts from.
STARTS_FROM = {
    "glance-direct": ImageStatus.UPLOADING,
    "web-download": ImageStatus.QUEUED,
    "glance-download": ImageStatus.QUEUED,
    "copy-image": ImageStatus.ACTIVE,
}
_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "method": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "enum": list(IMPORT_METHODS)},
                            "uri": {"type": "string"},
                            "glance_image_id": {"type": "string"},
                            "glance_region": {"type": "string"},
                            "glance_service_interface": {"type": "string"},
                        },
                        "required": ["name"],
                    },
                    "stores": {"type": "array", "items": {"type": "string"}},
                    "all_stores": {"type": "boolean"},
                    "all_stores_must_succeed": {"type": "boolean"},
                },
                "required": ["method"],
            }
        }
    }
}


@router.post("/{image_id}/import", status_code=202, openapi_extra={"requestBody": _BODY})
def import_image(
    image_id: str,
    request: Request,
    ctx: Ctx,
    who: Caller,
    body: JsonBody,
) -> Response:
    """Start importing the image's data; 202 once the task is queued."""
    method = body.get("method")
    if not isinstance(method, dict):
        raise bad_request("Import request requires a 'method' field.")
    name = method.get("name")
    if name is None:
        raise bad_request("Import request requires a 'name' field.")
    if not isinstance(name, str) or name not in STARTS_FROM:
        raise bad_request(
            f"Unknown import method name '{name}'; methods: {', '.join(IMPORT_METHODS)}"
        )
    must_succeed = body.get("all_stores_must_succeed", True)
    if not isinstance(must_succeed, bool):
        raise bad_request("'all_stores_must_succeed' must be boolean value only")
    header = request.headers.get("X-Image-Meta-Store")
    with ctx.services.db.session() as session:
        image = access.importable_image(session, image_id, who, ctx.policy, name)
        _gate(session, image, name)
        stores, all_stores = chosen_stores(ctx, body, header)
        if name == "copy-image" and all_stores:
            held = {location.store_id for location in image.locations}
            stores = tuple(s for s in stores if s not in held)
            if not stores:
                # Glance: the image is in every store already; nothing to do, and no task.
                return Response(status_code=202)
        # 413 before anything is queued: the image's locations and the project's limits.
        ctx.quotas.check_import(session, who.project_id, image, name, stores)
    if name == "copy-image":
        submitted = submit_copy(
            ctx.services,
            image_id,
            list(stores),
            all_stores=all_stores,
            all_stores_must_succeed=must_succeed,
        )
    else:
        request_ = _request(ctx, image, name, method, stores, must_succeed, who)
        # glance-download in keystone mode: the worker downloads with the caller's own token.
        auth = remote_auth(ctx.settings, who) if name == "glance-download" else None
        forwarded = auth.forwarded_token if auth is not None else None
        submitted = import_existing(
            ctx.services,
            image_id,
            request_,
            expected=STARTS_FROM[name],
            forwarded_token=forwarded,
        )
    # Before the task is queued, so a worker never sees it without what Glance records.
    record_request(ctx, submitted.task_id, who, body, stores, request_id_of(request))
    ctx.enqueue(submitted.task_id)
    return Response(status_code=202)


def _gate(session: Any, image: Image, name: str) -> None:  # noqa: ANN401
    """Refuse an import the image's status does not allow (the policy checked the caller)."""
    task_id = next((p.value for p in image.properties if p.name == IMPORT_TASK), None)
    if task_id:
        task = session.get(Task, task_id)
        if task is not None and task.status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
            raise conflict(
                f"image {image.id} is already being imported (task {task_id})",
                code="import_in_progress",
            )
    expected = STARTS_FROM[name]
    if image.status != expected:
        hint = "stage its data first (PUT /stage)" if name == "glance-direct" else ""
        raise conflict(
            f"image {image.id} is {image.status}; {name} needs it {expected}"
            + (f": {hint}" if hint else ""),
            code="image_status",
        )
    # glance-download takes missing formats from the remote record (Glance requires them).
    if name not in ("copy-image", "glance-download"):
        _need_formats(image)


def _need_formats(image: Image) -> None:
    """Glance's 409 for an import into an image without its formats."""
    for field in ("container_format", "disk_format"):
        if not getattr(image, field):
            raise conflict(
                f"'{field}' needs to be set before import (image {image.id})",
                code="formats_missing",
            )


def _request(
    ctx: ApiContext,
    image: Image,
    name: str,
    method: dict[str, Any],
    stores: tuple[str, ...],
    must_succeed: bool,
    who: Identity,
) -> ImportRequest:
    """The import's parameters: where the bytes come from and what they must hash to."""
    fields: dict[str, Any] = {"stores": stores, "all_stores_must_succeed": must_succeed}
    if name == "web-download":
        uri = method.get("uri")
        if not isinstance(uri, str) or not uri:
            raise bad_request("web-download needs method.uri")
        # As Glance filters it before the task exists (400); the worker vets it again.
        check_web_download_uri(ctx, uri)
        fields["source"] = uri
    elif name == "glance-download":
        fields.update(_remote(ctx, image, method, who))
    else:  # glance-direct: the staged upload, found by the image id
        if not has_upload(ctx.settings, ctx.services.staging, image.id):
            raise conflict(f"image {image.id} has no staged data: PUT /stage first")
        fields["source"] = image.id
    fields.setdefault("disk_format", image.disk_format)
    fields.setdefault("container_format", image.container_format)
    # The operator's conversion policy applies to API imports as to the CLI's.
    fields.setdefault("target_format", ctx.settings.target_format)
    try:
        return ImportRequest.model_validate({"method": name, **fields})
    except ValueError as exc:
        raise InvalidRequest(f"invalid import request: {exc}") from exc


def _remote(ctx: ApiContext, image: Image, method: dict[str, Any], who: Identity) -> dict[str, Any]:
    """glance-download: the remote image's file URL, formats and expected hashes.

    The remote id must be a UUID before anything is sent; the remote sees the caller's own
    token in keystone mode (else the operator's, and then only images the caller's project
    could read there are accepted); the record must be active and carry a sha256/384/512
    multihash.
    """
    remote_id, region = method.get("glance_image_id"), method.get("glance_region")
    interface = method.get("glance_service_interface")
    if not isinstance(remote_id, str) or not isinstance(region, str):
        raise bad_request("glance-download needs method.glance_image_id and method.glance_region")
    if interface is not None and not isinstance(interface, str):
        raise bad_request("method.glance_service_interface must be a string")
    remote_id = check_remote_id(remote_id)  # 400 before any request: it goes into URLs
    endpoint = resolve_endpoint(ctx.settings, region, interface)
    auth = remote_auth(ctx.settings, who)
    record = remote_image(ctx.settings, endpoint, remote_id, auth)
    check_visible(record, who, auth)
    disk_format = image.disk_format or record.disk_format
    container_format = image.container_format or record.container_format
    if not (disk_format and container_format):
        raise bad_request(f"remote image {remote_id} has no disk_format or container_format")
    return {
        "source": file_url(endpoint, remote_id),
        "disk_format": disk_format,
        "container_format": container_format,
        "checksum": record.checksum,
        "os_hash_algo": record.os_hash_algo,
        "os_hash_value": record.os_hash_value,
    }

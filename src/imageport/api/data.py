"""Image data: ``PUT /stage`` (glance-direct), ``PUT /file`` (classic upload), ``GET /file``.

Uploads stream through :func:`imageport.pipeline.methods.uploads.receive_upload` (one scanning
pass into the staging area) in a worker thread; downloads stream from the store. Neither holds
more than a chunk in memory. ``PUT /file`` goes through the same pipeline as an import (a
glance-direct task) and answers once the image is active, as Glance's synchronous upload does;
the image shows ``saving`` all along (``queued → saving → active``, or back to ``queued`` on
failure), as in Glance, where ``PUT /stage`` shows ``uploading`` and ``POST /import``
``importing``.

An upload's thread comes from the uploads' own limiter, and uploads beyond
``max_concurrent_uploads`` (in all, 503) or ``max_concurrent_uploads_per_project`` (413) are
refused (:mod:`imageport.api.upload_slots`); each read of the body waits at most
``client_socket_timeout`` (:mod:`imageport.api.body_timeout`). ``PUT /file`` waits for its
import in the event loop, holding no thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from imageport.api import access
from imageport.api.auth import Caller, Identity
from imageport.api.bridge import body_chunks
from imageport.api.deps import ApiContext, Ctx
from imageport.api.errors import ApiError, bad_request, conflict, forbidden, status_of
from imageport.api.ranges import requested_span
from imageport.api.upload_import import (
    UNACCEPTABLE_DATA,
    await_upload_import,
    back_to_queued,
    submit_upload,
)
from imageport.api.upload_slots import Slots
from imageport.errors import OverQuota, PipelineError, UnsafeImage
from imageport.pipeline import receive_upload
from imageport.records import Image, ImageStatus, repository

router = APIRouter(prefix="/v2/images", tags=["data"])

_OCTETS = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}


@router.put("/{image_id}/stage", status_code=204, openapi_extra={"requestBody": _OCTETS})
async def stage_data(
    image_id: str, request: Request, ctx: Ctx, who: Caller, slots: Slots
) -> Response:
    """Stage the image's data for a later glance-direct import (queued → uploading)."""
    _check_octet_stream(request)
    with slots.hold(who):  # 503/413 before the image is touched when uploads are at their cap
        await anyio.to_thread.run_sync(
            partial(
                _begin_upload,
                ctx,
                image_id,
                who,
                status=ImageStatus.UPLOADING,
                declared=_declared_length(request),
            )
        )
        await _receive(ctx, image_id, request, slots.limiter)
    return Response(status_code=204)


@router.put("/{image_id}/file", status_code=204, openapi_extra={"requestBody": _OCTETS})
async def upload_data(
    image_id: str, request: Request, ctx: Ctx, who: Caller, slots: Slots
) -> Response:
    """Upload the image's data and import it at once (answers when the image is active)."""
    _check_octet_stream(request)
    store = request.headers.get("X-Image-Meta-Store")
    if store is not None and store not in ctx.services.stores:
        # Glance checks the store before it touches the image: 400 here (409 at POST /import).
        raise bad_request(
            f"Store for identifier {store} not found; configured stores: "
            f"{', '.join(ctx.services.stores)}",
            code="unknown_store",
        )
    with slots.hold(who):  # the slot covers the upload, not the wait for the import
        image = await anyio.to_thread.run_sync(
            partial(
                _begin_upload,
                ctx,
                image_id,
                who,
                status=ImageStatus.SAVING,
                declared=_declared_length(request),
            )
        )
        await _receive(ctx, image_id, request, slots.limiter)
    task_id = await anyio.to_thread.run_sync(submit_upload, ctx, image, store)
    await await_upload_import(ctx, request, image_id, task_id)
    return Response(status_code=204)


def _begin_upload(
    ctx: ApiContext,
    image_id: str,
    who: Identity,
    *,
    status: ImageStatus,
    declared: int | None = None,
) -> Image:
    """Move a queued image to ``status``, as Glance does.

    ``uploading`` for ``PUT /stage``; ``saving`` for ``PUT /file``, which also needs the
    formats set first. Quotas as in Glance: ``image_stage_total`` (stage) or
    ``image_size_total`` (file) before, with the ``declared`` length as the delta, and
    ``image_count_uploading`` once the image shows ``status`` (a 413 puts it back to queued).
    """
    # Glance's rules: PUT /file checks upload_image; PUT /stage has no rule of its own and
    # checks modify_image, as Glance's stage call does.
    rule = "upload_image" if status == ImageStatus.SAVING else "modify_image"
    with ctx.services.db.session() as session:
        image = access.changeable_image(session, image_id, who, ctx.policy, rule)
        if image.status != ImageStatus.QUEUED:
            raise conflict(
                f"image {image_id} is {image.status}; data can be sent only once, "
                "while it is queued",
                code="image_not_queued",
            )
        if status == ImageStatus.SAVING and not (image.disk_format and image.container_format):
            raise bad_request("set disk_format and container_format before uploading data")
        staging = status == ImageStatus.UPLOADING
        ctx.quotas.check_data(session, who.project_id, staging=staging, declared=declared)
        repository.set_image_status(session, image_id, expected=ImageStatus.QUEUED, new=status)
    # Glance's order: the image counts as uploading (committed) before the count is checked,
    # so two concurrent uploads cannot both slip under the limit.
    try:
        with ctx.services.db.session() as session:
            ctx.quotas.check_uploading(session, who.project_id)
    except OverQuota:
        back_to_queued(ctx, image_id)
        raise
    return image


def _check_octet_stream(request: Request) -> None:
    """Glance's 415 for a body whose type is not ``application/octet-stream``.

    A body without a Content-Type too, as in Glance ("Invalid content type None"): curl's
    ``-T`` and plain HTTP libraries send none, so the message says what to send.
    """
    given = request.headers.get("content-type")
    media = given.split(";")[0].strip().lower() if given is not None else None
    if media != "application/octet-stream":
        raise ApiError(
            415,
            f"Invalid content type {media}; send the data as application/octet-stream "
            "(Content-Type: application/octet-stream)",
            code="unsupported_media_type",
        )


def _declared_length(request: Request) -> int | None:
    """The size the client declares: ``X-Openstack-Image-Size``, else ``Content-Length``.

    Raises:
        ApiError: 400 for an ``X-Openstack-Image-Size`` that is not an integer (Glance's).
    """
    size = request.headers.get("x-openstack-image-size")
    if size is not None:
        try:
            return int(size)
        except ValueError:
            raise bad_request("Invalid or missing image size in request headers.") from None
    length = request.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


async def _receive(
    ctx: ApiContext, image_id: str, request: Request, limiter: anyio.CapacityLimiter
) -> None:
    """Scan the body into the upload area, in a thread of the uploads' own ``limiter``."""
    length = request.headers.get("content-length")
    disk_format = await anyio.to_thread.run_sync(_disk_format, ctx, image_id)

    def work() -> object:
        scanned = receive_upload(
            ctx.settings,
            ctx.services.staging,
            image_id,
            body_chunks(request),
            disk_format=disk_format,
            length=int(length) if length and length.isdigit() else None,
            # glance-direct declares no digests: the upload's own are needed only when the
            # import will store it as it is (no conversion by the operator's policy).
            hashed=ctx.settings.target_format in (None, disk_format),
            target_format=ctx.settings.target_format,
        )
        _record_staged(ctx, image_id, scanned.disk_size)
        return scanned

    try:
        # The uploads' limiter: this thread waits on the client, and must not be one of the
        # default pool's, which serves every other request.
        await anyio.to_thread.run_sync(work, limiter=limiter)
    except UnsafeImage as exc:
        # Data that is not the image it claims to be: Glance's InvalidImageData, a 415.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(back_to_queued, ctx, image_id)
        raise ApiError(UNACCEPTABLE_DATA, exc.message, code=exc.code) from exc
    except BaseException:
        # Whatever stopped the upload (a refusal, a disconnect, a stalled body), the image is
        # queued again; shielded, so that a cancelled request still puts it back.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(back_to_queued, ctx, image_id)
        raise


def _record_staged(ctx: ApiContext, image_id: str, size: int | None) -> None:
    # PUT /stage: the staged bytes go on the image, as in Glance; image_stage_total sums them
    # (a no-op for PUT /file, whose image is saving). Bytes on disk, after any decompression.
    with ctx.services.db.session() as session:
        repository.record_staged_size(session, image_id, size or 0)


def _disk_format(ctx: ApiContext, image_id: str) -> str | None:
    with ctx.services.db.session() as session:
        return repository.get_image(session, image_id).disk_format


@router.get("/{image_id}/file", response_class=StreamingResponse)
def download_data(image_id: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    """Stream the image's data; one ``Range`` or ``Content-Range`` is honoured (206).

    A bad one is 416 (see imageport.api.ranges).
    """
    with ctx.services.db.session() as session:
        image = access.permitted_image(session, image_id, who, ctx.policy, "download_image")
        if image.status == ImageStatus.DEACTIVATED and not who.is_admin:
            raise forbidden(
                f"image {image_id} has been deactivated: downloading its data is forbidden "
                "(administrators only) until it is reactivated"
            )
        location = next(
            (loc for loc in image.locations if loc.store_id in ctx.services.stores), None
        )
        # A deactivated image keeps its data: administrators may still download it.
        with_data = image.status in (ImageStatus.ACTIVE, ImageStatus.DEACTIVATED)
        if not with_data or location is None or image.size is None:
            return Response(status_code=204)  # no data yet, as Glance answers
        store, url, size, md5 = (
            ctx.services.stores[location.store_id],
            location.url,
            image.size,
            image.checksum,
        )
    span = requested_span(request.headers.get("range"), request.headers.get("content-range"), size)
    # Content-MD5 on whole and partial answers alike: Glance sends the image's checksum.
    headers = {"Content-Type": "application/octet-stream"}
    if md5:
        headers["Content-MD5"] = md5
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(_read(store.read(url)), headers=headers)
    start, end = span
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _read(store.read(url, offset=start, length=end - start + 1)),
        status_code=206,
        headers=headers,
    )


def _read(chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    except PipelineError as exc:  # headers are gone already: the client sees a short body
        raise RuntimeError(f"store read failed ({status_of(exc)}): {exc}") from exc

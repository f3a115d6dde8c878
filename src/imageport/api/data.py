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

import re
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
from imageport.api.upload_slots import Slots
from imageport.errors import OverQuota, PipelineError
from imageport.pipeline import ImportRequest, discard_upload, import_existing, receive_upload
from imageport.records import Image, ImageStatus, TaskStatus, repository
from imageport.records.states import RECEIVING

router = APIRouter(prefix="/v2/images", tags=["data"])

TASK_POLL_SECONDS = 0.2  # how often PUT /file first looks whether its import finished
TASK_POLL_MAX_SECONDS = 2.0  # ... and at most, once the import has run for a while
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")
_OCTETS = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}


@router.put("/{image_id}/stage", status_code=204, openapi_extra={"requestBody": _OCTETS})
async def stage_data(
    image_id: str, request: Request, ctx: Ctx, who: Caller, slots: Slots
) -> Response:
    """Stage the image's data for a later glance-direct import (queued → uploading)."""
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
    store = request.headers.get("X-Image-Meta-Store")
    task_id = await anyio.to_thread.run_sync(_submit_upload, ctx, image, store)
    await _await_import(ctx, request, task_id)
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
        _back_to_queued(ctx, image_id)
        raise
    return image


def _declared_length(request: Request) -> int | None:
    length = request.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


async def _receive(
    ctx: ApiContext, image_id: str, request: Request, limiter: anyio.CapacityLimiter
) -> None:
    """Scan the body into the upload area, in a thread of the uploads' own ``limiter``."""
    length = request.headers.get("content-length")
    disk_format = await anyio.to_thread.run_sync(_disk_format, ctx, image_id)

    def work() -> object:
        buffer = bytearray(ctx.settings.chunk_size)
        scanned = receive_upload(
            ctx.settings,
            ctx.services.staging,
            image_id,
            body_chunks(request, buffer),
            disk_format=disk_format,
            length=int(length) if length and length.isdigit() else None,
        )
        _record_staged(ctx, image_id, scanned.disk_size)
        return scanned

    try:
        # The uploads' limiter: this thread waits on the client, and must not be one of the
        # default pool's, which serves every other request.
        await anyio.to_thread.run_sync(work, limiter=limiter)
    except BaseException:
        # Whatever stopped the upload (a refusal, a disconnect, a stalled body), the image is
        # queued again; shielded, so that a cancelled request still puts it back.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_back_to_queued, ctx, image_id)
        raise


def _record_staged(ctx: ApiContext, image_id: str, size: int | None) -> None:
    # PUT /stage: the staged bytes go on the image, as in Glance; image_stage_total sums them
    # (a no-op for PUT /file, whose image is saving). Bytes on disk, after any decompression.
    with ctx.services.db.session() as session:
        repository.record_staged_size(session, image_id, size or 0)


def _disk_format(ctx: ApiContext, image_id: str) -> str | None:
    with ctx.services.db.session() as session:
        return repository.get_image(session, image_id).disk_format


def _back_to_queued(ctx: ApiContext, image_id: str) -> None:
    with ctx.services.db.session() as session:
        image = session.get(Image, image_id)
        if image is not None and image.status in RECEIVING:
            repository.set_image_status(
                session, image_id, expected=RECEIVING, new=ImageStatus.QUEUED
            )


def _submit_upload(ctx: ApiContext, image: Image, store: str | None) -> str:
    """Record and queue the glance-direct import of a ``PUT /file`` upload; its task id."""
    request = ImportRequest(
        method="glance-direct",
        source=image.id,
        disk_format=image.disk_format or "raw",
        container_format=image.container_format or "bare",
        target_format=ctx.settings.target_format,
        stores=(store,) if store else (),
    )
    try:
        submitted = import_existing(
            ctx.services,
            image.id,
            request,
            expected=ImageStatus.SAVING,
            status=ImageStatus.SAVING,
        )
    except PipelineError:
        discard_upload(ctx.settings, ctx.services.staging, image.id)
        _back_to_queued(ctx, image.id)
        raise
    ctx.enqueue(submitted.task_id)
    return submitted.task_id


async def _await_import(ctx: ApiContext, request: Request, task_id: str) -> None:
    """Wait until ``PUT /file``'s import ends, holding no thread while it runs.

    Each look is a short database read in a thread; the waits between are ``anyio.sleep``,
    longer as the import goes on (a long import is not read five times a second). A client
    that went away stops the waiting (the import goes on without it).

    Raises:
        ApiError: the import failed (its error code, and a status that matches it).
    """
    delay = TASK_POLL_SECONDS
    while True:
        status, code, message = await anyio.to_thread.run_sync(_task_state, ctx, task_id)
        if status == TaskStatus.SUCCESS:
            return
        if status == TaskStatus.FAILURE:
            raise ApiError(_failure_status(code), message, code=code or "internal_error")
        if await request.is_disconnected():
            return
        await anyio.sleep(delay)
        delay = min(delay * 1.5, TASK_POLL_MAX_SECONDS)


def _task_state(ctx: ApiContext, task_id: str) -> tuple[TaskStatus, str | None, str]:
    with ctx.services.db.session() as session:
        task = repository.get_task(session, task_id)
        return TaskStatus(task.status), task.error_code, task.message or ""


def _failure_status(code: str | None) -> int:
    if code == "upload_limit":
        return 413
    if code in ("source_unavailable", "store_unavailable", "no_space", "stalled"):
        return 503
    return 400


@router.get("/{image_id}/file", response_class=StreamingResponse)
def download_data(image_id: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    """Stream the image's data; one ``Range`` is honoured (206), a bad one is 416."""
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
    span = _range(request.headers.get("range"), size)
    headers = {"Content-Type": "application/octet-stream"}
    if span is None:
        headers["Content-Length"] = str(size)
        if md5:
            headers["Content-MD5"] = md5
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


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span one ``Range`` asks for; None for the whole image.

    Raises:
        ApiError: 416 for a multi-range, malformed or unsatisfiable range.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    unsatisfiable = ApiError(
        416,
        f"range {header!r} cannot be served for {size} bytes",
        code="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if match is None:
        raise unsatisfiable
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        if not last or int(last) == 0:
            raise unsatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise unsatisfiable
    return start, end

"""Image data: ``PUT /stage`` (glance-direct), ``PUT /file`` (classic upload), ``GET /file``.

Uploads stream through :func:`imageport.pipeline.methods.uploads.receive_upload` (one scanning
pass into the staging area) in a worker thread; downloads stream from the store. Neither holds
more than a chunk in memory. ``PUT /file`` goes through the same pipeline as an import (a
glance-direct task) and answers once the image is active, as Glance's synchronous upload does;
the image shows ``saving`` all along (``queued → saving → active``, or back to ``queued`` on
failure), as in Glance, where ``PUT /stage`` shows ``uploading`` and ``POST /import``
``importing``.
"""

from __future__ import annotations

import re
import time
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
from imageport.errors import PipelineError
from imageport.pipeline import ImportRequest, discard_upload, import_existing, receive_upload
from imageport.records import Image, ImageStatus, TaskStatus, repository
from imageport.records.states import RECEIVING

router = APIRouter(prefix="/v2/images", tags=["data"])

TASK_POLL_SECONDS = 0.2  # how often PUT /file looks whether its import finished
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")
_OCTETS = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
}


@router.put("/{image_id}/stage", status_code=204, openapi_extra={"requestBody": _OCTETS})
async def stage_data(image_id: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    """Stage the image's data for a later glance-direct import (queued → uploading)."""
    await anyio.to_thread.run_sync(
        partial(_begin_upload, ctx, image_id, who, status=ImageStatus.UPLOADING)
    )
    await _receive(ctx, image_id, request)
    return Response(status_code=204)


@router.put("/{image_id}/file", status_code=204, openapi_extra={"requestBody": _OCTETS})
async def upload_data(image_id: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    """Upload the image's data and import it at once (answers when the image is active)."""
    image = await anyio.to_thread.run_sync(
        partial(_begin_upload, ctx, image_id, who, status=ImageStatus.SAVING)
    )
    await _receive(ctx, image_id, request)
    store = request.headers.get("X-Image-Meta-Store")
    await anyio.to_thread.run_sync(_import_upload, ctx, image, store)
    return Response(status_code=204)


def _begin_upload(ctx: ApiContext, image_id: str, who: Identity, *, status: ImageStatus) -> Image:
    """Move a queued image to ``status``, as Glance does.

    ``uploading`` for ``PUT /stage``; ``saving`` for ``PUT /file``, which also needs the
    formats set first.
    """
    with ctx.services.db.session() as session:
        image = access.owned_image(session, image_id, who)
        if image.status != ImageStatus.QUEUED:
            raise conflict(
                f"image {image_id} is {image.status}; data can be sent only once, "
                "while it is queued",
                code="image_not_queued",
            )
        if status == ImageStatus.SAVING and not (image.disk_format and image.container_format):
            raise bad_request("set disk_format and container_format before uploading data")
        repository.set_image_status(session, image_id, expected=ImageStatus.QUEUED, new=status)
        return image


async def _receive(ctx: ApiContext, image_id: str, request: Request) -> None:
    length = request.headers.get("content-length")
    disk_format = await anyio.to_thread.run_sync(_disk_format, ctx, image_id)

    def work() -> object:
        buffer = bytearray(ctx.settings.chunk_size)
        return receive_upload(
            ctx.settings,
            ctx.services.staging,
            image_id,
            body_chunks(request, buffer),
            disk_format=disk_format,
            length=int(length) if length and length.isdigit() else None,
        )

    try:
        await anyio.to_thread.run_sync(work)
    except BaseException:
        # Whatever stopped the upload (a refusal, a disconnect), the image is queued again.
        await anyio.to_thread.run_sync(_back_to_queued, ctx, image_id)
        raise


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


def _import_upload(ctx: ApiContext, image: Image, store: str | None) -> None:
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
    while True:
        with ctx.services.db.session() as session:
            task = repository.get_task(session, submitted.task_id)
            if task.status == TaskStatus.SUCCESS:
                return
            if task.status == TaskStatus.FAILURE:
                failed = PipelineError(task.message, code=task.error_code or "internal_error")
                raise ApiError(_failure_status(task.error_code), task.message, code=failed.code)
        time.sleep(TASK_POLL_SECONDS)


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
        image = access.visible_image(session, image_id, who)
        if image.status == ImageStatus.DEACTIVATED and not who.is_admin:
            raise forbidden(f"image {image_id} is deactivated")
        location = next(
            (loc for loc in image.locations if loc.store_id in ctx.services.stores), None
        )
        if image.status != ImageStatus.ACTIVE or location is None or image.size is None:
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

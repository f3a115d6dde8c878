"""The import behind ``PUT /file``: queued once the bytes are in, waited for without a thread.

Glance writes a ``PUT /file`` upload straight to the store; imageport runs it through the
import pipeline (a glance-direct task) and answers once the image is active, as Glance's
synchronous upload does. What Glance's upload leaves no trace of stays out of sight: the task
is marked as an upload's (``TASK_UPLOAD``), so the Glance task APIs leave it out, and once it
has ended the image loses the import's ``os_glance_importing_to_stores`` and
``os_glance_failed_import``, which Glance sets only for ``POST /import``.
"""

from __future__ import annotations

import asyncio

import anyio
import structlog
from fastapi import Request

from imageport.api.deps import ApiContext
from imageport.api.errors import ApiError
from imageport.errors import PipelineError
from imageport.pipeline import ImportRequest, discard_upload, import_existing
from imageport.records import Image, ImageStatus, Task, TaskStatus, repository
from imageport.records.reserved import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO_STORES
from imageport.records.serialize import TASK_UPLOAD
from imageport.records.states import RECEIVING

log = structlog.get_logger(__name__)

#: Glance's answer to image data that fails its format or safety checks (InvalidImageData).
UNACCEPTABLE_DATA = 415
#: The stage whose refusals are about the data itself (format, safety).
INSPECT_STAGE = "inspect"
TASK_POLL_SECONDS = 0.2  # how often PUT /file first looks whether its import finished
TASK_POLL_MAX_SECONDS = 2.0  # ... and at most, once the import has run for a while
#: Watchers of imports whose client went away (strong references: asyncio keeps weak ones).
_WATCHERS: set[asyncio.Task[None]] = set()


def back_to_queued(ctx: ApiContext, image_id: str) -> None:
    """Put an image that was receiving data back to ``queued`` (no-op otherwise)."""
    with ctx.services.db.session() as session:
        image = session.get(Image, image_id)
        if image is not None and image.status in RECEIVING:
            repository.set_image_status(
                session, image_id, expected=RECEIVING, new=ImageStatus.QUEUED
            )


def submit_upload(ctx: ApiContext, image: Image, store: str | None) -> str:
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
        back_to_queued(ctx, image.id)
        raise
    # Before the task is queued, so that no worker writes it first.
    with ctx.services.db.session() as session:
        task = session.get(Task, submitted.task_id)
        if task is not None:
            task.input = {**task.input, TASK_UPLOAD: True}
    ctx.enqueue(submitted.task_id)
    return submitted.task_id


async def await_upload_import(
    ctx: ApiContext, request: Request, image_id: str, task_id: str
) -> None:
    """Wait until ``PUT /file``'s import ends, holding no thread while it runs.

    Each look is a short database read in a thread; the waits between are ``anyio.sleep``,
    longer as the import goes on (a long import is not read five times a second). A client
    that went away stops the waiting (the import goes on without it, and a watcher outside
    the request tidies the image when it ends).

    Raises:
        ApiError: the import failed (its error code, and a status that matches it).
    """
    delay = TASK_POLL_SECONDS
    while True:
        status, code, message = await anyio.to_thread.run_sync(_task_state, ctx, task_id)
        if status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
            await anyio.to_thread.run_sync(forget_import_keys, ctx, image_id, task_id)
        if status == TaskStatus.SUCCESS:
            return
        if status == TaskStatus.FAILURE:
            stage = await anyio.to_thread.run_sync(_failed_stage, ctx, task_id)
            raise ApiError(_failure_status(code, stage), message, code=code or "internal_error")
        if await request.is_disconnected():
            # Not waited for here: the server's shutdown waits for every request, and an
            # import can take hours. A task of the event loop's own is not waited for.
            watcher = asyncio.get_running_loop().create_task(_watch(ctx, image_id, task_id))
            _WATCHERS.add(watcher)
            watcher.add_done_callback(_WATCHERS.discard)
            return
        await anyio.sleep(delay)
        delay = min(delay * 1.5, TASK_POLL_MAX_SECONDS)


async def _watch(ctx: ApiContext, image_id: str, task_id: str) -> None:
    """Wait for an import nobody waits for any more, then tidy its image (best effort)."""
    try:
        while True:
            status, _, _ = await anyio.to_thread.run_sync(_task_state, ctx, task_id)
            if status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
                await anyio.to_thread.run_sync(forget_import_keys, ctx, image_id, task_id)
                return
            await anyio.sleep(TASK_POLL_MAX_SECONDS)
    except PipelineError as exc:  # the task or the image is gone: nothing left to tidy
        log.info("upload import no longer watched", task_id=task_id, error=str(exc))


def forget_import_keys(ctx: ApiContext, image_id: str, task_id: str) -> None:
    """Remove the import's store lists from the image of a finished ``PUT /file`` upload.

    Glance sets ``os_glance_importing_to_stores`` and ``os_glance_failed_import`` only for
    ``POST /import``. Left alone when a newer import has begun since (its lists are its own).
    """
    with ctx.services.db.session() as session:
        image = session.get(Image, image_id)
        if image is None:
            return
        running = next((p.value for p in image.properties if p.name == IMPORT_TASK), None)
        if running not in (None, task_id):
            return
        for name in (IMPORTING_TO_STORES, FAILED_IMPORT):
            repository.delete_property(session, image_id, name)


def _task_state(ctx: ApiContext, task_id: str) -> tuple[TaskStatus, str | None, str]:
    with ctx.services.db.session() as session:
        task = repository.get_task(session, task_id)
        return TaskStatus(task.status), task.error_code, task.message or ""


def _failed_stage(ctx: ApiContext, task_id: str) -> str | None:
    with ctx.services.db.session() as session:
        runs = repository.stage_runs(session, task_id)
        return next((run.stage for run in reversed(runs) if run.error_code), None)


def _failure_status(code: str | None, stage: str | None) -> int:
    """The status ``PUT /file`` answers for its failed import, as Glance's upload would."""
    if stage == INSPECT_STAGE:
        return UNACCEPTABLE_DATA  # the format or safety checks refused the data
    if code == "upload_limit":
        return 413
    if code in ("source_unavailable", "store_unavailable", "no_space", "stalled"):
        return 503
    return 400

"""How a job ends badly: a retry with backoff, a requeue, or a failure that removes every byte.

Every failure ends in a recorded state: a retry scheduled for transient errors while attempts
remain, otherwise a failed task, an image back in ``queued`` and no staged or partial data
left behind. A stop (cancel, shutdown, stall) is recorded under its own code.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session

from imageport.errors import (
    Cancelled,
    JobInterrupted,
    NoSpace,
    PipelineError,
    ShutDown,
    Stalled,
    StoreCopyFailed,
    TransientError,
)
from imageport.pipeline.completion import remove_work_dirs
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data.space import SpaceWait
from imageport.pipeline.outputs import StoredCopies
from imageport.records import ImageStatus, TaskStatus, repository
from imageport.records.base import utcnow
from imageport.records.reserved import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO_STORES
from imageport.records.states import IN_FLIGHT

log = structlog.get_logger(__name__)

RETRY_BASE_DELAY = 2.0  # seconds before the first retry of a transient failure
RETRY_MAX_DELAY = 300.0  # seconds; the backoff never waits longer than this


@dataclass(frozen=True)
class Outcome:
    """How one delivery of a job ended."""

    status: TaskStatus
    retry_in: float | None = None  # seconds, when the job must be queued again
    dropped: bool = False  # True when another worker holds the job (or took it over)
    released: bool = False  # True when the lease was already given up with the last record


def handle_failure(ctx: JobContext, services: Services, stage: str, exc: PipelineError) -> Outcome:
    """Schedule a retry of a transient failure while attempts remain; otherwise fail."""
    if isinstance(exc, SpaceWait) and not services.settings.is_embedded:
        # Another worker may have room: hand the job back. (Embedded, this process is the
        # only worker: no space is an ordinary transient failure, retried with backoff.)
        return wait_for_space(ctx, services, stage, exc)
    with services.db.session() as session:
        attempts = repository.get_task(session, ctx.task_id).attempts
    if isinstance(exc, TransientError) and attempts < services.settings.max_attempts:
        delay = _backoff(attempts)
        services.observer.retry_scheduled()
        _requeue(
            ctx,
            services,
            f"attempt {attempts} failed in stage {stage} ({exc.code}): {exc}; "
            f"retrying in {delay:.0f}s",
            error_code=exc.code,
        )
        log.info("import will be retried", stage=stage, error_code=exc.code, delay=delay)
        return Outcome(TaskStatus.PENDING, retry_in=delay)
    fail_import(ctx, services, stage, exc)
    return Outcome(TaskStatus.FAILURE)


def interrupted(ctx: JobContext, services: Services, stage: str, stop: JobInterrupted) -> Outcome:
    """Record what an interruption means: cancel fails, shutdown requeues, stall retries."""
    if stop.reason == JobInterrupted.LEASE_LOST:
        log.warning("lease lost; leaving the job to its new holder", stage=stage)
        return Outcome(TaskStatus.PROCESSING, dropped=True)
    if stop.reason == JobInterrupted.CANCELLED:
        fail_import(ctx, services, stage, interruption(services, stage, stop))
        return Outcome(TaskStatus.FAILURE)
    if stop.reason == JobInterrupted.STALLED:
        return handle_failure(ctx, services, stage, interruption(services, stage, stop))
    # Shutdown: the finished stages are durable; the next worker continues from here.
    _requeue(ctx, services, f"worker shut down during stage {stage}; requeued")
    return Outcome(TaskStatus.PENDING, retry_in=0.0)


def interruption(services: Services, stage: str, stop: JobInterrupted) -> PipelineError:
    """The error a stop is recorded as, on the stage run and (cancel, stall) on the task."""
    if stop.reason == JobInterrupted.CANCELLED:
        return Cancelled("the import was cancelled by an administrator")
    if stop.reason == JobInterrupted.STALLED:
        stall = services.settings.stall_timeout_seconds
        return Stalled(f"no progress for {stall:.0f}s in stage {stage}")
    return ShutDown(f"the worker shut down during stage {stage}; another worker continues")


def _requeue(
    ctx: JobContext, services: Services, message: str, *, error_code: str | None = None
) -> None:
    """Put the running task back to pending (the caller sends it again), fenced by the lease."""
    with services.db.session() as session:
        ctx.fence(session)
        repository.set_task_status(
            session,
            ctx.task_id,
            expected=TaskStatus.PROCESSING,
            new=TaskStatus.PENDING,
            message=message,
            error_code=error_code,
        )


def _best_effort(action: Callable[[str], None], arg: str) -> None:
    """Cleanup must not hide the failure being recorded: log store errors and go on."""
    try:
        action(arg)
    except PipelineError as exc:
        log.warning("cleanup step failed", error=str(exc), target=arg)


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def drop_import_task(session: Session, image_id: str, task_id: str) -> None:
    """Remove ``os_glance_import_task`` from the image if it names ``task_id``.

    As Glance drops its import lock when a task ends, whatever the outcome; a newer import's
    id is left alone. The store lists (``os_glance_importing_to_stores``,
    ``os_glance_failed_import``) stay, as Glance keeps them.
    """
    image = repository.get_image(session, image_id)
    if any(p.name == IMPORT_TASK and p.value == task_id for p in image.properties):
        repository.delete_property(session, image_id, IMPORT_TASK)


def fail_import(ctx: JobContext, services: Services, stage: str, exc: PipelineError) -> None:
    """Remove every byte the import wrote, put the image back to queued, fail the task."""
    remove_work_dirs(ctx, services)
    stores = ctx.target_store_ids
    for store_id in stores:
        store = services.stores.get(store_id)
        if store is not None:
            _best_effort(store.discard_partial, ctx.image_id)
    services.observer.import_finished("failure", exc.code)
    copy_job = ctx.request.method == "copy-image"
    named = exc.failed_stores if isinstance(exc, StoreCopyFailed) else None
    failed = list(named or stores)
    with services.db.session() as session:
        ctx.fence(session)
        image = repository.get_image(session, ctx.image_id)
        copied = ctx.maybe_output(StoredCopies)
        # Copies written by this job and not yet recorded as locations are orphans: remove.
        if copied and (copy_job or image.status != ImageStatus.ACTIVE):
            for loc in copied.locations:
                _best_effort(services.stores[loc.store_id].delete, loc.url)
        if image.status in IN_FLIGHT:
            repository.set_image_status(
                session, ctx.image_id, expected=IN_FLIGHT, new=ImageStatus.QUEUED
            )
        properties = {p.name: p.value for p in image.properties}
        if copy_job:  # Glance keeps earlier failures of other stores
            earlier = [s for s in properties.get(FAILED_IMPORT, "").split(",") if s]
            failed = sorted(set(earlier) | set(failed))
        importing = [s for s in properties.get(IMPORTING_TO_STORES, "").split(",") if s]
        still = [s for s in importing if s not in stores]
        repository.set_property(session, ctx.image_id, IMPORTING_TO_STORES, ",".join(still))
        repository.set_property(session, ctx.image_id, FAILED_IMPORT, ",".join(failed))
        drop_import_task(session, ctx.image_id, ctx.task_id)
        repository.set_task_status(
            session,
            ctx.task_id,
            expected=(TaskStatus.PROCESSING, TaskStatus.PENDING),
            new=TaskStatus.FAILURE,
            message=f"import failed in stage {stage} ({exc.code}): {exc}",
            error_code=exc.code,
            expires_at=ctx.expires_at(),
        )
    log.info("import finished", outcome="failure", stage=stage, error_code=exc.code, error=str(exc))


def wait_for_space(ctx: JobContext, services: Services, stage: str, exc: SpaceWait) -> Outcome:
    """Hand a job that does not fit here back to the queue, or fail it once it waited enough.

    Handing back costs no attempt: the job is pending again, marked ``waiting_for_space``
    (``tasks show``), and offered to a worker after ``space_retry_seconds``. The wait is
    counted from the job's first hand-back (its first stage run recorded with that code);
    after ``space_wait_seconds`` the job fails with ``no_space``.
    """
    settings = services.settings
    with services.db.session() as session:
        waits = [
            r.started_at
            for r in repository.stage_runs(session, ctx.task_id)
            if r.error_code == SpaceWait.code and r.started_at is not None
        ]
    first = min(waits, default=None)
    waited = 0.0 if first is None else (utcnow() - first).total_seconds()
    if waited >= settings.space_wait_seconds:
        fail_import(
            ctx,
            services,
            stage,
            NoSpace(f"no worker had room for {waited:.0f}s: {exc}"),
        )
        return Outcome(TaskStatus.FAILURE)
    services.observer.space_wait(stage)
    retry = settings.space_retry_seconds
    with services.db.session() as session:
        ctx.fence(session)
        repository.set_task_status(
            session,
            ctx.task_id,
            expected=TaskStatus.PROCESSING,
            new=TaskStatus.PENDING,
            message=f"waiting for space: {exc}; handed back, offered to a worker again in "
            f"{retry:.0f}s; fails with no_space after {settings.space_wait_seconds:.0f}s",
            error_code=SpaceWait.code,
        )
        repository.get_task(session, ctx.task_id).attempts -= 1  # a hand-back is no attempt
    log.info("job handed back: no space", stage=stage, needed=exc.needed, where=str(exc.where))
    return Outcome(TaskStatus.PENDING, retry_in=retry)

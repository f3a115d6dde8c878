"""The runner: walks one import's stages, persisting each stage's start, progress and outcome.

A stage whose latest run is ``done`` (or ``skipped``) and whose durable output is still intact
is not run again, so a job that is delivered a second time — after a crash, a retry or a
takeover — continues where the last attempt stopped. How a failure or a stop is recorded is in
:mod:`imageport.pipeline.failures`; a stage's progress goes through
:class:`~imageport.pipeline.progress.ProgressWriter`.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from imageport.errors import DatabaseUnavailable, JobInterrupted, PipelineError, StagingLost
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.failures import Outcome, handle_failure, interrupted, interruption
from imageport.pipeline.heartbeat import Heartbeat
from imageport.pipeline.outputs import StageOutput
from imageport.pipeline.progress import ProgressWriter
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import Stage, stages_for
from imageport.records import StageStatus, TaskStatus, leases, repository

log = structlog.get_logger(__name__)


def default_owner() -> str:
    """This worker thread's lease owner name: host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def run_import(services: Services, task_id: str, *, owner: str | None = None) -> Outcome:
    """Run (or continue) the import task ``task_id``; safe to deliver any number of times.

    The job runs only under the task's lease: a delivery while another worker holds a live
    lease is dropped. A finished task is left alone.
    """
    owner = owner or default_owner()
    ctx: JobContext | None = None
    with services.db.session() as session:
        # One transaction takes the lease and starts the job: a tiny import is dominated by
        # such round trips, and a worker must not spend them on bookkeeping.
        acquired = leases.acquire(session, task_id, owner, services.settings.lease_ttl_seconds)
        if acquired.ok:
            ctx = _begin(session, services, task_id, owner)
        else:
            status = TaskStatus(repository.get_task(session, task_id).status)
    if ctx is None:
        finished = status in (TaskStatus.SUCCESS, TaskStatus.FAILURE)
        log.info("delivery dropped", task_id=task_id, holder=acquired.holder, status=status)
        return Outcome(status, dropped=not finished)
    if acquired.takeover:
        services.observer.lease_taken_over()
        log.info("lease taken over", task_id=task_id)
    outcome: Outcome | None = None
    try:
        outcome = _run_leased(services, ctx, owner)
        return outcome  # noqa: RET504 - the finally clause reads it
    finally:
        # A lost lease is not ours to release; a finished job released it with its last record.
        if outcome is None or not (outcome.dropped or outcome.released):
            with services.db.session() as session:
                # A scheduled retry keeps a "not before" time, so the reaper waits for it.
                not_before = (
                    None if outcome is None or outcome.retry_in is None else outcome.retry_in
                )
                leases.release(session, task_id, owner, not_before=not_before)


def _run_leased(services: Services, ctx: JobContext, owner: str) -> Outcome:
    task_id = ctx.task_id
    structlog.contextvars.bind_contextvars(task_id=task_id, image_id=ctx.image_id)
    started = time.monotonic()
    services.observer.job_started()
    try:
        outcome = _walk(ctx, services, owner)
    finally:
        services.observer.job_ended()
        structlog.contextvars.unbind_contextvars("task_id", "image_id", "stage")
    log.info(
        "job summary",
        task_id=task_id,
        image_id=ctx.image_id,
        outcome=outcome.status,
        retry_in=outcome.retry_in,
        dropped=outcome.dropped,
        seconds=round(time.monotonic() - started, 3),
    )
    return outcome


def _walk(ctx: JobContext, services: Services, owner: str) -> Outcome:
    try:
        return _walk_stages(ctx, services, owner)
    except JobInterrupted as stop:
        # Recording the outcome found the lease gone: another worker runs the job now.
        if stop.reason != JobInterrupted.LEASE_LOST:
            raise
        log.warning("lease lost while recording the outcome; leaving the job to its holder")
        return Outcome(TaskStatus.PROCESSING, dropped=True)


def _walk_stages(ctx: JobContext, services: Services, owner: str) -> Outcome:
    stage_name = stages_for(ctx.request)[0].name
    to_run: Sequence[Stage] = ()
    try:
        # _begin just renewed the lease and read the cancel flag: no first tick needed.
        with Heartbeat(services, ctx.task_id, owner, cancelled=ctx.cancel_requested) as heartbeat:
            heartbeat.check()  # cancelled while queued: stop before touching any byte
            stages = stages_for(ctx.request)
            resume_at = _restore_inputs(
                ctx, services, stages, _resume_point(ctx, services, stages), heartbeat
            )
            # Stages done earlier are skipped: a later stage's durable output supersedes them.
            to_run = stages[resume_at:]
            run_id: int | None = None
            for index, stage in enumerate(to_run):
                stage_name = stage.name
                structlog.contextvars.bind_contextvars(stage=stage_name)
                following = to_run[index + 1].name if index + 1 < len(to_run) else None
                run_id = _run_stage(ctx, services, stage, heartbeat, run_id, following)
    except JobInterrupted as stop:
        return interrupted(ctx, services, stage_name, stop)
    except PipelineError as exc:
        return handle_failure(ctx, services, stage_name, exc)
    except DBAPIError as exc:
        # A lost database connection (a restart, a failover) is transient, never the import's
        # fault. If the database is still away, recording this fails too and the job is left
        # to the reaper, which requeues it once the lease has expired.
        lost = DatabaseUnavailable(f"database connection lost in stage {stage_name}: {exc.orig}")
        return handle_failure(ctx, services, stage_name, lost)
    except Exception as exc:  # noqa: BLE001 - a bug must end in a recorded state; _crash logs it
        return handle_failure(ctx, services, stage_name, _crash(stage_name, exc))
    services.observer.import_finished("success", "")
    # The last stage's outcome transaction gave the lease up (when a stage ran at all).
    return Outcome(TaskStatus.SUCCESS, released=bool(to_run))


def context_of(services: Services, task_id: str) -> JobContext:
    """The job context of a task as recorded, without changing anything (admin and reaper)."""
    with services.db.session() as session:
        task = repository.get_task(session, task_id)
        assert task.image_id is not None  # noqa: S101 - import tasks always have an image
        ctx = JobContext(
            task_id=task_id,
            image_id=task.image_id,
            request=ImportRequest.model_validate(task.input["request"]),
            settings=services.settings,
        )
        by_name = {s.name: s for s in stages_for(ctx.request)}
        for name, run in repository.latest_stage_runs(session, task_id).items():
            reusable = run.status in (StageStatus.DONE, StageStatus.SKIPPED)
            if reusable and run.output is not None and name in by_name:
                ctx.outputs[name] = by_name[name].output_type.model_validate(run.output)
    return ctx


def _begin(session: Session, services: Services, task_id: str, owner: str) -> JobContext:
    """Move the leased task to processing and load the outputs of finished stages."""
    task = repository.get_task(session, task_id)
    if task.status == TaskStatus.PENDING:
        repository.set_task_status(
            session, task_id, expected=TaskStatus.PENDING, new=TaskStatus.PROCESSING
        )
    task.attempts += 1
    request = ImportRequest.model_validate(task.input["request"])
    assert task.image_id is not None  # noqa: S101 - import tasks always have an image
    ctx = JobContext(
        task_id=task_id,
        image_id=task.image_id,
        request=request,
        settings=services.settings,
        owner=owner,
        cancel_requested=bool(task.cancel_requested),
    )
    stages = stages_for(request)
    names = [s.name for s in stages]
    # An admin retry --from-stage S re-runs S and everything after it.
    keep = names[: names.index(task.restart_stage)] if task.restart_stage in names else names
    task.restart_stage = None
    by_name = {s.name: s for s in stages}
    for name, run in repository.latest_stage_runs(session, task_id).items():
        ctx.attempts[name] = run.attempt
        reusable = run.status in (StageStatus.DONE, StageStatus.SKIPPED)
        if reusable and run.output is not None and name in keep:
            # The JSON boundary: a recorded output becomes its stage's typed output again.
            ctx.outputs[name] = by_name[name].output_type.model_validate(run.output)
    return ctx


def _resume_point(ctx: JobContext, services: Services, stages: Sequence[Stage]) -> int:
    """Index of the first stage to run: just after the last finished stage still intact.

    Looking from the end means a job killed after its copy finished only activates, even if
    the staged file it copied from is gone; and a stage that must run again makes every later
    stage run again, since their outputs were computed from bytes that may differ now.
    """
    valid: list[bool] = []
    for stage in stages:
        if stage.name not in ctx.outputs:
            valid.append(False)
            continue
        intact = stage.still_valid(ctx, services)
        # A stage without files of its own (verify, inspect) is as good as the one before.
        valid.append((valid[-1] if valid else True) if intact is None else intact)
    return max((i + 1 for i, ok in enumerate(valid) if ok), default=0)


def _restore_inputs(
    ctx: JobContext,
    services: Services,
    stages: Sequence[Stage],
    resume_at: int,
    heartbeat: Heartbeat,
) -> int:
    """Fetch the files the first stage to run reads, when this host lacks them.

    The nearest finished stage that has files of its own made them (inspect and convert read
    the staged file, copy reads the conversion's output): with remote staging a job taken over
    on another host fetches them from there. Returns where to resume: 0 (stage again) when
    they are lost after all.
    """
    for stage in reversed(stages[:resume_at]):
        try:
            if stage.restore(ctx, services, heartbeat.beat):
                break
        except StagingLost as exc:
            log.warning("staged data lost; staging again", error=str(exc))
            return 0
    return resume_at


def _run_stage(
    ctx: JobContext,
    services: Services,
    stage: Stage,
    heartbeat: Heartbeat,
    run_id: int | None,
    following: str | None,
) -> int | None:
    """Run one stage, recording its start, progress and outcome.

    ``run_id`` is the stage's run row when the previous stage's outcome transaction started
    it already; a success starts the ``following`` stage's row the same way, and returns it.
    """
    name = stage.name
    ctx.outputs.pop(name, None)
    if run_id is None:
        with services.db.session() as session:
            run_id = _open_run(session, ctx, name)
    writer = ProgressWriter(services, run_id, heartbeat)
    ctx.progress = writer
    started = time.monotonic()
    try:
        output = stage.run(ctx, services)
    except JobInterrupted as stop:
        if stop.reason != JobInterrupted.LEASE_LOST:  # the new holder owns the records now
            _finish(ctx, writer, StageStatus.FAILED, None, interruption(services, name, stop))
        raise
    except PipelineError as exc:
        _finish(ctx, writer, StageStatus.FAILED, None, exc)
        raise
    except Exception as exc:
        crash = _crash(name, exc)
        _finish(ctx, writer, StageStatus.FAILED, None, crash)
        raise crash from exc
    heartbeat.check()  # a job that lost its lease must not record a result
    status = StageStatus.SKIPPED if output.was_skipped() else StageStatus.DONE
    ctx.outputs[name] = output
    try:
        next_run = _finish(ctx, writer, status, output, None, following=following)
    except DBAPIError as exc:
        if following is not None:
            raise
        # The last stage ended the job in its own transaction (the image active, the task a
        # success: completion.finish_task); only its run row and the lease release are lost.
        # The lease expires by itself; reporting a finished import as failed would mislead.
        log.warning("could not record the last stage's run; the job is done", error=str(exc.orig))
        next_run = None
    seconds = time.monotonic() - started
    services.observer.stage_finished(name, seconds, writer.done)
    log.info("stage finished", stage=name, status=status, seconds=round(seconds, 3))
    return next_run


def _finish(
    ctx: JobContext,
    writer: ProgressWriter,
    status: StageStatus,
    output: StageOutput | None,
    error: PipelineError | None,
    *,
    following: str | None = None,
) -> int | None:
    """Record a stage's outcome and its last progress numbers in one fenced transaction.

    With ``following``, the same transaction starts that stage's run row; its id is returned.
    The last stage's success ends the job: the same transaction gives the lease up.
    """
    with writer.services.db.session() as session:
        ctx.fence(session)
        writer.flush(session)
        repository.finish_stage_run(
            session,
            writer.run_id,
            status=status,
            output=None if output is None else output.as_json(),
            error_code=error.code if error else None,
            error_message=error.message if error else None,
        )
        if following is None:
            if error is None and ctx.owner is not None:
                leases.release(session, ctx.task_id, ctx.owner)
            return None
        return _open_run(session, ctx, following)


def _crash(stage: str, exc: Exception) -> PipelineError:
    """The recorded error of a bug in a stage, and its traceback in the log under a reference.

    Task messages reach API clients (``GET /v2/tasks/ID``, a failed ``PUT /file``), so the
    exception's type and text stay in the worker's log; the message names where to find them.
    """
    reference = secrets.token_hex(6)
    log.error("stage crashed", stage=stage, reference=reference, exc_info=exc)
    return PipelineError(
        f"internal error in stage {stage} (reference {reference}): the worker's log has the "
        "details; retry the import, and report the reference if it fails again"
    )


def _open_run(session: Session, ctx: JobContext, stage: str) -> int:
    """Open the row of the job's next attempt at ``stage``; return its id."""
    return repository.open_stage_run(session, ctx.task_id, stage, attempt=ctx.next_attempt(stage))

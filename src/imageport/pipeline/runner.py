"""The runner: walks one import's stages, persisting each stage's start, progress and outcome.

A stage whose latest run is ``done`` (or ``skipped``) and whose durable output is still intact
is not run again, so a job that is delivered a second time — after a crash, a retry or a
takeover — continues where the last attempt stopped. Every failure ends in a recorded state:
a retry scheduled for transient errors while attempts remain, otherwise a failed task, an image
back in ``queued`` and no staged or partial data left behind.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from imageport.errors import (
    Cancelled,
    DatabaseUnavailable,
    JobInterrupted,
    PipelineError,
    ShutDown,
    StagingLost,
    Stalled,
    StoreCopyFailed,
    TransientError,
)
from imageport.pipeline.completion import remove_work_dirs
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.heartbeat import Heartbeat
from imageport.pipeline.outputs import StageOutput, StoredCopies
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import Stage, stages_for
from imageport.records import ImageStatus, StageStatus, TaskStatus, leases, repository
from imageport.records.reserved import FAILED_IMPORT, IMPORTING_TO_STORES
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
        return _interrupted(ctx, services, stage_name, stop)
    except PipelineError as exc:
        return _handle_failure(ctx, services, stage_name, exc)
    except DBAPIError as exc:
        # A lost database connection (a restart, a failover) is transient, never the import's
        # fault. If the database is still away, recording this fails too and the job is left
        # to the reaper, which requeues it once the lease has expired.
        lost = DatabaseUnavailable(f"database connection lost in stage {stage_name}: {exc.orig}")
        return _handle_failure(ctx, services, stage_name, lost)
    except Exception as exc:  # a bug must still end in a recorded state, never a stuck image
        log.exception("stage crashed", stage=stage_name)
        # The task message is for administrators (tasks show): the exception's type and
        # text say where to look; the traceback is in the worker's log.
        wrapped = PipelineError(f"internal error in stage {stage_name}: {exc!r}")
        return _handle_failure(ctx, services, stage_name, wrapped)
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
    writer = _ProgressWriter(services, run_id, heartbeat)
    ctx.progress = writer
    started = time.monotonic()
    try:
        output = stage.run(ctx, services)
    except JobInterrupted as stop:
        if stop.reason != JobInterrupted.LEASE_LOST:  # the new holder owns the records now
            _finish(ctx, writer, StageStatus.FAILED, None, _interruption(services, name, stop))
        raise
    except PipelineError as exc:
        _finish(ctx, writer, StageStatus.FAILED, None, exc)
        raise
    except Exception as exc:
        _finish(ctx, writer, StageStatus.FAILED, None, PipelineError(repr(exc)))
        raise
    heartbeat.check()  # a job that lost its lease must not record a result
    status = StageStatus.SKIPPED if output.was_skipped() else StageStatus.DONE
    ctx.outputs[name] = output
    next_run = _finish(ctx, writer, status, output, None, following=following)
    seconds = time.monotonic() - started
    services.observer.stage_finished(name, seconds, writer.done)
    log.info("stage finished", stage=name, status=status, seconds=round(seconds, 3))
    return next_run


def _finish(
    ctx: JobContext,
    writer: _ProgressWriter,
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


def _open_run(session: Session, ctx: JobContext, stage: str) -> int:
    """Open the row of the job's next attempt at ``stage``; return its id."""
    return repository.open_stage_run(session, ctx.task_id, stage, attempt=ctx.next_attempt(stage))


class _ProgressWriter:
    """Persists a stage's bytes done at most once per progress interval, and on flush."""

    def __init__(self, services: Services, run_id: int, heartbeat: Heartbeat) -> None:
        self.services = services
        self._heartbeat = heartbeat
        self.run_id = run_id
        self._interval = services.settings.progress_interval_seconds
        # The stage's row says 0 bytes already: the first write waits one interval, so a
        # short stage writes its numbers once, with its outcome.
        self._last = time.monotonic()
        self._state: tuple[int, int | None] | None = None
        self._written: tuple[int, int | None] | None = None

    @property
    def done(self) -> int:
        """Bytes done so far."""
        return self._state[0] if self._state else 0

    def __call__(self, done: int, total: int | None) -> None:
        # Raises JobInterrupted when the job must stop: every stage's loop passes through here.
        self._heartbeat.beat()
        self._state = (done, total)
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self.flush()

    def flush(self, session: Session | None = None) -> None:
        """Write the latest numbers if they changed (in ``session``, else in a new one)."""
        if self._state is None or self._state == self._written:
            return
        done, total = self._state
        if session is None:
            with self.services.db.session() as own:
                repository.update_stage_progress(
                    own, self.run_id, bytes_done=done, bytes_total=total
                )
        else:
            repository.update_stage_progress(
                session, self.run_id, bytes_done=done, bytes_total=total
            )
        self._written = self._state


def _handle_failure(ctx: JobContext, services: Services, stage: str, exc: PipelineError) -> Outcome:
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


def _interrupted(ctx: JobContext, services: Services, stage: str, stop: JobInterrupted) -> Outcome:
    """Record what an interruption means: cancel fails, shutdown requeues, stall retries."""
    if stop.reason == JobInterrupted.LEASE_LOST:
        log.warning("lease lost; leaving the job to its new holder", stage=stage)
        return Outcome(TaskStatus.PROCESSING, dropped=True)
    if stop.reason == JobInterrupted.CANCELLED:
        fail_import(ctx, services, stage, _interruption(services, stage, stop))
        return Outcome(TaskStatus.FAILURE)
    if stop.reason == JobInterrupted.STALLED:
        return _handle_failure(ctx, services, stage, _interruption(services, stage, stop))
    # Shutdown: the finished stages are durable; the next worker continues from here.
    _requeue(ctx, services, f"worker shut down during stage {stage}; requeued")
    return Outcome(TaskStatus.PENDING, retry_in=0.0)


def _interruption(services: Services, stage: str, stop: JobInterrupted) -> PipelineError:
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

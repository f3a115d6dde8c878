"""The reaper: no import is left stuck. Runs in every worker, and as ``imageport reap``.

* A processing task whose lease expired lost its worker (killed, OOM, host gone, hung): it is
  put back to pending and queued again — or failed, with everything it wrote removed, once it
  used up ``max_attempts``.
* This host's staging and scratch directories of jobs that are over are removed
  (:mod:`imageport.workers.sweeper`).
* A pending task nobody holds that has waited longer than a lease may have lost its queue
  message (a broker restarted without persistence): when the broker holds fewer messages
  than there are runnable pending tasks, the shortfall is sent again, oldest first.
  Duplicates are harmless: a live lease drops them, a finished task ignores them.
* A deleted image that still records a location has data left in a store: a copy recorded
  by a job racing the delete, or one a store failed to delete. It is deleted again
  (``delete_image`` on a deleted image retries only that; see pipeline/methods/deletion.py).

Several reapers may run at once: every change is a compare-and-set, so one wins.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, or_, select

from imageport.errors import PipelineError, StateError, TransientError
from imageport.pipeline import Services, context_of, delete_image, fail_import
from imageport.records import Task, TaskStatus, leases, repository
from imageport.records.base import utcnow
from imageport.workers.queues import queued_messages
from imageport.workers.sweeper import sweep_local

log = structlog.get_logger(__name__)
REAPER_OWNER = "reaper"


class LeaseExpired(TransientError):
    """The worker running the import stopped renewing its lease."""

    code = "lease_expired"


@dataclass
class ReapReport:
    """What one reaper pass did, by task id."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    #: Local directories of finished jobs removed from this host (see the sweeper).
    swept: list[str] = field(default_factory=list)
    #: Deleted images whose stored data left behind is now gone (by image id).
    purged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        """The report as JSON-ready lists."""
        return {
            "requeued": self.requeued,
            "failed": self.failed,
            "resent": self.resent,
            "swept": self.swept,
            "purged": self.purged,
        }


def reap(services: Services, enqueue: Callable[[str], None]) -> ReapReport:
    """One pass: requeue or fail expired jobs, resend stale pending ones, sweep this host.

    Then delete the data deleted images still record.
    """
    report = ReapReport()
    now = utcnow()
    with services.db.session() as session:
        expired = [(t.id, t.attempts, t.lease_owner) for t in leases.expired(session, now)]
    stale = _lost_messages(services, now)
    for task_id, attempts, owner in expired:
        try:
            if attempts >= services.settings.max_attempts:
                _fail(services, task_id, owner)
                report.failed.append(task_id)
            else:
                _requeue(services, task_id, owner)
                enqueue(task_id)
                report.requeued.append(task_id)
        except StateError:
            continue  # another reaper or a worker got there first
    for task_id in stale:
        enqueue(task_id)
        report.resent.append(task_id)
    report.swept = sweep_local(services)
    report.purged = _purge_deleted(services)
    for action, ids in report.as_dict().items():
        if ids:
            services.observer.reaped(action, len(ids))
            log.info("reaper pass", action=action, tasks=ids)
    return report


def _lost_messages(services: Services, now: datetime) -> list[str]:
    """Pending tasks to send again: as many as messages are missing, oldest first.

    Every runnable pending task needs a message (a turn, see :mod:`fairshare`). When the
    broker holds at least as many as there are such tasks, none was lost — a long backlog is
    just waiting — and nothing is sent: resending every task that waited longer than a lease
    would add a whole backlog of duplicates on every pass of every worker. Otherwise the
    shortfall is made up from the tasks that waited longest. A broker that cannot tell its
    depth gets every stale task again, as before.
    """
    settings = services.settings
    stale_before = now - timedelta(seconds=settings.lease_ttl_seconds)
    waiting = queued_messages(settings)
    # Free and due: no lease, or an expired one — a retry's "not before" time that passed,
    # or a fair-share pick whose worker died before it started the job.
    due = or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < now)
    pending = Task.status == TaskStatus.PENDING.value
    with services.db.session() as session:
        missing: int | None = None
        if waiting is not None:
            runnable = session.scalar(select(func.count()).where(pending, due)) or 0
            missing = runnable - waiting
            if missing <= 0:
                return []
        query = (
            select(Task.id)
            .where(
                pending,
                Task.updated_at < stale_before,
                or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < stale_before),
            )
            .order_by(Task.created_at)
            .limit(missing)
        )
        return list(session.scalars(query))


def _purge_deleted(services: Services) -> list[str]:
    """Delete the stored copies deleted images still record; return the images now clean."""
    with services.db.session() as session:
        image_ids = repository.deleted_with_locations(session)
    purged: list[str] = []
    for image_id in image_ids:
        try:
            if delete_image(services, image_id).locations_left == 0:
                purged.append(image_id)
        except PipelineError as exc:  # one image's trouble must not stop the pass
            log.warning("deleted image not purged", image_id=image_id, error=str(exc))
    return purged


def _requeue(services: Services, task_id: str, owner: str | None) -> None:
    """Put an expired job back to pending, unless a worker took it over since it was listed.

    Raises:
        StateError: the lease is no longer the expired one the pass saw.
    """
    with services.db.session() as session:
        # The status alone is not enough: between the listing and this transaction another
        # worker may have taken the expired lease over (RabbitMQ redelivers a dead consumer's
        # message at once) and be running the job; requeueing it then would make that
        # worker's last record fail. The row lock makes the check and the change one step.
        task = session.scalar(select(Task).where(Task.id == task_id).with_for_update())
        expires = task.lease_expires_at if task is not None else None
        if (
            task is None
            or task.status != TaskStatus.PROCESSING
            or task.lease_owner != owner
            or (expires is not None and expires >= utcnow())
        ):
            raise StateError(f"task {task_id} was taken over meanwhile")
        repository.set_task_status(
            session,
            task_id,
            expected=TaskStatus.PROCESSING,
            new=TaskStatus.PENDING,
            message=f"worker {owner or 'unknown'} stopped renewing its lease; requeued",
            error_code=LeaseExpired.code,
        )
        if owner is not None:
            leases.release(session, task_id, owner)


def _fail(services: Services, task_id: str, owner: str | None) -> None:
    with services.db.session() as session:
        if not leases.acquire(
            session, task_id, REAPER_OWNER, services.settings.lease_ttl_seconds
        ).ok:
            raise StateError(f"task {task_id} was taken by another worker")
    try:
        ctx = context_of(services, task_id)
        ctx.owner = REAPER_OWNER  # fence the cleanup by the lease the reaper just took
        error: PipelineError = LeaseExpired(
            f"worker {owner or 'unknown'} stopped renewing its lease and the attempts "
            f"({services.settings.max_attempts}) are used up; retry with 'imageport retry'"
        )
        fail_import(ctx, services, _last_stage(services, task_id), error)
    finally:
        with services.db.session() as session:
            leases.release(session, task_id, REAPER_OWNER)


def _last_stage(services: Services, task_id: str) -> str:
    with services.db.session() as session:
        runs = repository.stage_runs(session, task_id)
    return runs[-1].stage if runs else "stage"


def reap_forever(services: Services, enqueue: Callable[[str], None], stop: threading.Event) -> None:
    """Run a reaper pass every ``reaper_interval_seconds`` until ``stop`` is set."""
    interval = services.settings.reaper_interval_seconds
    while not stop.wait(interval):
        try:
            reap(services, enqueue)
        except Exception:
            # One failed pass (the database restarting) must not end the loop.
            log.exception("reaper pass failed")

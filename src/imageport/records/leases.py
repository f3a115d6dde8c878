"""Job leases: which worker runs a task, until when. Every change is one compare-and-set UPDATE.

A lease lives on the import task (one task per importing image, so it is the image's lease).
It is taken when a worker starts the job, renewed by the job's heartbeat, and released when the
job ends. A lease that was not renewed in time has expired: another worker — or the reaper —
may take the job over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from imageport.records.base import utcnow
from imageport.records.models import Task
from imageport.records.states import TaskStatus

_RUNNABLE = (TaskStatus.PENDING, TaskStatus.PROCESSING)


@dataclass(frozen=True)
class Acquired:
    """The outcome of trying to take a task's lease."""

    ok: bool
    takeover: bool = False  # True when an expired lease of another worker was taken over
    holder: str | None = None  # who holds it, when not acquired


def acquire(session: Session, task_id: str, owner: str, ttl: float) -> Acquired:
    """Take the lease if it is free, expired, or already ours (a redelivery to the same worker).

    Returns ``Acquired(ok=False)`` when another worker holds a live lease, or the task is no
    longer runnable.
    """
    now = utcnow()
    task = session.get(Task, task_id)
    if task is None or task.status not in _RUNNABLE:
        return Acquired(ok=False)
    previous = task.lease_owner
    expired = task.lease_expires_at is not None and task.lease_expires_at < now
    result = session.execute(
        update(Task)
        .where(
            Task.id == task_id,
            Task.status.in_([s.value for s in _RUNNABLE]),
            or_(
                Task.lease_owner.is_(None),
                Task.lease_owner == owner,
                Task.lease_expires_at < now,
            ),
        )
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return Acquired(ok=False, holder=previous)
    session.expire(task)
    return Acquired(ok=True, takeover=previous not in (None, owner) and expired)


def renew(session: Session, task_id: str, owner: str, ttl: float) -> bool:
    """Extend our lease; False means it is no longer ours and the job must stop touching it."""
    result = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=ttl))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, task_id: str, owner: str, *, not_before: float | None = None) -> None:
    """Give the lease up (no-op if someone else holds it now).

    ``not_before`` (seconds from now) keeps an owner-less expiry: the time a scheduled retry
    is due, before which the reaper must not send the task again.
    """
    until = None if not_before is None else utcnow() + timedelta(seconds=not_before)
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )


def holds(session: Session, task_id: str, owner: str) -> bool:
    """Whether ``owner`` holds the lease; locks the task row until the transaction ends."""
    holder = session.scalar(select(Task.lease_owner).where(Task.id == task_id).with_for_update())
    return holder == owner


def cancel_requested(session: Session, task_id: str) -> bool:
    """Whether an admin asked to cancel the task."""
    return bool(session.scalar(select(Task.cancel_requested).where(Task.id == task_id)))


def expired(session: Session, now: datetime | None = None) -> list[Task]:
    """Processing tasks whose lease ran out: their worker died or hung."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(Task).where(
                Task.status == TaskStatus.PROCESSING.value,
                or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < now),
            )
        )
    )


def stale_pending(session: Session, older_than: datetime) -> list[Task]:
    """Pending tasks nobody holds that have waited since before ``older_than``.

    Their queue message may have been lost (a broker restarted without persistence); sending
    it again is safe, since a duplicate delivery is dropped by the lease or finds the task done.
    """
    return list(
        session.scalars(
            select(Task).where(
                Task.status == TaskStatus.PENDING.value,
                Task.updated_at < older_than,
                Task.lease_owner.is_(None),
                or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < older_than),
            )
        )
    )

"""Fair share: which import a worker runs when a message arrives, across projects.

A queue message is a *turn*, not an order to run one particular task. Every pending import
has had a message sent, so there are at least as many messages as pending imports; a worker
that receives one runs the import of the project that has the fewest imports in flight among
those with work waiting: the message's own task, or the oldest waiting import of a less served
project. A tie is drawn at random, the message's own project one of the entrants: preferring it
let two workers that pick in lockstep (each sees every project at 0 in flight) serve only the
busy project for as long as the lockstep lasted (project B's 5 imports behind 17 to 31 of A's in
4 of 10 runs of test_fleet; with the draw, behind 0 to 8 in 12 of 12). The task named by the
message stays pending and runs on a later turn (the message of the task that ran instead
gives it one). So one busy project cannot starve the others: each project with queued work
gets a turn in round robin over in-flight counts, whatever the order of the broker's queue,
on either broker, without a queue server of our own.

``max_inflight_per_project`` caps a project's imports in flight. A turn that finds only
capped projects is handed back: the message is dropped and its task is marked as waiting;
the end of one of the project's jobs sends a new turn, and the reaper's resend of pending
tasks older than a lease covers a turn lost in a crash.

Cost per job: one short transaction before the job — the projects with pending work by a
loose index scan over ``ix_tasks_pending_fifo`` (one index probe per project, not per task),
the in-flight counts over the few leased tasks, and one ``UPDATE`` taking the chosen task's
lease (so no other pick can take it before the runner starts it).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from sqlalchemy import ColumnElement, func, or_, select, text, update
from sqlalchemy.orm import Session

from imageport.records import Task, TaskStatus, leases
from imageport.records.base import utcnow

#: The PostgreSQL advisory lock picks take while a per-project cap is set ("imageport").
PICK_LOCK_KEY = 0x696D616765706F72

#: Marks a pending task whose turn was handed back because its project is at its cap.
AT_CAPACITY = "waiting_for_capacity"

#: One index probe per distinct owner of pending tasks (a "loose index scan"); PostgreSQL and
#: SQLite both run it on ix_tasks_pending_fifo (status, owner, created_at).
_PENDING_PROJECTS = text(
    """
    WITH RECURSIVE p(owner) AS (
        SELECT min(owner) FROM tasks WHERE status = :pending
        UNION ALL
        SELECT (SELECT min(t.owner) FROM tasks t WHERE t.status = :pending AND t.owner > p.owner)
        FROM p WHERE p.owner IS NOT NULL
    )
    SELECT owner FROM p WHERE owner IS NOT NULL
    """
)


@dataclass(frozen=True)
class Turn:
    """What a message's turn is spent on."""

    #: The task to run now (the message's own, or another project's); None: hand it back.
    task_id: str | None
    #: True when the lease of ``task_id`` was taken in the choosing transaction.
    leased: bool = False
    #: The project whose cap sent the turn back (when ``task_id`` is None).
    capped: str | None = None


def in_flight(session: Session) -> dict[str | None, int]:
    """Imports in flight by project: leased tasks, running or about to start.

    Only rows with a live lease are read: a small range of ``ix_tasks_lease_expires_at``.
    """
    rows = session.execute(
        select(Task.owner, func.count())
        .where(
            Task.lease_expires_at >= utcnow(),  # a live lease (a dead worker's is not)
            Task.lease_owner.is_not(None),
            Task.status.in_([TaskStatus.PENDING.value, TaskStatus.PROCESSING.value]),
        )
        .group_by(Task.owner)
    )
    return {owner: int(count) for owner, count in rows}


def waiting_projects(session: Session) -> list[str | None]:
    """The projects (owners; None for tasks without one) that have pending imports."""
    projects: list[str | None] = list(
        session.scalars(_PENDING_PROJECTS, {"pending": TaskStatus.PENDING.value})
    )
    ownerless = session.scalar(
        select(Task.id)
        .where(Task.status == TaskStatus.PENDING.value, Task.owner.is_(None))
        .limit(1)
    )
    if ownerless is not None:
        projects.append(None)
    return projects


def choose(session: Session, task_id: str, owner: str, ttl: float, cap: int | None) -> Turn:
    """Decide what the turn of ``task_id``'s message runs (see the module docstring).

    ``owner`` is the lease owner the caller will run the job as, for ``ttl`` seconds: a task
    of another project is leased to it here, so two workers never pick the same one.
    """
    now = utcnow()
    own = session.get(Task, task_id)
    if own is None:
        return Turn(task_id)  # the runner reports it
    live = own.lease_expires_at is not None and own.lease_expires_at >= now
    held = own.lease_owner is not None and own.lease_owner != owner and live
    if own.status == TaskStatus.PROCESSING and not held:
        return Turn(task_id)  # its worker died: take it over, as before
    if cap is not None and session.get_bind().dialect.name == "postgresql":
        # With a cap, counting and leasing must be one step across workers, or two workers
        # could both see a project one below its cap and both start a job: picks take turns.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PICK_LOCK_KEY})
    picker = _Picker(session, now, owner, ttl, cap)
    if own.status != TaskStatus.PENDING or held:
        # Finished, or run by another worker (maybe on the turn of another task's message):
        # this turn is owed to some pending task, so it goes to the least served project.
        other = picker.least_served(exclude=())
        return Turn(other or task_id, leased=other is not None)
    return _own_or_other(session, picker, own, cap)


def _own_or_other(session: Session, picker: _Picker, own: Task, cap: int | None) -> Turn:
    """The turn of a pending task: its own, unless another project is less served."""
    project = own.owner
    mine = picker.counts.get(project, 0)
    capped = cap is not None and mine >= cap
    # Another project goes first when it has fewer imports in flight (or this one is capped);
    # on a tie, when the draw goes against this one.
    below = None if capped else mine + int(_loses_draw(picker, project, mine))
    other = picker.least_served(exclude=(project,), below=below)
    if other is not None:
        return Turn(other, leased=True)
    if capped:
        return Turn(None, capped=project or "")
    # Leased here, in the choosing transaction: leased only later by the runner, another
    # worker's pick could take it in between, and this turn would be lost (its task stranded
    # until the reaper resends it). Counted from now on by every other pick, too.
    if leases.acquire(session, own.id, picker.owner, picker.ttl).ok:
        return Turn(own.id, leased=True)
    other = picker.least_served(exclude=())  # another pick took it: serve someone else
    return Turn(other or own.id, leased=other is not None)


def _loses_draw(picker: _Picker, project: str | None, mine: int) -> bool:
    """Whether a tie for least served goes to another project (each entrant equally likely)."""
    tied = [p for p in picker.waiting if p != project and picker.counts.get(p, 0) == mine]
    return bool(tied) and secrets.randbelow(len(tied) + 1) != 0


def hand_back(session: Session, task_id: str, project: str, cap: int) -> None:
    """Mark a pending task whose turn was handed back because its project is at its cap."""
    session.execute(
        update(Task)
        .where(Task.id == task_id, Task.status == TaskStatus.PENDING.value)
        .values(
            error_code=AT_CAPACITY,
            message=f"waiting: project {project or '(none)'} has {cap} imports in flight "
            f"(max_inflight_per_project={cap}); it starts when one of them ends",
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


def next_of(session: Session, project: str | None) -> str | None:
    """The oldest pending task of ``project`` (to send a turn to when a slot frees up)."""
    owned = Task.owner.is_(None) if project is None else Task.owner == project
    return session.scalar(
        select(Task.id)
        .where(Task.status == TaskStatus.PENDING.value, owned)
        .order_by(Task.created_at)
        .limit(1)
    )


class _Picker:
    """Chooses and leases the next task of the least served project, in one transaction."""

    def __init__(
        self, session: Session, now: datetime, owner: str, ttl: float, cap: int | None
    ) -> None:
        self.session = session
        self.now = now
        self.owner = owner
        self.ttl = ttl
        self.cap = cap
        self.counts = in_flight(session)

    @cached_property
    def waiting(self) -> list[str | None]:
        """The projects with pending imports, in random order (ties are drawn, not fixed)."""
        projects = waiting_projects(self.session)
        # Shuffled, then sorted stably by in-flight count: equal counts stay in random order.
        secrets.SystemRandom().shuffle(projects)
        return projects

    def least_served(
        self, *, exclude: tuple[str | None, ...], below: int | None = None
    ) -> str | None:
        """Lease and return the oldest runnable task of the least served waiting project.

        Projects in ``exclude`` are skipped, and so are those with ``below`` or more imports
        in flight (when given) or at the cap; the fewest in flight go first.
        """
        waiting = [p for p in self.waiting if p not in exclude]
        for project in sorted(waiting, key=lambda p: self.counts.get(p, 0)):
            served = self.counts.get(project, 0)
            if below is not None and served >= below:
                break
            if self.cap is not None and served >= self.cap:
                continue
            found = self._take_oldest(project)
            if found is not None:
                return found
        return None

    def _take_oldest(self, project: str | None) -> str | None:
        """Lease the project's oldest pending task nobody holds and that is due."""
        owned = Task.owner.is_(None) if project is None else Task.owner == project
        query = (
            select(Task.id)
            .where(
                Task.status == TaskStatus.PENDING.value,
                owned,
                Task.cancel_requested.is_(False),
                # Free: never leased, or the lease ran out — a scheduled retry's "not before"
                # time is an owner-less expiry, and a pick whose worker died before starting
                # the job leaves an expired one (such a task must not be stranded).
                _free(self.now),
            )
            .order_by(Task.created_at)
            # No FOR UPDATE SKIP LOCKED: it would lock every candidate returned and make
            # concurrent picks skip rows nobody takes (a turn spent on nothing). The
            # compare-and-set UPDATE below decides; a concurrent pick of the same row waits
            # for the other's short transaction, then finds the row taken and tries the next.
            .limit(4)
        )
        until = self.now + timedelta(seconds=self.ttl)
        for candidate in self.session.scalars(query):
            taken = self.session.execute(
                update(Task)
                .where(
                    Task.id == candidate,
                    Task.status == TaskStatus.PENDING.value,
                    _free(self.now),
                )
                .values(lease_owner=self.owner, lease_expires_at=until)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return str(candidate)
        return None


def _free(now: datetime) -> ColumnElement[bool]:
    """A task nobody holds: no lease, or one that expired before ``now``."""
    return or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < now)

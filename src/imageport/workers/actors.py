"""The dramatiq actors. They are thin: take a task id, call the runner, schedule a retry.

Actors are declared on an explicit broker by :func:`declare_actors` rather than at import time
with ``@dramatiq.actor``, so no module-level broker or settings are needed to import this file.
In distributed mode a message is a turn that may run another project's import
(:mod:`imageport.workers.fairshare`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import structlog

from imageport.pipeline import Outcome, Services, default_owner, run_import
from imageport.records import Task, leases
from imageport.workers import fairshare

log = structlog.get_logger(__name__)
IMPORT_QUEUE = "imports"
IMPORT_ACTOR = "run_import"


@dataclass(frozen=True)
class Actors:
    """The actors declared on one broker."""

    run_import: Any  # dramatiq.Actor[[str], None]; dramatiq's generics are not typed for mypy

    def enqueue_import(self, task_id: str, *, delay_ms: int | None = None) -> None:
        """Queue the import task ``task_id`` (ids travel, never objects)."""
        self.run_import.send_with_options(args=(task_id,), delay=delay_ms)


def declare_actors(broker: dramatiq.Broker, services: Callable[[], Services]) -> Actors:
    """Declare imageport's actors on ``broker``; ``services`` gives this process's clients."""
    holder: dict[str, Any] = {}

    def send(task_id: str, delay_ms: int | None = None) -> None:
        holder["actor"].send_with_options(args=(task_id,), delay=delay_ms)

    def run_import_job(task_id: str) -> None:
        ran, outcome = take_turn(services(), task_id, send)
        if outcome is not None and outcome.retry_in is not None:
            send(ran, int(outcome.retry_in * 1000))

    actor = dramatiq.Actor(
        run_import_job,
        broker=broker,
        actor_name=IMPORT_ACTOR,
        queue_name=IMPORT_QUEUE,
        priority=0,
        options={"max_retries": 0},
    )
    holder["actor"] = actor
    return Actors(run_import=actor)


def take_turn(
    services: Services, task_id: str, send: Callable[[str], None]
) -> tuple[str, Outcome | None]:
    """Spend the turn of ``task_id``'s message; returns the task run and its outcome.

    The outcome is None when the turn was handed back (every waiting project at its cap).
    Embedded mode runs the message's own task: its queue is this process's alone, and a turn
    spent on another process's task would leave its own waiting for nobody.
    """
    settings = services.settings
    if settings.is_embedded or not settings.fair_share:
        return task_id, run_import(services, task_id)
    owner = default_owner()
    cap = settings.max_inflight_per_project
    with services.db.session() as session:
        turn = fairshare.choose(session, task_id, owner, settings.lease_ttl_seconds, cap)
        if turn.task_id is None and cap is not None:
            fairshare.hand_back(session, task_id, turn.capped or "", cap)
    if turn.task_id is None:
        log.info("turn handed back: project at its cap", task_id=task_id, project=turn.capped)
        return task_id, None
    try:
        outcome = run_import(services, turn.task_id, owner=owner)
    except Exception:
        if turn.leased:  # the pick took the lease in its own transaction: give it back
            _release_quietly(services, turn.task_id, owner)
        raise
    if cap is not None and not outcome.dropped:
        _pass_turn_on(services, turn.task_id, send)
    return turn.task_id, outcome


def _pass_turn_on(services: Services, ended: str, send: Callable[[str], None]) -> None:
    """A job of a capped project ended: give its next waiting import a turn."""
    with services.db.session() as session:
        task = session.get(Task, ended)
        following = fairshare.next_of(session, task.owner) if task is not None else None
    if following is not None:
        send(following)


def _release_quietly(services: Services, task_id: str, owner: str) -> None:
    """Give up a picked task's lease after its job failed to start.

    If the database is away, the lease expires by itself and the task is free again: the
    fair-share pick and the reaper treat an expired lease on a pending task as none.
    """
    try:
        with services.db.session() as session:
            leases.release(session, task_id, owner)
    except Exception as exc:  # noqa: BLE001 - best effort; the original error is re-raised
        log.warning("could not release a picked task's lease", task_id=task_id, error=str(exc))

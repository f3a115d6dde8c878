"""The dramatiq actors. They are thin: take a task id, call the runner, schedule a retry.

Actors are declared on an explicit broker by :func:`declare_actors` rather than at import time
with ``@dramatiq.actor``, so no module-level broker or settings are needed to import this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq

from imageport.pipeline import Services, run_import

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

    def run_import_job(task_id: str) -> None:
        outcome = run_import(services(), task_id)
        if outcome.retry_in is not None:
            holder["actor"].send_with_options(args=(task_id,), delay=int(outcome.retry_in * 1000))

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

"""The embedded worker: the same actors, run by a dramatiq worker thread in this process."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import dramatiq

from imageport.pipeline import Services
from imageport.workers.actors import Actors, declare_actors
from imageport.workers.broker import build_broker

WORKER_TIMEOUT_MS = 100  # how long an idle worker thread waits for a message, milliseconds


class EmbeddedWorker:
    """Runs import jobs in a background thread of the current process (``memory://``)."""

    def __init__(self, services: Services, *, threads: int = 1) -> None:
        self.broker = build_broker(services.settings)
        self.actors: Actors = declare_actors(self.broker, lambda: services)
        self._worker = dramatiq.Worker(
            self.broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT_MS
        )

    def __enter__(self) -> Self:
        self._worker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._worker.stop()

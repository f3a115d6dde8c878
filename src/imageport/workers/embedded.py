"""The embedded worker: the same actors, run by a dramatiq worker thread in this process.

It also runs the reaper in a thread, as every worker process does, so an embedded ``imageport
api`` requeues jobs whose lease expired and removes staged uploads that were never imported.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self

import dramatiq

from imageport.pipeline import Services
from imageport.workers.actors import Actors, declare_actors
from imageport.workers.broker import build_broker
from imageport.workers.reaper import reap_forever

WORKER_TIMEOUT_MS = 100  # how long an idle worker thread waits for a message, milliseconds


class EmbeddedWorker:
    """Runs import jobs in a background thread of the current process (``memory://``)."""

    def __init__(self, services: Services, *, threads: int = 1, reaper: bool = False) -> None:
        self.broker = build_broker(services.settings)
        self.actors: Actors = declare_actors(self.broker, lambda: services)
        self._worker = dramatiq.Worker(
            self.broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT_MS
        )
        self._stop = threading.Event()
        self._reaper = (
            threading.Thread(
                target=reap_forever,
                args=(services, self.actors.enqueue_import, self._stop),
                name="reaper",
                daemon=True,
            )
            if reaper
            else None
        )

    def __enter__(self) -> Self:
        self._worker.start()
        if self._reaper is not None:
            self._reaper.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._worker.stop()

"""The embedded worker: the same actors, run by a dramatiq worker thread in this process.

It also runs the reaper in a thread, as every worker process does, so an embedded ``imageport
api`` requeues jobs whose lease expired and removes staged uploads that were never imported.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self

import dramatiq
from dramatiq.broker import MessageProxy

from imageport.pipeline import Services
from imageport.workers.actors import Actors, declare_actors
from imageport.workers.broker import build_broker
from imageport.workers.reaper import reap_forever

WORKER_TIMEOUT_MS = 100  # how long an idle worker thread waits for a message, milliseconds
#: The same for a command that runs one job and exits: stopping the worker waits out this
#: poll twice (its job threads, then its consumers), ~0.2 s at 100 ms on every `imageport
#: import`; a busy job thread does not poll, so only the consumers wake this often meanwhile.
SHORT_LIVED_TIMEOUT_MS = 10


class EmbeddedWorker:
    """Runs import jobs in a background thread of the current process (``memory://``).

    ``timeout_ms`` is how long an idle thread waits for a message; stopping waits it out.
    """

    def __init__(
        self,
        services: Services,
        *,
        threads: int = 1,
        reaper: bool = False,
        timeout_ms: int = WORKER_TIMEOUT_MS,
    ) -> None:
        self.broker = build_broker(services.settings)
        self.actors: Actors = declare_actors(self.broker, lambda: services)
        #: Set whenever a job message was processed: a waiter wakes at once, not at its poll.
        self.processed = threading.Event()
        self.broker.add_middleware(_Processed(self.processed))
        self._worker = dramatiq.Worker(
            self.broker, worker_threads=threads, worker_timeout=timeout_ms
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


class _Processed(dramatiq.Middleware):
    """Sets an event after each message, whatever its outcome (dramatiq's hook signatures)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def after_process_message(
        self,
        broker: dramatiq.Broker,  # noqa: ARG002
        message: MessageProxy,  # noqa: ARG002
        *,
        result: object = None,  # noqa: ARG002
        exception: BaseException | None = None,  # noqa: ARG002
    ) -> None:
        self._event.set()

    def after_skip_message(
        self,
        broker: dramatiq.Broker,  # noqa: ARG002
        message: MessageProxy,  # noqa: ARG002
    ) -> None:
        self._event.set()

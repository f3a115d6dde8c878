"""The job heartbeat: renews the lease, notices cancel, shutdown and stalls, in every phase.

A background thread renews the task's lease every few seconds whatever the job is doing —
downloading, decompressing, converting, copying — and reads the cancel flag. The job's
progress callback calls :meth:`Heartbeat.beat`, which records progress and raises
:class:`~imageport.errors.JobInterrupted` as soon as the job must stop. The heartbeat stops
renewing when no progress was reported for ``stall_timeout_seconds``, so a hung job loses its
lease and another worker takes it over.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import structlog

from imageport.errors import JobInterrupted
from imageport.pipeline.context import Services
from imageport.records import leases

log = structlog.get_logger(__name__)

MAX_BEAT_INTERVAL = 2.0  # seconds; cancel is noticed at least this often


class Heartbeat:
    """Keeps one job's lease alive while the job makes progress."""

    def __init__(
        self, services: Services, task_id: str, owner: str, *, cancelled: bool | None = None
    ) -> None:
        """Watch ``task_id`` for ``owner``.

        Args:
            services: the database the lease lives in, and the shutdown time.
            task_id: the job's task.
            owner: the lease holder.
            cancelled: the cancel flag, when the caller read it in the transaction that just
                took the lease (the first beat then needs no transaction of its own).
        """
        self._services = services
        self._task_id = task_id
        self._owner = owner
        settings = services.settings
        self._ttl = settings.lease_ttl_seconds
        self._interval = min(MAX_BEAT_INTERVAL, self._ttl / 3)
        self._stall = settings.stall_timeout_seconds
        self._last_progress = time.monotonic()
        self._last_renewed = time.monotonic()
        self._done = threading.Event()
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{task_id}", daemon=True)
        self._primed = cancelled

    def __enter__(self) -> Self:
        if self._primed is None:
            self._tick()  # one synchronous beat: a job cancelled while queued stops at once
        elif self._primed:
            self.reason = JobInterrupted.CANCELLED
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def beat(self) -> None:
        """Record progress; raise JobInterrupted if the job must stop."""
        self._last_progress = time.monotonic()
        self.check()

    def check(self) -> None:
        """Raise JobInterrupted if a stop reason was seen."""
        if self.reason is not None:
            raise JobInterrupted(self.reason)

    def _loop(self) -> None:
        while not self._done.wait(self._interval):
            self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        shutdown_at = self._services.shutdown_at
        if shutdown_at is not None and now >= shutdown_at:
            self.reason = self.reason or JobInterrupted.SHUTDOWN
        if now - self._last_progress > self._stall:
            # Not renewing lets the lease lapse, so the reaper or another worker takes over.
            self.reason = self.reason or JobInterrupted.STALLED
            return
        try:
            with self._services.db.session() as session:
                ours = leases.renew(session, self._task_id, self._owner, self._ttl)
                cancelled = leases.cancel_requested(session, self._task_id)
        except Exception as exc:  # noqa: BLE001 - the database may be restarting; keep trying
            log.warning("heartbeat could not reach the database", error=str(exc))
            if now - self._last_renewed > self._ttl:
                self.reason = self.reason or JobInterrupted.LEASE_LOST
            return
        self._last_renewed = now
        if not ours:
            self.reason = JobInterrupted.LEASE_LOST
        elif cancelled:
            self.reason = self.reason or JobInterrupted.CANCELLED

"""A stage's progress: persisted at most once per interval, and the stop signal's way in."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from imageport.pipeline.context import Services
from imageport.pipeline.heartbeat import Heartbeat
from imageport.records import repository


class ProgressWriter:
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
        """Record progress; raise JobInterrupted when the job must stop.

        Every stage's loop passes through here, so a stop reaches the stage at once.
        """
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

"""What a job reports as it runs, to whoever counts it (the worker's Prometheus metrics).

The pipeline knows nothing of Prometheus: it calls a :class:`JobObserver` handed to it in
``Services``. Worker processes pass :class:`imageport.workers.metrics.PrometheusObserver`;
everything else (the CLI's embedded worker, the API's in-process imports, tests) gets the
:class:`NullObserver`, so no process registers metric series that nothing serves.
"""

from __future__ import annotations

from typing import Protocol


class JobObserver(Protocol):
    """Callbacks the runner and the reaper make; each must be cheap and never raise.

    The methods here do nothing, so a class that names this protocol as its base (as
    :class:`NullObserver` does) only writes the callbacks it cares about.
    """

    def job_started(self) -> None:
        """A job began running under its lease."""

    def job_ended(self) -> None:
        """A job stopped running (whatever its outcome)."""

    def import_finished(self, outcome: str, code: str) -> None:
        """An import ended: ``success`` (code ``""``) or ``failure`` with its error code."""

    def stage_finished(self, stage: str, seconds: float, bytes_done: int) -> None:
        """A stage ended well after ``seconds``, having moved ``bytes_done`` bytes."""

    def retry_scheduled(self) -> None:
        """A transient failure will be tried again."""

    def space_wait(self, stage: str) -> None:
        """A job was handed back before ``stage``: no room for what it would write."""

    def lease_taken_over(self) -> None:
        """A job was taken over from a worker whose lease expired."""

    def reaped(self, action: str, count: int) -> None:
        """The reaper requeued (``requeued``) or failed (``failed``) ``count`` jobs."""


class NullObserver(JobObserver):
    """Counts nothing: it inherits the protocol's methods, which do nothing."""

"""Prometheus metrics of the workers.

With ``imageport worker --metrics-port`` the worker processes write their samples to
``PROMETHEUS_MULTIPROC_DIR`` (set by the supervising process before it starts them) and the
supervisor serves the sum of all of them on one port, so one endpoint covers the process group.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IMPORTS = Counter(
    "imageport_imports_total", "Finished import jobs by outcome and error code", ["outcome", "code"]
)
STAGE_SECONDS = Histogram(
    "imageport_stage_duration_seconds",
    "Time spent in each stage",
    ["stage"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
BYTES = Counter("imageport_bytes_processed_total", "Bytes moved by each stage", ["stage"])
RETRIES = Counter("imageport_retries_total", "Transient failures scheduled for another attempt")
IN_FLIGHT = Gauge(
    "imageport_jobs_in_flight", "Import jobs running now", multiprocess_mode="livesum"
)
TAKEOVERS = Counter(
    "imageport_lease_takeovers_total", "Jobs taken over from a worker whose lease expired"
)
SPACE_WAITS = Counter(
    "imageport_space_waits_total",
    "Jobs handed back because the step would not fit in staging or scratch",
    ["stage"],
)
REAPED = Counter("imageport_reaped_total", "Jobs the reaper requeued or failed", ["action"])


class PrometheusObserver:
    """The pipeline's :class:`~imageport.pipeline.observer.JobObserver` for worker processes."""

    def job_started(self) -> None:
        """One more job in flight."""
        IN_FLIGHT.inc()

    def job_ended(self) -> None:
        """One job fewer in flight."""
        IN_FLIGHT.dec()

    def import_finished(self, outcome: str, code: str) -> None:
        """Count a finished import by outcome and error code."""
        IMPORTS.labels(outcome=outcome, code=code).inc()

    def stage_finished(self, stage: str, seconds: float, bytes_done: int) -> None:
        """Observe a stage's duration and count its bytes."""
        STAGE_SECONDS.labels(stage=stage).observe(seconds)
        if bytes_done:
            BYTES.labels(stage=stage).inc(bytes_done)

    def retry_scheduled(self) -> None:
        """Count a scheduled retry."""
        RETRIES.inc()

    def space_wait(self, stage: str) -> None:
        """Count a job handed back for lack of space."""
        SPACE_WAITS.labels(stage=stage).inc()

    def lease_taken_over(self) -> None:
        """Count a lease takeover."""
        TAKEOVERS.inc()

    def reaped(self, action: str, count: int) -> None:
        """Count jobs the reaper requeued or failed."""
        REAPED.labels(action=action).inc(count)

"""One worker process: dramatiq worker threads over imageport's actors, a reaper, SIGTERM.

Everything that holds connections (database engine, HTTP client, store clients, broker) is
created here, inside the process, after it was started: nothing is inherited across fork.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

import dramatiq
import structlog

from imageport.config import load_settings
from imageport.logging import configure_logging
from imageport.pipeline import Services
from imageport.workers.actors import IMPORT_QUEUE, declare_actors
from imageport.workers.broker import build_broker
from imageport.workers.parent import watch_parent
from imageport.workers.reaper import reap_forever

log = structlog.get_logger(__name__)
#: Longest idle sleep between two queue polls (dramatiq defaults to 1 s). 30 ms keeps pickup
#: well under 100 ms while an idle process costs ~2% of a core instead of ~7% at 10 ms.
WORKER_TIMEOUT_MS = 30
EXTRA_STOP_SECONDS = 5.0  # beyond the grace period, for jobs to record their checkpoint


def run_worker_process(
    threads: int, queues: Sequence[str], *, supervisor_pid: int | None = None
) -> int:
    """Run until SIGTERM/SIGINT, then stop taking jobs, checkpoint within the grace, exit 0.

    With ``supervisor_pid``, the death of that process counts as a SIGTERM
    (:mod:`imageport.workers.parent`): no worker outlives its group.
    """
    settings = load_settings()
    configure_logging(settings)
    services = Services.from_settings(settings)
    # Imported here, not at the top: importing the module registers the worker's series, and
    # the CLI and API import this module without serving any metrics.
    from imageport.workers.metrics import PrometheusObserver  # noqa: PLC0415

    services.observer = PrometheusObserver()  # this process's samples, served by the group
    broker = build_broker(settings)
    actors = declare_actors(broker, lambda: services)
    worker = dramatiq.Worker(
        broker,
        queues=set(queues or [IMPORT_QUEUE]),
        worker_threads=threads,
        worker_timeout=WORKER_TIMEOUT_MS,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("worker stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if supervisor_pid is not None:
        watch_parent(supervisor_pid)  # after the handlers: its SIGTERM must checkpoint
    reaper = threading.Thread(
        target=reap_forever, args=(services, actors.enqueue_import, stop), daemon=True
    )
    worker.start()
    reaper.start()
    log.info("worker started", threads=threads, queues=sorted(queues or [IMPORT_QUEUE]))
    stop.wait()
    grace = settings.shutdown_grace_seconds
    # Jobs still running when the grace period ends checkpoint (their heartbeat sees this).
    services.shutdown_at = time.monotonic() + grace
    worker.stop(timeout=int((grace + EXTRA_STOP_SECONDS) * 1000))
    broker.close()
    services.close()
    log.info("worker stopped")
    return 0

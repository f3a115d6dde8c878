"""``imageport worker``: start N worker processes, forward signals, serve their metrics.

Processes are started with the ``spawn`` method, so each builds its own clients from scratch.
With a metrics port, the children write Prometheus samples into a private multiprocess
directory and this process serves their sum, plus the queue depth read from the broker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import structlog

from imageport.config import Settings
from imageport.workers.process import run_worker_process

log = structlog.get_logger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in every process


def _child(threads: int, queues: Sequence[str]) -> None:
    raise SystemExit(run_worker_process(threads, queues))


def supervise(
    settings: Settings,
    *,
    processes: int,
    threads: int,
    queues: Sequence[str],
    metrics_port: int | None,
) -> int:
    """Run the worker processes until they exit; 0 when all of them stopped cleanly."""
    with tempfile.TemporaryDirectory(prefix="imageport-metrics-") as metrics_dir:
        if metrics_port is not None:
            # Must be in the environment before the children import prometheus_client.
            os.environ[MULTIPROC_ENV] = metrics_dir
            _serve_metrics(settings, metrics_port, Path(metrics_dir))
        ctx = multiprocessing.get_context("spawn")
        children = [
            ctx.Process(target=_child, args=(threads, list(queues)), name=f"imageport-worker-{i}")
            for i in range(processes)
        ]
        for child in children:
            child.start()

        def forward(signum: int, _frame: FrameType | None) -> None:
            for child in children:
                if child.pid is not None and child.is_alive():
                    os.kill(child.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for child in children:
            child.join()
        codes = [child.exitcode for child in children]
        log.info("workers exited", exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1


def _serve_metrics(settings: Settings, port: int, metrics_dir: Path) -> None:
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415
    from prometheus_client.registry import Collector  # noqa: PLC0415

    from imageport.workers.queues import queue_depth  # noqa: PLC0415

    class QueueDepth(Collector):
        def collect(self) -> Iterator[object]:  # type: ignore[override]
            from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

            family = GaugeMetricFamily(
                "imageport_queue_depth", "Messages waiting in the import queue", labels=["queue"]
            )
            depth = queue_depth(settings)
            if depth is not None:
                family.add_metric(["imports"], depth)
            yield family

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    registry.register(QueueDepth())
    start_http_server(port, registry=registry)
    log.info("metrics served", port=port)

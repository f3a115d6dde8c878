"""``imageport worker``: start N worker processes, forward signals, serve their metrics.

Processes are started with the ``spawn`` method, so each builds its own clients from scratch.
With a metrics port, the children write Prometheus samples into a private multiprocess
directory and this process serves their sum, plus the queue depth read from the broker.
"""

from __future__ import annotations

import http.server
import json
import multiprocessing
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from imageport import cpus
from imageport.config import Settings
from imageport.health import readiness
from imageport.records import Database
from imageport.workers.process import run_worker_process
from imageport.workers.queues import ProjectQueue, project_queues, queue_depth

log = structlog.get_logger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in every process


def _child(
    threads: int, queues: Sequence[str], share: frozenset[int] | None, supervisor: int
) -> None:
    if share is not None:
        cpus.pin(share)  # before run_worker_process starts any thread: they inherit it
    raise SystemExit(run_worker_process(threads, queues, supervisor_pid=supervisor))


def supervise(
    settings: Settings,
    *,
    processes: int,
    threads: int,
    queues: Sequence[str],
    metrics_port: int | None,
    pin_cpus: bool = True,
) -> int:
    """Run the worker processes until they exit; 0 when all of them stopped cleanly.

    With ``pin_cpus``, each process keeps to its own share of this process's CPUs when there
    is a CPU for every job thread (see :mod:`imageport.cpus`).
    """
    children: list[BaseProcess] = []
    with tempfile.TemporaryDirectory(prefix="imageport-metrics-") as metrics_dir:
        if metrics_port is not None:
            # Must be in the environment before the children import prometheus_client.
            os.environ[MULTIPROC_ENV] = metrics_dir
            group = _Group(settings, children, processes)
            _serve_metrics(settings, metrics_port, Path(metrics_dir), group)
        # sched_setaffinity is Linux's; elsewhere the kernel places the processes.
        pinnable = pin_cpus and hasattr(os, "sched_setaffinity")
        placement = (
            cpus.shares(processes, os.sched_getaffinity(0), threads=threads) if pinnable else None
        )
        log.info(
            "starting workers",
            processes=processes,
            threads=threads,
            cpus=[sorted(share) for share in placement] if placement else "any",
        )
        ctx = multiprocessing.get_context("spawn")
        children += [
            ctx.Process(
                target=_child,
                args=(threads, list(queues), placement[i] if placement else None, os.getpid()),
                name=f"imageport-worker-{i}",
            )
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


def _serve_metrics(settings: Settings, port: int, metrics_dir: Path | None, group: _Group) -> None:
    """Serve /metrics (all worker processes), /healthz and /readyz on ``port``."""
    from prometheus_client import (  # noqa: PLC0415
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
    )
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    if metrics_dir is not None:
        MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    registry.register(group)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._send(200, b'{"status": "ok"}', "application/json")
            elif self.path == "/readyz":
                health = readiness(settings)
                body = json.dumps(health.as_dict()).encode()
                self._send(200 if health.ok else 503, body, "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass  # scrapes and probes every few seconds would flood the log

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - scraped by Prometheus and probed by the orchestrator
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics and health served", port=port)


class _Group:
    """A custom collector read at scrape time: processes, the broker's queue, projects.

    It reports this group's worker processes, the broker's queue depth and each project's
    queued and running imports. The queue and project numbers are the same in every group
    (they read the same broker and database): aggregate them with ``max``, not ``sum``. One
    grouped query over the pending and processing tasks per scrape.
    """

    def __init__(self, settings: Settings, children: list[BaseProcess], configured: int) -> None:
        self._settings = settings
        self._children = children
        self._configured = configured
        self._db: Database | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        workers = GaugeMetricFamily(
            "imageport_worker_processes",
            "Worker processes of this group: configured, and alive now",
            labels=["state"],
        )
        workers.add_metric(["configured"], self._configured)
        workers.add_metric(["alive"], sum(1 for c in self._children if c.is_alive()))
        yield workers

        family = GaugeMetricFamily(
            "imageport_queue_depth", "Messages waiting in the import queue", labels=["queue"]
        )
        depth = queue_depth(self._settings)
        if depth is not None:
            family.add_metric(["imports"], depth)
        yield family
        projects = GaugeMetricFamily(
            "imageport_project_imports",
            "Imports by project: queued (waiting for a worker, their project's cap or space) "
            "and running",
            labels=["project", "state"],
        )
        for entry in self._projects():
            for state in ("queued", "running", "waiting_for_capacity", "waiting_for_space"):
                projects.add_metric([entry.project, state], getattr(entry, state))
        yield projects

    def _projects(self) -> list[ProjectQueue]:
        try:
            if self._db is None:
                self._db = Database(self._settings.resolved_database_url)
            with self._db.session() as session:
                return project_queues(session)
        except SQLAlchemyError as exc:  # a scrape must answer while the database is away
            log.warning("project queues unavailable", error=str(exc))
            return []

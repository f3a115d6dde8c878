#!/usr/bin/env python3
"""Soak: thousands of tiny imports through a 4-process worker group, on each broker.

Per broker (Redis, RabbitMQ), against a fresh PostgreSQL database:

* backlog: ``--imports`` tiny imports (64 KiB raw, 4 projects) recorded and queued while no
  worker runs, then the group starts: jobs/s from the first stage started to the last one
  finished;
* paced: ``--paced`` more queued at ``--pace`` of the measured rate, one by one: p50/p99
  enqueue-to-start and enqueue-to-active under a steady load below capacity;
* checks: every import active exactly once (no task lost, none run twice: one ``stage`` run
  each, one stored file each); PostgreSQL connections, broker memory and the workers' RSS
  sampled every second (peak and last).

The default run (2,000 + 300 per broker) takes about 5 minutes on 2 cores; the issue's full
soak is ``--imports 10000`` (about 15 minutes). Redis from IMAGEPORT_TEST_REDIS_URL (else
127.0.0.1:6379 db 14, flushed), RabbitMQ from IMAGEPORT_TEST_RABBITMQ_URL (else
127.0.0.1:5672; imageport's queues are deleted first), PostgreSQL from
IMAGEPORT_TEST_DATABASE_URL (else 127.0.0.1:5432 ``test``; a fresh database is created and
dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg
import redis
from sqlalchemy import func, make_url, select
from workers import (
    ROOT,
    drop_database,
    fresh_database,
    start_workers,
    stop_workers,
    vacuum,
)

from imageport.config import Settings
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import StageRun, Task
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker

PROJECTS = ("project-a", "project-b", "project-c", "project-d")
TINY = 64 * 1024


def log(msg: str) -> None:
    print(f"soak-bench: {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Sampler(threading.Thread):
    """Samples PostgreSQL connections, broker memory and the group's RSS every second."""

    def __init__(self, pg_conninfo: str, db_name: str, broker_url: str, group_pid: int) -> None:
        super().__init__(daemon=True)
        self.pg = pg_conninfo
        self.db_name = db_name
        self.broker_url = broker_url
        self.group = psutil.Process(group_pid)
        self.samples: dict[str, list[float]] = {"pg": [], "broker": [], "workers": []}
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.pg, autocommit=True) as conn:
            while not self.stop.wait(1.0):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
                ).fetchone()
                self.samples["pg"].append(float(row[0]) if row else 0.0)
                memory = broker_memory(self.broker_url)
                if memory is not None:
                    self.samples["broker"].append(memory / 2**20)
                self.samples["workers"].append(group_rss(self.group) / 2**20)

    def summary(self) -> dict[str, dict[str, float]]:
        units = {"pg": "connections", "broker": "memory_mib", "workers": "rss_mib"}
        return {
            f"{key}_{units[key]}": {"peak": round(max(v), 1), "last": round(v[-1], 1)}
            for key, v in self.samples.items()
            if v
        }


def group_rss(group: psutil.Process) -> int:
    total = 0
    for proc in [group, *group.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def broker_memory(url: str) -> int | None:
    """Redis: used_memory; RabbitMQ: the RSS of the process listening on its port."""
    if url.startswith("redis"):
        return int(redis.Redis.from_url(url).info("memory")["used_memory"])
    port = make_url(url.replace("amqp://", "postgresql://", 1)).port or 5672
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return int(psutil.Process(conn.pid).memory_info().rss)
    return None


def clean_broker(url: str) -> None:
    if url.startswith("redis"):
        redis.Redis.from_url(url).flushdb()
        return
    import pika  # noqa: PLC0415

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for queue in ("imports", "imports.DQ", "imports.XQ"):
        channel.queue_delete(queue=queue)
    connection.close()


def record_all(services: Services, source: Path, count: int, *, offset: int = 0) -> list[str]:
    request = ImportRequest(method="local-file", source=str(source), disk_format="raw")
    return [
        submit_import(services, request, owner=PROJECTS[(offset + i) % len(PROJECTS)]).task_id
        for i in range(count)
    ]


def wait_all(services: Services, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with services.db.session() as session:
            counts = dict(
                session.execute(
                    select(Task.status, func.count()).where(Task.id.in_(ids)).group_by(Task.status)
                ).all()
            )
        if counts.get("success", 0) == len(ids) or counts.get("failure"):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"soak timed out: {counts}")
        time.sleep(0.5)


def timings(services: Services, ids: list[str], enqueued: dict[str, float]) -> dict[str, list]:
    """Enqueue-to-start and enqueue-to-active of each task, and the integrity checks."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    stage_runs: dict[str, int] = {}
    statuses: dict[str, str] = {}
    with services.db.session() as session:
        for chunk in range(0, len(ids), 1000):
            part = ids[chunk : chunk + 1000]
            rows = session.execute(
                select(
                    StageRun.task_id,
                    func.min(StageRun.started_at),
                    func.max(StageRun.finished_at),
                    func.count().filter(StageRun.stage == "stage"),
                )
                .where(StageRun.task_id.in_(part))
                .group_by(StageRun.task_id)
            )
            for task_id, first, last, staged in rows:
                starts[task_id] = first.timestamp()
                ends[task_id] = last.timestamp()
                stage_runs[task_id] = int(staged)
            statuses.update(
                session.execute(select(Task.id, Task.status).where(Task.id.in_(part))).all()
            )
    return {
        "starts": list(starts.values()),
        "ends": list(ends.values()),
        "to_start": [starts[t] - enqueued[t] for t in ids if t in starts],
        "to_active": [ends[t] - enqueued[t] for t in ids if t in ends],
        "lost": [t for t in ids if statuses.get(t) != "success"],
        "duplicated": [t for t in ids if stage_runs.get(t, 0) != 1],
    }


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 1),
        "p99": round(percentile(values, 99) * 1000, 1),
        "max": round(max(values) * 1000, 1),
    }


def run_paced(
    services: Services, actors, source: Path, count: int, rate: float, enqueued: dict
) -> list[str]:
    """Record and queue ``count`` imports at ``rate`` per second; their task ids.

    One at a time, as the API does: a recorded task is queued at once (a turn may run any
    recorded task, see workers/fairshare.py), and the clock starts before it is recorded.
    """
    gap = 1 / rate
    paced: list[str] = []
    for i in range(count):
        began = time.monotonic()
        enqueued_at = time.time()
        [task_id] = record_all(services, source, 1, offset=i)
        enqueued[task_id] = enqueued_at
        actors.enqueue_import(task_id)
        paced.append(task_id)
        time.sleep(max(0.0, gap - (time.monotonic() - began)))
    return paced


def soak(broker_url: str, pg_server: str, args: argparse.Namespace, workdir: Path) -> dict:
    clean_broker(broker_url)
    db_url, db_name = fresh_database(pg_server)
    settings = Settings(data_dir=workdir / "data", database_url=db_url, broker_url=broker_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env.update(
        IMAGEPORT_DATA_DIR=str(settings.data_dir),
        IMAGEPORT_DATABASE_URL=db_url,
        IMAGEPORT_BROKER_URL=broker_url,
        IMAGEPORT_PROGRESS_INTERVAL_SECONDS="0.5",
        IMAGEPORT_FAIR_SHARE=str(not args.no_fair_share).lower(),
        IMAGEPORT_LOG_LEVEL=args.log_level,
        IMAGEPORT_LOG_JSON="true",
    )
    services = Services.from_settings(settings)
    services.db.upgrade()
    broker = build_broker(settings)
    actors = declare_actors(broker, lambda: services)
    source = workdir / "tiny.raw"
    source.write_bytes(os.urandom(TINY))
    conninfo = make_url(pg_server).set(drivername="postgresql")
    group = None
    try:
        kind = broker_url.split(":", maxsplit=1)[0]
        log(f"{kind}: recording and queueing {args.imports} imports, no worker running")
        # Queued before the group starts, as a backlog after an outage would be: recording
        # 10,000 imports takes longer than a lease, and with workers up meanwhile their
        # reapers would rightly see tasks without messages and send them.
        backlog = record_all(services, source, args.imports)
        enqueued: dict[str, float] = {}
        for task_id in backlog:
            enqueued[task_id] = time.time()
            actors.enqueue_import(task_id)
        vacuum(db_url)
        group = start_workers(env, args.processes, workdir / f"soak-{db_name}.log")
        sampler = Sampler(
            conninfo.render_as_string(hide_password=False), db_name, broker_url, group.pid
        )
        sampler.start()
        wait_all(services, set(backlog), args.timeout)
        drained = timings(services, backlog, enqueued)
        # The drain rate: first stage started to last stage finished, group start excluded.
        span = max(drained["ends"]) - min(drained["starts"])
        rate = len(backlog) / span
        log(f"backlog drained: {rate:.1f} jobs/s; paced run at {args.pace:.0%} of it")
        paced = run_paced(services, actors, source, args.paced, rate * args.pace, enqueued)
        wait_all(services, set(paced), args.timeout)
        sampler.stop.set()
        sampler.join()
        steady = timings(services, paced, enqueued)
        stored = sum(1 for p in (settings.data_dir / "images").rglob("*") if p.is_file())
    finally:
        if group is not None:
            stop_workers(group)
        if args.keep_logs:
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            for log_file in workdir.glob("soak-*.log"):
                shutil.copy(log_file, Path(args.keep_logs) / log_file.name)
        broker.close()
        services.close()
        drop_database(pg_server, db_name)
    return {
        "imports": len(backlog) + len(paced),
        "backlog": {
            "imports": len(backlog),
            "jobs_per_second": round(rate, 2),
            "drain_seconds": round(span, 1),
        },
        "paced": {
            "imports": len(paced),
            "rate_per_second": round(rate * args.pace, 2),
            "enqueue_to_start_ms": ms(steady["to_start"]) if paced else None,
            "enqueue_to_active_ms": ms(steady["to_active"]) if paced else None,
        },
        "lost": len(drained["lost"]) + len(steady["lost"]),
        "duplicated": len(drained["duplicated"]) + len(steady["duplicated"]),
        "stored_files": stored,
        "resources": sampler.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imports", type=int, default=2000, help="backlog imports per broker")
    p.add_argument("--paced", type=int, default=300, help="paced imports per broker")
    p.add_argument("--pace", type=float, default=0.7, help="paced rate / backlog rate")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--brokers", default="redis,rabbitmq")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--no-fair-share", action="store_true", help="workers in broker order")
    p.add_argument("--keep-logs", help="copy the worker group's log here")
    p.add_argument("--log-level", default="warning", help="the workers' log level")
    args = p.parse_args(argv)
    urls = {
        "redis": os.environ.get("IMAGEPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"),
        "rabbitmq": os.environ.get(
            "IMAGEPORT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"
        ),
    }
    pg_server = os.environ.get(
        "IMAGEPORT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    results: dict[str, object] = {
        "benchmark": "soak",
        "processes": args.processes,
        "fair_share": not args.no_fair_share,
        "tiny_import": "64 KiB raw, no conversion, local file; 4 projects in turn",
    }
    (ROOT / "build").mkdir(exist_ok=True)
    for name in args.brokers.split(","):
        with tempfile.TemporaryDirectory(prefix="imageport-soak-", dir=ROOT / "build") as tmp:
            results[name] = soak(urls[name], pg_server, args, Path(tmp))
    results["machine"] = {"cpus": os.cpu_count()}
    checks = [results[n] for n in args.brokers.split(",")]
    results["no_loss_no_duplicate"] = all(
        isinstance(r, dict) and r["lost"] == 0 and r["duplicated"] == 0 for r in checks
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

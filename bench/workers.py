#!/usr/bin/env python3
"""Worker benchmarks for the distributed mode, printing one JSON document on stdout.

* throughput: tiny imports (1 MiB raw, no conversion) per second with 1 and 2 worker
  processes (one job thread each, default placement: 2 processes get a CPU share each), records
  created beforehand as the API would; target: 2 processes >= 1.8x one. 2 processes started
  with ``--no-pin-cpus`` are measured too, to show what the placement is worth;
* pickup latency: enqueue to stage start on an idle worker, median; target < 100 ms;
* per-job overhead: queue + records time of a tiny import (task created to task done, minus the
  time spent inside stages), median; target < 50 ms.

Uses Redis and PostgreSQL from IMAGEPORT_TEST_REDIS_URL / IMAGEPORT_TEST_DATABASE_URL, else
127.0.0.1:6379 db 14 and 127.0.0.1:5432 database ``test`` (a fresh database is created and
dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis
from sqlalchemy import func, make_url, select

from imageport.config import Settings
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import Task, repository
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker

ROOT = Path(__file__).resolve().parent.parent
#: Pause between creating a batch's records and starting the clock, so PostgreSQL's own
#: after-work for those inserts (WAL writer, stats) is not billed to the workers.
SETTLE_SECONDS = 1.0


def log(msg: str) -> None:
    print(f"workers-bench: {msg}", file=sys.stderr, flush=True)


def fresh_database(server_url: str) -> tuple[str, str]:
    url = make_url(server_url)
    name = f"imageport_bench_{secrets.token_hex(4)}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    url = make_url(server_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def vacuum(database_url: str) -> None:
    """VACUUM ANALYZE the bench database, so every batch starts from the same state.

    Each tiny import updates its task and stage rows several times; left alone, autovacuum
    wakes up in the middle of a later batch and takes CPU from whichever batch runs then.
    """
    conninfo = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def start_workers(
    env: dict[str, str], processes: int, logfile: Path, *options: str
) -> subprocess.Popen[bytes]:
    out = logfile.open("ab")
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/imageport"), "worker", "--processes", str(processes), *options],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_done(
    services: Services, task_ids: list[str], timeout: float, *, every: float = 0.02
) -> float:
    """Poll (one cheap query every ``every`` s) until every task succeeded; returns the time."""
    deadline = time.monotonic() + timeout
    query = select(Task.status, func.count()).where(Task.id.in_(task_ids)).group_by(Task.status)
    while True:
        with services.db.session() as session:
            counts = {str(status): n for status, n in session.execute(query)}
        if counts.get("failure"):
            raise SystemExit("a benchmark job failed")
        if counts.get("success", 0) == len(task_ids):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {counts}")
        time.sleep(every)


def record(services: Services, source: Path) -> str:
    """Record one tiny import (image + pending task), as the API does; not yet queued."""
    request = ImportRequest(method="local-file", source=str(source), disk_format="raw")
    return submit_import(services, request).task_id


def submit(services: Services, actors, source: Path) -> str:
    task_id = record(services, source)
    actors.enqueue_import(task_id)
    return task_id


def warm_up(services: Services, actors, source: Path, processes: int) -> None:
    # Two jobs per process at once, so that every process (not only the first to fetch) has
    # paid its first-job costs (imports, connections, the qemu-img sandbox check).
    for _ in range(2):
        ids = [submit(services, actors, source) for _ in range(2 * processes)]
        wait_done(services, ids, 60)


def throughput(services, actors, env, source, processes, jobs, workdir, *options) -> float:
    """Jobs per second of ``processes`` warm worker processes draining ``jobs`` tiny imports.

    The records are created before the clock starts: in production the API creates them, on
    other cores than the workers', and this measures the workers. The clock covers queueing
    every job and the workers finishing them all; the bench polls every 100 ms so that its
    own polling takes next to nothing from the two cores the workers share.
    """
    proc = start_workers(env, processes, workdir / f"workers-{processes}.log", *options)
    try:
        warm_up(services, actors, source, processes)
        ids = [record(services, source) for _ in range(jobs)]
        vacuum(services.settings.resolved_database_url)
        # Earlier batches' stored images must not be written back to disk during this one.
        os.sync()
        time.sleep(SETTLE_SECONDS)
        started = time.monotonic()
        for task_id in ids:
            actors.enqueue_import(task_id)
        finished = wait_done(services, ids, 300, every=0.1)
        return jobs / (finished - started)
    finally:
        stop_workers(proc)


def latency_and_overhead(services, actors, env, source, samples, workdir):
    proc = start_workers(env, 1, workdir / "workers-latency.log")
    pickups, overheads = [], []
    try:
        warm_up(services, actors, source, 1)
        for _ in range(samples):
            time.sleep(0.3)  # the worker is idle, waiting on an empty queue
            task_id = submit(services, actors, source)
            wait_done(services, [task_id], 60)
            with services.db.session() as session:
                task = repository.get_task(session, task_id)
                runs = repository.stage_runs(session, task_id)
                first = min(r.started_at for r in runs if r.started_at)
                in_stages = sum(
                    (r.finished_at - r.started_at).total_seconds()
                    for r in runs
                    if r.started_at and r.finished_at
                )
                enqueued = task.created_at
                done = max(r.finished_at for r in runs if r.finished_at)
            pickups.append((first - enqueued).total_seconds())
            overheads.append((done - enqueued).total_seconds() - in_stages)
    finally:
        stop_workers(proc)
    return pickups, overheads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200, help="tiny imports per throughput run")
    p.add_argument("--runs", type=int, default=7, help="throughput runs per worker count")
    p.add_argument("--samples", type=int, default=15, help="latency samples")
    args = p.parse_args(argv)
    redis_url = os.environ.get("IMAGEPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
    pg_server = os.environ.get(
        "IMAGEPORT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    redis.Redis.from_url(redis_url).flushdb()
    db_url, db_name = fresh_database(pg_server)
    with tempfile.TemporaryDirectory(prefix="imageport-bench-", dir=ROOT / "build") as tmp:
        workdir = Path(tmp)
        source = workdir / "tiny.raw"
        source.write_bytes(os.urandom(1024 * 1024))
        settings = Settings(
            data_dir=workdir / "data",
            database_url=db_url,
            broker_url=redis_url,
            progress_interval_seconds=0.5,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
        env.update(
            IMAGEPORT_DATA_DIR=str(settings.data_dir),
            IMAGEPORT_DATABASE_URL=db_url,
            IMAGEPORT_BROKER_URL=redis_url,
            IMAGEPORT_PROGRESS_INTERVAL_SECONDS="0.5",
        )
        services = Services.from_settings(settings)
        services.db.upgrade()
        actors = declare_actors(build_broker(settings), lambda: services)
        try:
            ones, twos, unpinned = [], [], []
            # Interleaved, so that drift (a growing database, other load) hits all alike.
            for run in range(args.runs):
                log(f"throughput run {run + 1}/{args.runs}: 1 process, 2, 2 unpinned")
                ones.append(throughput(services, actors, env, source, 1, args.jobs, workdir))
                twos.append(throughput(services, actors, env, source, 2, args.jobs, workdir))
                unpinned.append(
                    throughput(
                        services, actors, env, source, 2, args.jobs, workdir, "--no-pin-cpus"
                    )
                )
            log("pickup latency and per-job overhead")
            pickups, overheads = latency_and_overhead(
                services, actors, env, source, args.samples, workdir
            )
        finally:
            services.close()
            drop_database(pg_server, db_name)
    one, two = statistics.median(ones), statistics.median(twos)
    result = {
        "benchmark": "workers",
        "tiny_import": "1 MiB raw, no conversion, local file",
        "jobs_per_second": {
            "1_process": round(one, 2),
            "2_processes": round(two, 2),
            "2_processes_unpinned": round(statistics.median(unpinned), 2),
        },
        "runs": {
            "1_process": [round(r, 2) for r in ones],
            "2_processes": [round(r, 2) for r in twos],
            "2_processes_unpinned": [round(r, 2) for r in unpinned],
        },
        # Each run pairs a 1-process and a 2-process batch back to back: the median of the
        # pairs' ratios is steadier than a ratio of medians on a shared, noisy machine.
        "scaling_2_over_1": round(
            statistics.median(t / o for o, t in zip(ones, twos, strict=True)), 3
        ),
        "scaling_target": 1.8,
        "scaling_2_over_1_unpinned": round(
            statistics.median(u / o for o, u in zip(ones, unpinned, strict=True)), 3
        ),
        "pickup_latency_ms": {
            "median": round(statistics.median(pickups) * 1000, 1),
            "max": round(max(pickups) * 1000, 1),
            "target_median": 100,
        },
        "per_job_overhead_ms": {
            "median": round(statistics.median(overheads) * 1000, 1),
            "target_median": 50,
        },
        "machine": {"cpus": os.cpu_count()},
    }
    result["meets_targets"] = (
        result["scaling_2_over_1"] >= 1.8
        and result["pickup_latency_ms"]["median"] < 100
        and result["per_job_overhead_ms"]["median"] < 50
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

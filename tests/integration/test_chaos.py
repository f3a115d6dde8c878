"""Issue 4's acceptance: kill -9 workers mid-stage, restart the broker, restart PostgreSQL.

The worker and broker tests run on both brokers (the PostgreSQL restart on Redis only: the
broker plays no part in it), each with its own PostgreSQL cluster and real `imageport worker`
process groups; every import must end active exactly once, with the right hashes, and leave
nothing behind. Redis runs as a private redis-server per test; RabbitMQ is the session's
(queues purged), except for the restart test, which starts a throwaway rabbitmq-server node
of its own (``brokers_support.RabbitServer``) so the machine's server is never restarted.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path

import psutil
import pytest
from services_support import PostgresServer, RedisServer
from sqlalchemy import select
from workers_support import Worker, cli, wait_for

from brokers_support import RabbitServer
from imageport.config import Settings
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import Database, StageRun, Task, image_to_dict, repository
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker
from images import MIB, file_digests, leftover_files, make_qcow2, stored_path


class SessionBroker:
    """The session's broker (not restartable): its URL only."""

    def __init__(self, url: str) -> None:
        self.url = url


@pytest.fixture(params=["redis", "rabbitmq"])
def servers(request):
    """(broker server, PostgreSQL server): a broker that can be restarted when the test asks."""
    if not Path("/usr/lib/postgresql").exists() or not RedisServer().binary:
        if os.environ.get("CI"):
            pytest.fail("redis-server and PostgreSQL are required in CI")
        pytest.skip("redis-server or PostgreSQL binaries missing")
    restart = "restart" in request.node.name and "postgres" not in request.node.name
    if request.param == "redis":
        broker = RedisServer()
        broker.start()
    elif restart:
        broker = RabbitServer()
        if broker.binary is None:
            if os.environ.get("CI"):
                pytest.fail("rabbitmq-server is required in CI")
            pytest.skip("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        broker.start()
    else:
        broker = SessionBroker(request.getfixturevalue("rabbitmq_url"))
    pg = PostgresServer()
    pg.start()
    yield broker, pg
    if not isinstance(broker, SessionBroker):
        broker.close()
    pg.close()


@pytest.fixture
def cluster(servers, tmp_path):
    broker_server, pg = servers
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env = {
        **base,
        "IMAGEPORT_DATA_DIR": str(tmp_path / "data"),
        "IMAGEPORT_DATABASE_URL": pg.url,
        "IMAGEPORT_BROKER_URL": broker_server.url,
        "IMAGEPORT_LEASE_TTL_SECONDS": "2",
        "IMAGEPORT_REAPER_INTERVAL_SECONDS": "0.5",
        "IMAGEPORT_PROGRESS_INTERVAL_SECONDS": "0.05",
        "IMAGEPORT_MAX_ATTEMPTS": "10",
        "IMAGEPORT_LOG_LEVEL": "info",
        "IMAGEPORT_LOG_JSON": "true",
    }
    cli(env, "db", "upgrade")
    settings = Settings(
        data_dir=tmp_path / "data", database_url=pg.url, broker_url=broker_server.url
    )
    services = Services.from_settings(settings)
    groups: list[Worker] = []

    def start_group() -> Worker:
        group = Worker(env, tmp_path / f"group-{len(groups)}.log", "--threads", "2")
        groups.append(group)
        return group

    broker = build_broker(settings)
    yield env, services, declare_actors(broker, lambda: services), start_group
    for group in groups:
        group.stop()
    broker.close()
    services.close()


def _sources(tmp_path, count):
    out = []
    for i in range(count):
        big = i % 5 == 0  # a few long jobs, so that every stage can be caught running
        src = make_qcow2(
            tmp_path / f"src{i}.qcow2",
            virtual=(768 if big else 16 + i) * MIB,
            data=(32 if big else 2) * MIB,
            seed=100 + i,
        )
        out.append((src, "raw" if big or i % 2 == 0 else None))
    return out


def _submit_all(services, actors, sources):
    ids = []
    for src, target in sources:
        request = ImportRequest(
            method="local-file", source=str(src), disk_format="qcow2", target_format=target
        )
        submitted = submit_import(services, request)
        actors.enqueue_import(submitted.task_id)
        ids.append(submitted)
    return ids


def _statuses(db, ids):
    with db.session() as session:
        return [repository.get_task(session, s.task_id).status for s in ids]


def _running_owners(db, ids, stage):
    """The lease owners of jobs now running ``stage`` (one cheap query).

    A worker killed earlier leaves its run ``running`` and its lease set until the lease
    expires: such owners are listed too; the caller keeps the live ones.
    """
    query = (
        select(Task.lease_owner)
        .join(StageRun, StageRun.task_id == Task.id)
        .where(
            Task.id.in_([s.task_id for s in ids]),
            Task.status == "processing",
            Task.lease_owner.is_not(None),
            StageRun.stage == stage,
            StageRun.status == "running",
        )
    )
    with db.session() as session:
        return list(session.scalars(query))


def _live_group_running(db, ids, stage, groups):
    """A live worker group with a job in ``stage`` now, if any."""
    for owner in _running_owners(db, ids, stage):
        group = _group_of(groups, owner)
        if group is not None:
            return group
    return None


def _group_of(groups, owner):
    pid = int(owner.split(":")[1])
    for group in groups:
        if group.proc.poll() is None:
            family = [group.proc.pid] + [
                c.pid for c in psutil.Process(group.proc.pid).children(recursive=True)
            ]
            if pid in family:
                return group
    return None


def _check_outcome(env, db, ids, logs, *, killed=()):
    data = Path(env["IMAGEPORT_DATA_DIR"])
    with db.session() as session:
        images = [image_to_dict(repository.get_image(session, s.image_id)) for s in ids]
        runs = {s.task_id: repository.stage_runs(session, s.task_id) for s in ids}
    for image in images:
        assert image["status"] == "active"
        path = stored_path(image["locations"][0]["url"])
        assert (image["checksum"], image["os_hash_value"]) == file_digests(path)
    for task_id, task_runs in runs.items():
        # No job ran twice at once: the runs of one task never overlap in time. (A stage may
        # finish twice in a row when a crash took its durable output with it, e.g. a copy
        # killed after it had moved the staged file into the store.)
        spans = sorted(
            (r.started_at, r.finished_at) for r in task_runs if r.finished_at is not None
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"runs of {task_id} overlap: {spans}"
    assert leftover_files(data / "staging") == []
    assert leftover_files(data / "scratch") == []
    stored = {p.name for p in leftover_files(data / "images")}
    assert stored == {i["id"] for i in images}, "orphan or partial objects in the store"
    # Exactly one successful delivery per job, across every worker that ever ran. The one
    # exception is a kill -9 landing between a job's last commit and its summary line (seen once
    # in CI: the record says success, the log ends at the copy stage): such a job was last
    # logged by a killed group, and each kill can cut short at most one job.
    successes: dict[str, int] = {}
    last_seen: dict[str, tuple[str, Path]] = {}  # task: (timestamp, log) of its last line
    for log in logs:
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            task_id, at = entry.get("task_id"), entry.get("timestamp", "")
            if task_id and (task_id not in last_seen or at > last_seen[task_id][0]):
                last_seen[task_id] = (at, log)  # ISO timestamps in UTC: they sort as strings
            if entry.get("event") == "job summary" and entry.get("outcome") == "success":
                successes[entry["task_id"]] = successes.get(entry["task_id"], 0) + 1
    assert set(successes) <= {s.task_id for s in ids}
    assert all(count == 1 for count in successes.values()), successes
    unlogged = {s.task_id for s in ids} - set(successes)
    assert len(unlogged) <= len(killed)
    assert all(task_id in last_seen and last_seen[task_id][1] in killed for task_id in unlogged)


def test_kill_9_workers_mid_stage(cluster, tmp_path):
    env, services, actors, start_group = cluster
    groups = [start_group(), start_group()]
    ids = _submit_all(services, actors, _sources(tmp_path, 21))
    kills, killed = [], []
    for stage in ("stage", "convert", "copy", "stage"):
        try:
            group = wait_for(
                lambda st=stage: _live_group_running(services.db, ids, st, groups),
                60 if len(kills) < 3 else 10,  # a fourth kill only if the jobs still allow it
                stage,
                0.01,
            )
        except AssertionError:
            if len(kills) >= 3:
                break
            raise
        group.kill9()
        kills.append(stage)
        killed.append(group.log)
        groups.append(start_group())
    assert len(kills) >= 3
    wait_for(lambda: set(_statuses(services.db, ids)) == {"success"}, 180, "every import", 0.2)
    _check_outcome(env, services.db, ids, [g.log for g in groups], killed=killed)


def test_broker_restart_mid_run(cluster, servers, tmp_path):
    env, services, actors, start_group = cluster
    broker_server, _ = servers
    groups = [start_group(), start_group()]
    ids = _submit_all(services, actors, _sources(tmp_path, 12))
    wait_for(lambda: "success" in _statuses(services.db, ids), 60, "a first import", 0.05)
    # Killed: Redis (no persistence here) loses every queued message, the reaper sends them
    # again; RabbitMQ keeps its durable queue and redelivers what was not acknowledged.
    broker_server.stop()
    time.sleep(1.5)
    broker_server.start()
    wait_for(lambda: set(_statuses(services.db, ids)) == {"success"}, 180, "every import", 0.2)
    _check_outcome(env, services.db, ids, [g.log for g in groups])


# The database restarting is the same event whatever the broker: Redis only, for time.
@pytest.mark.parametrize("servers", ["redis"], indirect=True)
def test_postgres_restart_mid_run(cluster, servers, tmp_path):
    env, services, actors, start_group = cluster
    _, pg = servers
    groups = [start_group(), start_group()]
    ids = _submit_all(services, actors, _sources(tmp_path, 12))
    wait_for(lambda: "success" in _statuses(services.db, ids), 60, "a first import", 0.05)
    pg.stop()
    time.sleep(random.uniform(1.0, 2.0))  # noqa: S311 - timing jitter, not cryptography
    pg.start()
    services.db.engine.dispose()  # the test's own pool held connections to the old server
    wait_for(lambda: set(_statuses(services.db, ids)) == {"success"}, 180, "every import", 0.2)
    _check_outcome(env, services.db, ids, [g.log for g in groups])
    assert isinstance(services.db, Database)

"""Distributed mode against real processes: Redis or RabbitMQ, PostgreSQL, worker groups.

Every test where the broker matters runs once per broker (the ``broker_url`` fixture): jobs
on worker processes, SIGTERM, lost messages, duplicate deliveries, metrics. Tests of what
happens above the broker run on Redis only, and so do the takeover after kill -9 and the
killed supervisor, whose RabbitMQ side test_chaos.py and the SIGTERM test cover.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from workers_support import SlowHandler, Worker, cli, cli_json, serve, submit, wait_for

from imageport.config import Settings
from imageport.records import Database, image_to_dict, leases, repository
from imageport.records.base import utcnow
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker
from images import MIB, file_digests, leftover_files, make_qcow2, stored_path

#: For tests of what happens above the broker (cancel, retry, watch, delete, the reaper's
#: bookkeeping): the broker plays no part, so RabbitMQ would only add time to the suite.
REDIS_ONLY = pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
#: For tests whose RabbitMQ side another test covers already: a takeover after kill -9 (the
#: chaos test kills worker groups mid-stage on RabbitMQ) and a job requeued at shutdown (the
#: SIGTERM test below runs on RabbitMQ). Saves half a minute of the suite.
COVERED_ON_RABBITMQ = REDIS_ONLY


@pytest.fixture
def dist_env(tmp_path, broker_url, postgres_empty_url):
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env = {
        **base,
        "IMAGEPORT_DATA_DIR": str(tmp_path / "data"),
        "IMAGEPORT_DATABASE_URL": postgres_empty_url,
        "IMAGEPORT_BROKER_URL": broker_url,
        "IMAGEPORT_LEASE_TTL_SECONDS": "3",
        "IMAGEPORT_REAPER_INTERVAL_SECONDS": "1",
        "IMAGEPORT_PROGRESS_INTERVAL_SECONDS": "0.1",
        "IMAGEPORT_SHUTDOWN_GRACE_SECONDS": "1",
        "IMAGEPORT_MAX_ATTEMPTS": "3",
        "IMAGEPORT_WEB_DOWNLOAD_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "IMAGEPORT_LOG_LEVEL": "info",
        "IMAGEPORT_LOG_JSON": "true",
    }
    cli(env, "db", "upgrade")
    return env


@pytest.fixture
def db(dist_env):
    database = Database(dist_env["IMAGEPORT_DATABASE_URL"])
    yield database
    database.dispose()


@pytest.fixture
def workers(dist_env, tmp_path):
    started: list[Worker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        worker = Worker(env or dist_env, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def slow_source(tmp_path, dist_env):
    src = make_qcow2(tmp_path / "slow.qcow2", virtual=64 * MIB, data=6 * MIB)
    SlowHandler.body = src.read_bytes()
    SlowHandler.rate = 1 * MIB  # a few seconds of download: time to kill, cancel, stop
    server, base = serve(SlowHandler)
    dist_env["IMAGEPORT_WEB_DOWNLOAD_PORTS"] = json.dumps([80, 443, server.server_port])
    yield src, f"{base}/slow.qcow2"
    server.shutdown()


def _task(db, task_id):
    with db.session() as session:
        task = repository.get_task(session, task_id)
        runs = [(r.stage, r.attempt, r.status) for r in repository.stage_runs(session, task_id)]
        return task.status, task.error_code, task.attempts, task.message, runs


def _image(env, image_id):
    database = Database(env["IMAGEPORT_DATABASE_URL"])
    try:
        with database.session() as session:
            return image_to_dict(repository.get_image(session, image_id))
    finally:
        database.dispose()


_submit = submit  # the helper lives in workers_support (shared with test_fleet)


def _stage_running(db, task_id, stage):
    with db.session() as session:
        run = repository.latest_stage_runs(session, task_id).get(stage)
        return run is not None and run.status == "running" and run.bytes_done > 0


def _assert_clean(env, images):
    data = env["IMAGEPORT_DATA_DIR"]
    assert leftover_files(Path(data) / "staging") == []
    assert leftover_files(Path(data) / "scratch") == []
    stored = {p.name for p in leftover_files(Path(data) / "images")}
    assert stored == {i["id"] for i in images if i["status"] == "active"}


def test_imports_run_on_worker_processes(dist_env, db, workers, tmp_path):
    worker = workers("--processes", "2")
    whole = set(os.sched_getaffinity(0))
    if len(whole) >= 2:
        # Each process keeps to its own half of the CPUs (imageport.cpus); together, all.
        wait_for(lambda: len(worker.process_cpus()) == 2, 30, "two worker processes")
        wait_for(lambda: whole not in worker.process_cpus(), 30, "processes pinned")
        first, second = worker.process_cpus()
        assert first
        assert second
        assert not first & second
        assert first | second == whole
    sources = [
        make_qcow2(tmp_path / f"d{i}.qcow2", virtual=(8 + 4 * i) * MIB, data=MIB, seed=i)
        for i in range(6)
    ]
    # The first through the real CLI: --no-wait --json returns the ids at once.
    submitted = [cli_json(dist_env, "import", str(sources[0]), "--no-wait")]
    submitted += [
        _submit(dist_env, src, *(["--target-format", "raw"] if i % 2 else []))
        for i, src in enumerate(sources[1:], start=1)
    ]
    assert all(set(s) == {"image_id", "task_id"} for s in submitted)
    for s in submitted:
        wait_for(lambda s=s: _task(db, s["task_id"])[0] == "success", 60, "import success")
    images = [_image(dist_env, s["image_id"]) for s in submitted]
    for image in images:
        assert image["status"] == "active"
        path = stored_path(image["locations"][0]["url"])
        assert (image["checksum"], image["os_hash_value"]) == file_digests(path)
    _assert_clean(dist_env, images)


@COVERED_ON_RABBITMQ
def test_killed_worker_job_is_taken_over_after_the_lease_expires(
    dist_env, db, workers, slow_source
):
    _, url = slow_source
    first = workers()
    ids = _submit(dist_env, url, "--disk-format", "qcow2", "--target-format", "raw")
    wait_for(lambda: _stage_running(db, ids["task_id"], "stage"), 30, "staging to start")
    first.kill9()
    assert _task(db, ids["task_id"])[0] == "processing"  # stuck, until someone takes over

    workers()
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 90, "takeover to finish")
    _, _, attempts, _, runs = _task(db, ids["task_id"])
    assert attempts == 2
    assert ("stage", 1, "running") in runs  # the dead worker's attempt, never finished
    assert ("stage", 2, "done") in runs
    image = _image(dist_env, ids["image_id"])
    md5, sha512 = file_digests(stored_path(image["locations"][0]["url"]))
    assert (image["checksum"], image["os_hash_value"]) == (md5, sha512)
    _assert_clean(dist_env, [image])


@COVERED_ON_RABBITMQ
def test_workers_stop_when_their_supervisor_is_killed(dist_env, db, workers, slow_source):
    """A SIGKILLed supervisor leaves no orphans: each worker checkpoints and exits."""
    _, url = slow_source
    SlowHandler.rate = MIB // 2  # still downloading when the worker stops
    group = workers("--processes", "2")
    pids = wait_for(lambda: len(group.worker_pids()) == 2 and group.worker_pids(), 30, "workers")
    ids = _submit(dist_env, url, "--disk-format", "qcow2")
    wait_for(lambda: _stage_running(db, ids["task_id"], "stage"), 30, "staging to start")

    group.kill9_supervisor()

    # Each worker sees its parent die at once (PR_SET_PDEATHSIG), stops as on SIGTERM within
    # the grace period (1 s here) and exits; the job is requeued with its lease released.
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 20, "the workers to exit")
    status, _, _, message, runs = _task(db, ids["task_id"])
    assert status == "pending"
    assert "shut down" in message
    assert runs[-1][2] == "failed"
    with db.session() as session:
        assert repository.get_task(session, ids["task_id"]).lease_owner is None

    SlowHandler.rate = 8 * MIB
    workers()
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the requeued job")


@REDIS_ONLY
def test_cancel_stops_a_running_import_and_removes_its_data(dist_env, db, workers, slow_source):
    _, url = slow_source
    workers()
    ids = _submit(dist_env, url, "--disk-format", "qcow2")
    wait_for(lambda: _stage_running(db, ids["task_id"], "stage"), 30, "staging to start")

    proc = cli(dist_env, "cancel", ids["task_id"])

    assert "failure" in proc.stdout
    status, code, _, message, _ = _task(db, ids["task_id"])
    assert (status, code) == ("failure", "cancelled")
    assert "cancelled" in message
    image = _image(dist_env, ids["image_id"])
    assert image["status"] == "queued"
    _assert_clean(dist_env, [image])


@REDIS_ONLY
def test_cancel_of_a_queued_import_needs_no_worker(dist_env, db, tmp_path):
    ids = _submit(dist_env, make_qcow2(tmp_path / "q.qcow2"))
    cli(dist_env, "cancel", ids["task_id"])
    assert _task(db, ids["task_id"])[:2] == ("failure", "cancelled")
    assert _image(dist_env, ids["image_id"])["status"] == "queued"


def test_sigterm_checkpoints_exits_zero_and_another_worker_finishes(
    dist_env, db, workers, slow_source
):
    _, url = slow_source
    SlowHandler.rate = MIB // 2  # slower than the grace period
    first = workers()
    ids = _submit(dist_env, url, "--disk-format", "qcow2")
    wait_for(lambda: _stage_running(db, ids["task_id"], "stage"), 30, "staging to start")

    assert first.terminate(timeout=30) == 0
    status, _, _, message, runs = _task(db, ids["task_id"])
    assert status == "pending"
    assert "shut down" in message
    assert runs[-1][2] == "failed"
    with db.session() as session:
        assert repository.get_task(session, ids["task_id"]).lease_owner is None

    SlowHandler.rate = 8 * MIB
    workers()
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the requeued job")


@REDIS_ONLY
def test_reaper_requeues_an_expired_lease_then_fails_when_attempts_are_used(
    dist_env, db, workers, tmp_path
):
    ids = _submit(dist_env, make_qcow2(tmp_path / "r.qcow2"))
    # A worker that took the job and died: processing, lease expired long ago.
    with db.session() as session:
        assert leases.acquire(session, ids["task_id"], "ghost", 0.001).ok
        repository.set_task_status(session, ids["task_id"], expected="pending", new="processing")
    report = cli_json(dist_env, "reap")
    assert report["requeued"] == [ids["task_id"]]
    status, code, *_ = _task(db, ids["task_id"])
    assert (status, code) == ("pending", "lease_expired")

    worker = workers()
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the requeued job")
    assert worker.terminate() == 0

    again = _submit(dist_env, make_qcow2(tmp_path / "r2.qcow2", seed=9))
    with db.session() as session:
        assert leases.acquire(session, again["task_id"], "ghost", 0.001).ok
        task = repository.get_task(session, again["task_id"])
        task.attempts = 3
        repository.set_task_status(session, again["task_id"], expected="pending", new="processing")
    report = cli_json(dist_env, "reap")
    assert report["failed"] == [again["task_id"]]  # attempts used up: failed, cleaned up
    assert _task(db, again["task_id"])[:2] == ("failure", "lease_expired")
    assert _image(dist_env, again["image_id"])["status"] == "queued"


def test_lost_queue_messages_are_resent(dist_env, db, workers, tmp_path, broker_url):
    ids = _submit(dist_env, make_qcow2(tmp_path / "lost.qcow2"))
    # A broker restarted without persistence (or a message lost on the way).
    if broker_url.startswith("redis"):
        import redis  # noqa: PLC0415

        redis.Redis.from_url(broker_url).flushdb()
    else:
        from brokers_support import purge_queues  # noqa: PLC0415

        purge_queues(broker_url)
    with db.session() as session:
        task = repository.get_task(session, ids["task_id"])
        task.updated_at = utcnow().replace(year=2000)
    workers()
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the resent job")


@REDIS_ONLY
def test_retry_from_stage_reruns_a_failed_import(dist_env, db, workers, tmp_path):
    src = tmp_path / "t.raw"
    src.write_bytes(os.urandom(MIB))
    # A qemu-img whose convert fails (info works): the import fails in stage convert. Raw to
    # qcow2, so that the stage must call `qemu-img convert` (a qcow2 to raw may be written
    # from `qemu-img map` instead, see pipeline/data/mapped.py).
    broken = tmp_path / "qemu-img"
    broken.write_text(
        '#!/bin/sh\nif [ "$1" = convert ]; then echo "simulated failure" >&2; exit 1; fi\n'
        'exec qemu-img "$@"\n'
    )
    broken.chmod(0o755)
    first = workers(env={**dist_env, "IMAGEPORT_QEMU_IMG_PATH": str(broken)})
    ids = _submit(dist_env, src, "--disk-format", "raw", "--target-format", "qcow2")
    wait_for(lambda: _task(db, ids["task_id"])[0] == "failure", 60, "the failure")
    assert _task(db, ids["task_id"])[1] == "conversion_failed"
    first.terminate()

    workers()
    cli(dist_env, "retry", ids["task_id"], "--from-stage", "convert")
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the retried import")
    runs = _task(db, ids["task_id"])[4]
    assert ("convert", 2, "done") in runs
    assert _image(dist_env, ids["image_id"])["status"] == "active"
    bad = cli(dist_env, "retry", ids["task_id"], check=False)
    assert bad.returncode == 2
    assert "only failed tasks" in bad.stderr


@REDIS_ONLY
def test_watch_exits_with_the_outcome(dist_env, db, workers, tmp_path):
    workers()
    ids = _submit(dist_env, make_qcow2(tmp_path / "w.qcow2"))
    assert cli(dist_env, "watch", ids["task_id"], check=False).returncode == 0
    failing = _submit(dist_env, make_qcow2(tmp_path / "w2.qcow2"), "--checksum", "0" * 32)
    assert cli(dist_env, "watch", failing["task_id"], check=False).returncode == 1


def test_worker_refuses_the_embedded_broker(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env["IMAGEPORT_DATA_DIR"] = str(tmp_path)
    proc = cli(env, "worker", check=False)
    assert proc.returncode == 2
    assert "IMAGEPORT_BROKER_URL" in proc.stderr


def test_no_job_runs_twice_at_once(db, dist_env, workers, tmp_path):
    """Redelivering a message while its lease is live is a no-op."""
    workers("--processes", "2", "--threads", "2")
    ids = _submit(dist_env, make_qcow2(tmp_path / "x.qcow2", virtual=32 * MIB, data=4 * MIB))
    settings = Settings(broker_url=dist_env["IMAGEPORT_BROKER_URL"])
    actors = declare_actors(build_broker(settings), lambda: None)  # type: ignore[arg-type]
    for _ in range(5):
        actors.enqueue_import(ids["task_id"])
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the import")
    runs = _task(db, ids["task_id"])[4]
    assert [r for r in runs if r[0] == "stage"] == [("stage", 1, "done")]


@REDIS_ONLY
def test_deleting_an_image_cancels_its_running_import(dist_env, db, workers, slow_source):
    _, url = slow_source
    workers()
    ids = _submit(dist_env, url, "--disk-format", "qcow2")
    wait_for(lambda: _stage_running(db, ids["task_id"], "stage"), 30, "staging to start")

    started = time.monotonic()
    deleted = cli(dist_env, "images", "delete", ids["image_id"])

    # Deleted at once, without waiting for the worker (a CLI start takes a few seconds here).
    assert time.monotonic() - started < 15
    assert f"import {ids['task_id']} is stopping" in deleted.stdout
    image = _image(dist_env, ids["image_id"])
    assert image["status"] == "deleted"
    # The worker sees the cancel within seconds and removes what it wrote.
    wait_for(lambda: _task(db, ids["task_id"])[0] == "failure", 30, "the worker to stop")
    assert _task(db, ids["task_id"])[:2] == ("failure", "cancelled")
    assert _image(dist_env, ids["image_id"])["status"] == "deleted"
    _assert_clean(dist_env, [image])


@REDIS_ONLY
def test_deleting_an_active_image_removes_its_data(dist_env, db, workers, tmp_path):
    workers()
    ids = _submit(dist_env, make_qcow2(tmp_path / "del.qcow2"))
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the import")
    stored = stored_path(_image(dist_env, ids["image_id"])["locations"][0]["url"])
    assert stored.exists()
    cli(dist_env, "images", "delete", ids["image_id"])
    assert not stored.exists()
    assert _image(dist_env, ids["image_id"])["status"] == "deleted"


def test_metrics_and_health_endpoints(dist_env, db, workers, tmp_path):
    import socket  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers("--processes", "2", "--metrics-port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get(f"{base}/healthz") == 200, 30, "the health endpoint")
    assert _get(f"{base}/readyz") == 200
    ids = _submit(dist_env, make_qcow2(tmp_path / "m.qcow2"))
    wait_for(lambda: _task(db, ids["task_id"])[0] == "success", 60, "the import")

    success = 'imageport_imports_total{code="",outcome="success"} 1.0'

    def counted():
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            text = response.read().decode()
        return text if success in text else None

    # The job counts itself just after its last record is committed: wait for the counter.
    text = wait_for(counted, 10, "the success counter")
    assert "imageport_stage_duration_seconds_bucket" in text
    assert 'imageport_queue_depth{queue="imports"} 0.0' in text
    assert 'imageport_bytes_processed_total{stage="stage"}' in text


def _get(url):
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError):
        return None

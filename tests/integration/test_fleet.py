"""The fleet at scale (issue 16): fair share across projects, caps, the queue command.

Real `imageport worker` groups on each broker and PostgreSQL, as in test_workers.py.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from services_support import free_port
from sqlalchemy import select
from workers_support import Worker, cli, cli_json, wait_for

from imageport.config import Settings
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import Database, Task
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker
from images import MIB, make_qcow2

TINY = 64 * 1024


@pytest.fixture
def fleet_env(tmp_path, broker_url, postgres_empty_url):
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env = {
        **base,
        "IMAGEPORT_DATA_DIR": str(tmp_path / "data"),
        "IMAGEPORT_DATABASE_URL": postgres_empty_url,
        "IMAGEPORT_BROKER_URL": broker_url,
        "IMAGEPORT_LEASE_TTL_SECONDS": "5",
        "IMAGEPORT_REAPER_INTERVAL_SECONDS": "1",
        "IMAGEPORT_SHUTDOWN_GRACE_SECONDS": "1",
        "IMAGEPORT_LOG_LEVEL": "info",
        "IMAGEPORT_LOG_JSON": "true",
    }
    cli(env, "db", "upgrade")
    return env


@pytest.fixture
def fleet(fleet_env, tmp_path):
    """(services, actors, start a worker group): submit in-process, run in worker groups."""
    settings = Settings(
        data_dir=Path(fleet_env["IMAGEPORT_DATA_DIR"]),
        database_url=fleet_env["IMAGEPORT_DATABASE_URL"],
        broker_url=fleet_env["IMAGEPORT_BROKER_URL"],
    )
    services = Services.from_settings(settings)
    broker = build_broker(settings)
    groups: list[Worker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        group = Worker(env or fleet_env, tmp_path / f"group-{len(groups)}.log", *args)
        groups.append(group)
        return group

    yield services, declare_actors(broker, lambda: services), start
    for group in groups:
        group.stop()
    broker.close()
    services.close()


def _tiny(tmp_path: Path) -> Path:
    source = tmp_path / "tiny.raw"
    source.write_bytes(os.urandom(TINY))
    return source


def _record(services, source: Path, project: str, count: int) -> list[str]:
    """Record ``count`` imports of ``project`` (not queued yet); their task ids."""
    request = ImportRequest(method="local-file", source=str(source), disk_format="raw")
    return [submit_import(services, request, owner=project).task_id for _ in range(count)]


def _started(group: Worker, processes: int) -> None:
    wait_for(
        lambda: group.log.read_text().count('"worker started"') >= processes, 60, "the workers"
    )


def _finished(db: Database, ids: list[str]) -> list[Task]:
    with db.session() as session:
        rows = session.scalars(select(Task).where(Task.id.in_(ids), Task.status == "success"))
        return sorted(rows, key=lambda t: t.updated_at)


def test_a_busy_project_does_not_starve_the_others(fleet, fleet_env, tmp_path):
    services, actors, start = fleet
    _started(start("--processes", "2"), 2)
    source = _tiny(tmp_path)
    busy = _record(services, source, "project-a", 200)
    small = _record(services, source, "project-b", 5)
    # Project A queues 200 imports, then project B queues 5: B's are last in the queue.
    for task_id in busy + small:
        actors.enqueue_import(task_id)

    wait_for(lambda: len(_finished(services.db, small)) == 5, 120, "project B's imports")

    b_done = _finished(services.db, small)[-1].updated_at
    a_before = [t for t in _finished(services.db, busy) if t.updated_at <= b_done]
    assert len(a_before) < 20, f"B's 5 finished only after A's {len(a_before)}"
    queue = cli_json(fleet_env, "queue")
    projects = {p["project"]: p for p in queue["projects"]}
    assert "project-b" not in projects  # nothing queued or running: not listed
    assert projects["project-a"]["queued"] + projects["project-a"]["running"] > 0
    assert queue["queued"] == projects["project-a"]["queued"]


def test_imports_in_flight_per_project_are_capped(fleet, fleet_env, tmp_path):
    services, actors, start = fleet
    capped = {**fleet_env, "IMAGEPORT_MAX_INFLIGHT_PER_PROJECT": "1"}
    port = free_port()
    _started(start("--processes", "2", "--metrics-port", str(port), env=capped), 2)
    source = _tiny(tmp_path)
    ids = _record(services, source, "project-a", 12)
    for task_id in ids:
        actors.enqueue_import(task_id)
    # /metrics shows the project's queue (read from the database at scrape time).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'imageport_project_imports{project="project-a",state="queued"}' in text
    wait_for(lambda: len(_finished(services.db, ids)) == 12, 120, "every import")
    spans = _spans(services.db, ids)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end, "two imports of a capped project overlapped"


def _spans(db: Database, ids: list[str]):
    with db.session() as session:
        tasks = session.scalars(select(Task).where(Task.id.in_(ids))).all()
        spans = [
            (min(r.started_at for r in t.stage_runs), max(r.finished_at for r in t.stage_runs))
            for t in tasks
        ]
    return sorted(spans)


@pytest.fixture
def small_scratch(tmp_path):
    """A 64 MiB tmpfs (root only; skips otherwise): a scratch file system that is too small."""
    mount = tmp_path / "small-scratch"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)  # the broker plays no part
def test_a_job_that_does_not_fit_is_handed_back_then_fails_no_space(
    fleet, fleet_env, tmp_path, small_scratch
):
    services, actors, start = fleet
    tight = {
        **fleet_env,
        "IMAGEPORT_SCRATCH_DIR": str(small_scratch),
        "IMAGEPORT_SPACE_RETRY_SECONDS": "0.5",
        "IMAGEPORT_SPACE_WAIT_SECONDS": "600",
        "IMAGEPORT_SPACE_MARGIN_BYTES": "0",
    }
    small = start(env=tight)
    _started(small, 1)
    # 128 MiB virtual, 1 MiB of data, compressed: qemu-img converts it (a map cannot say where
    # compressed bytes lie), and its raw output may take up to 128 MiB of scratch.
    plain = make_qcow2(tmp_path / "plain.qcow2", virtual=128 * MIB, data=MIB)
    source = tmp_path / "big.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", str(plain), str(source)],
        check=True,
    )
    request = ImportRequest(
        method="local-file", source=str(source), disk_format="qcow2", target_format="raw"
    )
    task_id = submit_import(services, request, owner="project-a").task_id
    actors.enqueue_import(task_id)

    def handed_back():
        with services.db.session() as session:
            return session.get(Task, task_id).error_code == "waiting_for_space"

    wait_for(handed_back, 60, "the job to be handed back", 0.1)
    shown = cli_json(fleet_env, "tasks", "show", task_id)  # what an admin sees
    assert shown["status"] in ("pending", "processing")  # handed back, maybe retried already
    assert "convert needs" in shown["message"]
    assert shown["attempts"] <= 1  # hand-backs use no attempt
    queue = cli_json(fleet_env, "queue")
    assert queue["projects"][0]["project"] == "project-a"

    # A worker with room takes it over from the queue.
    roomy = start()
    wait_for(lambda: _finished(services.db, [task_id]), 60, "a worker with room to finish it")
    small.stop()
    roomy.stop()

    # Nowhere to go: after space_wait_seconds the job fails no_space, naming the size.
    _started(start(env={**tight, "IMAGEPORT_SPACE_WAIT_SECONDS": "1"}), 1)
    again = submit_import(services, request).task_id
    actors.enqueue_import(again)

    def failed_now():
        with services.db.session() as session:
            return session.get(Task, again).status == "failure"

    wait_for(failed_now, 60, "the job to fail")
    failed = cli_json(fleet_env, "tasks", "show", again)
    assert failed["error_code"] == "no_space"
    assert "convert needs 134.4 MiB (134217728 bytes plus" in failed["message"]  # +5%

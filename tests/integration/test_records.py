"""Records on real SQLite and PostgreSQL: migrations, repository, CAS, serialization."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

from imageport.errors import (
    ConfigurationError,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    StateConflict,
)
from imageport.records import (
    Database,
    Image,
    ImageStatus,
    StageRun,
    StageStatus,
    Task,
    TaskStatus,
    image_to_dict,
    repository,
    task_to_dict,
)
from imageport.records.db import alembic_config

TABLES = {
    "images",
    "image_tags",
    "image_locations",
    "image_properties",
    "image_members",
    "tasks",
    "stage_runs",
    "alembic_version",
}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _image(session, **kwargs):
    defaults = {"name": "cirros", "disk_format": "qcow2", "container_format": "bare"}
    return repository.create_image(session, **{**defaults, **kwargs})


def _new_image(database, **kwargs):
    with database.session() as session:
        return _image(session, **kwargs).id


def _race(workers):
    """Run the callables at the same moment in threads; return what each returned or raised."""
    barrier = threading.Barrier(len(workers))
    outcomes = [None] * len(workers)

    def run(index, work):
        barrier.wait()
        try:
            outcomes[index] = work()
        except Exception as exc:  # noqa: BLE001 - the outcome is what is being tested
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


# Migrations


def test_upgrade_is_idempotent(database):
    database.upgrade()
    database.upgrade()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert database.current_revision() == head
    assert set(inspect(database.engine).get_table_names()) >= TABLES


def test_models_match_migrations(database):
    database.check()


def test_check_reports_a_schema_that_differs_from_the_models(database):
    with database.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN extra INTEGER")
    with pytest.raises(ConfigurationError, match="extra") as caught:
        database.check()
    assert caught.value.code == "schema_mismatch"


def test_check_refuses_an_unmigrated_database(empty_database):
    assert empty_database.current_revision() is None
    with pytest.raises(ConfigurationError) as caught:
        empty_database.check()
    assert caught.value.code == "schema_out_of_date"


def test_concurrent_upgrades_both_succeed(database_url):
    databases = [Database(database_url) for _ in range(3)]
    try:
        outcomes = _race([db.upgrade for db in databases])
        assert outcomes == [None, None, None]
        databases[0].check()
    finally:
        for db in databases:
            db.dispose()


def test_sqlite_pragmas_and_parent_directory(tmp_path):
    database = Database(f"sqlite:///{tmp_path}/a/b/c.db")
    try:
        with database.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert (tmp_path / "a" / "b").is_dir()
    finally:
        database.dispose()


def test_session_rolls_back_on_exception(database):
    image_id = None

    def create_then_fail():
        nonlocal image_id
        with database.session() as session:
            image_id = _image(session).id
            raise RuntimeError

    with pytest.raises(RuntimeError):
        create_then_fail()
    assert image_id is not None
    with database.session() as session, pytest.raises(NotFound):
        repository.get_image(session, image_id)


# Images


def test_create_get_and_list_images(database):
    with database.session() as session:
        image = _image(
            session,
            tags=["b", "a", "b"],
            properties={"hw_disk_bus": "scsi", "os_glance_import_task": "t-1"},
            owner="project-1",
            min_disk=2,
        )
        image_id = image.id
        repository.add_location(
            session, image_id, store_id="local", url="file:///i/1", metadata={"k": 1}
        )
    with database.session() as session:
        image = repository.get_image(session, image_id)
        assert image.status is ImageStatus.QUEUED
        assert image.visibility == "shared"
        assert (image.protected, image.os_hidden, image.min_disk, image.min_ram) == (
            False,
            False,
            2,
            0,
        )
        assert sorted(tag.value for tag in image.tags) == ["a", "b"]
        assert {p.name: p.value for p in image.properties} == {
            "hw_disk_bus": "scsi",
            "os_glance_import_task": "t-1",
        }
        assert [(loc.store_id, loc.url, loc.meta_data) for loc in image.locations] == [
            ("local", "file:///i/1", {"k": 1})
        ]
        assert image.created_at.tzinfo is UTC
        other = _image(session, name="second", image_id="0f3f6f6e-0000-4000-8000-000000000001")
        other.created_at = image.created_at + timedelta(seconds=1)
        repository.set_image_status(
            session, other.id, expected=ImageStatus.QUEUED, new=ImageStatus.IMPORTING
        )
    with database.session() as session:
        listed = repository.list_images(session)
        assert [i.id for i in listed] == ["0f3f6f6e-0000-4000-8000-000000000001", image_id]
        assert [i.id for i in repository.list_images(session, status="queued")] == [image_id]
        assert repository.list_images(session, status=ImageStatus.ACTIVE) == []
        with pytest.raises(InvalidRequest, match="status must be one of queued, saving"):
            repository.list_images(session, status="bogus")


def test_create_image_refuses_bad_visibility(database):
    with database.session() as session, pytest.raises(InvalidRequest):
        _image(session, visibility="everyone")


def test_image_usable_after_session_closed(database):
    image_id = _new_image(database, tags=["x"], properties={"p": "1"})
    with database.session() as session:
        image = repository.get_image(session, image_id)
    assert image_to_dict(image)["tags"] == ["x"]


def test_update_image(database):
    image_id = _new_image(database)
    with database.session() as session:
        before = repository.get_image(session, image_id).updated_at
        image = repository.update_image(session, image_id, name="renamed", min_ram=512)
        assert image.updated_at >= before
    with database.session() as session:
        image = repository.get_image(session, image_id)
        assert (image.name, image.min_ram) == ("renamed", 512)
        with pytest.raises(InvalidRequest, match="set_image_status"):
            repository.update_image(session, image_id, status="active")
        with pytest.raises(InvalidRequest, match="bogus"):
            repository.update_image(session, image_id, bogus=1)
        with pytest.raises(NotFound):
            repository.update_image(session, "missing", name="x")


def test_properties_set_replace_delete(database):
    image_id = _new_image(database, properties={"a": "1"})
    with database.session() as session:
        repository.set_property(session, image_id, "a", "2")
        repository.set_property(session, image_id, "os_glance_failed_import", "s3")
        repository.delete_property(session, image_id, "absent")
    with database.session() as session:
        image = repository.get_image(session, image_id)
        assert {p.name: p.value for p in image.properties} == {
            "a": "2",
            "os_glance_failed_import": "s3",
        }
        repository.delete_property(session, image_id, "a")
    with database.session() as session:
        assert [p.name for p in repository.get_image(session, image_id).properties] == [
            "os_glance_failed_import"
        ]


def test_locations_add_and_remove(database):
    image_id = _new_image(database)
    with database.session() as session:
        for store in ("local", "s3", "local"):
            repository.add_location(
                session, image_id, store_id=store, url=f"{store}://x", metadata={"store": store}
            )
        repository.remove_locations(session, image_id, store_id="local")
    with database.session() as session:
        assert [loc.store_id for loc in repository.get_image(session, image_id).locations] == ["s3"]
        repository.remove_locations(session, image_id)
    with database.session() as session:
        assert repository.get_image(session, image_id).locations == []


def test_image_to_dict(database):
    image_id = _new_image(
        database, tags=["z", "a"], properties={"os_glance_importing_to_stores": "local,s3"}
    )
    with database.session() as session:
        repository.add_location(
            session, image_id, store_id="local", url="file:///l", metadata={"store": "local"}
        )
        gone = repository.add_location(session, image_id, store_id="s3", url="s3://b", metadata={})
        gone.status = "pending_delete"
        repository.set_image_status(
            session,
            image_id,
            expected=ImageStatus.QUEUED,
            new=ImageStatus.ACTIVE,
            size=10,
            virtual_size=20,
            checksum="0" * 32,
            os_hash_algo="sha512",
            os_hash_value="f" * 128,
        )
    with database.session() as session:
        body = image_to_dict(repository.get_image(session, image_id))
    types = {
        "id": str,
        "name": str,
        "status": str,
        "visibility": str,
        "protected": bool,
        "os_hidden": bool,
        "owner": type(None),
        "checksum": str,
        "os_hash_algo": str,
        "os_hash_value": str,
        "size": int,
        "virtual_size": int,
        "disk_format": str,
        "container_format": str,
        "min_disk": int,
        "min_ram": int,
        "tags": list,
        "created_at": str,
        "updated_at": str,
        "self": str,
        "file": str,
        "schema": str,
        "locations": list,
    }
    for field, expected_type in types.items():
        assert type(body[field]) is expected_type, field
    assert body["status"] == "active"
    assert body["tags"] == ["a", "z"]
    assert ISO_Z.match(body["created_at"])
    assert ISO_Z.match(body["updated_at"])
    assert body["self"] == f"/v2/images/{image_id}"
    assert body["file"] == f"/v2/images/{image_id}/file"
    assert body["schema"] == "/v2/schemas/image"
    assert body["os_glance_importing_to_stores"] == "local,s3"
    assert body["locations"] == [{"url": "file:///l", "metadata": {"store": "local"}}]
    assert body["stores"] == "local"
    with database.session() as session:
        assert "locations" not in image_to_dict(
            repository.get_image(session, image_id), admin=False
        )


def test_timestamps_are_aware_utc(database):
    image_id = _new_image(database)
    when = datetime(2015, 8, 27, 9, 49, 58, 123456, tzinfo=UTC)
    with database.session() as session:
        repository.update_image(session, image_id, deleted_at=when)
    with database.session() as session:
        image = repository.get_image(session, image_id)
        assert image.deleted_at == when
        assert image.deleted_at.tzinfo is UTC
    naive = datetime(2015, 8, 27)  # noqa: DTZ001 - the point of the test
    with pytest.raises(StatementError, match="naive datetime"), database.session() as session:
        repository.update_image(session, image_id, deleted_at=naive)


# Compare-and-set


def _status_row(database, image_id):
    with database.session() as session:
        return session.execute(
            select(Image.status, Image.updated_at, Image.size).where(Image.id == image_id)
        ).one()


def test_set_image_status_writes_status_and_fields(database):
    image_id = _new_image(database)
    with database.session() as session:
        repository.set_image_status(
            session,
            image_id,
            expected=[ImageStatus.QUEUED, ImageStatus.UPLOADING],
            new=ImageStatus.IMPORTING,
            size=42,
        )
        # The session's own copy follows the UPDATE.
        assert repository.get_image(session, image_id).status is ImageStatus.IMPORTING
    status, _, size = _status_row(database, image_id)
    assert (status, size) == (ImageStatus.IMPORTING, 42)


def test_stale_expected_status_conflicts_and_writes_nothing(database):
    image_id = _new_image(database)
    before = _status_row(database, image_id)
    with database.session() as session:
        with pytest.raises(StateConflict, match=r"is queued, not uploading") as caught:
            repository.set_image_status(
                session,
                image_id,
                expected=ImageStatus.UPLOADING,
                new=ImageStatus.IMPORTING,
                size=1,
            )
        assert caught.value.code == "state_conflict"
    assert _status_row(database, image_id) == before


def test_keep_image_status_holds_the_expected_status_or_conflicts(database):
    image_id = _new_image(database)
    with database.session() as session:
        repository.keep_image_status(session, image_id, expected=ImageStatus.QUEUED)
        with pytest.raises(StateConflict, match=r"is queued, not saving"):
            repository.keep_image_status(session, image_id, expected=ImageStatus.SAVING)
        with pytest.raises(NotFound):
            repository.keep_image_status(session, "missing", expected=ImageStatus.QUEUED)
    assert _status_row(database, image_id)[0] == ImageStatus.QUEUED


def test_illegal_transition_raises_and_writes_nothing(database):
    image_id = _new_image(database)
    before = _status_row(database, image_id)
    with database.session() as session:
        with pytest.raises(IllegalTransition, match="image status cannot go from queued to killed"):
            repository.set_image_status(
                session, image_id, expected=ImageStatus.QUEUED, new=ImageStatus.KILLED, size=1
            )
        with pytest.raises(IllegalTransition):
            # One illegal edge among the expected statuses is enough to refuse.
            repository.set_image_status(
                session,
                image_id,
                expected=[ImageStatus.QUEUED, ImageStatus.ACTIVE],
                new=ImageStatus.IMPORTING,
            )
    assert _status_row(database, image_id) == before


def test_set_image_status_unknown_image_and_bad_fields(database):
    with database.session() as session:
        with pytest.raises(NotFound, match="image missing not found"):
            repository.set_image_status(
                session, "missing", expected=ImageStatus.QUEUED, new=ImageStatus.IMPORTING
            )
        with pytest.raises(InvalidRequest):
            repository.set_image_status(
                session, "missing", expected=ImageStatus.QUEUED, new=ImageStatus.ACTIVE, bogus=1
            )


def test_racing_compare_and_set_has_exactly_one_winner(database):
    for _ in range(3):
        image_id = _new_image(database)

        def move(image_id=image_id):
            with database.session() as session:
                repository.set_image_status(
                    session, image_id, expected=ImageStatus.QUEUED, new=ImageStatus.IMPORTING
                )
            return "won"

        outcomes = _race([move, move])
        assert outcomes.count("won") == 1, outcomes
        assert sum(isinstance(o, StateConflict) for o in outcomes) == 1, outcomes
        assert _status_row(database, image_id)[0] is ImageStatus.IMPORTING


# Tasks and stage runs


def _new_task(database):
    image_id = _new_image(database)
    with database.session() as session:
        task = repository.create_task(
            session,
            image_id=image_id,
            input={"import_req": {"method": {"name": "web-download", "uri": "http://x/y"}}},
            owner="project-1",
        )
        return image_id, task.id


def test_create_get_list_tasks(database):
    image_id, task_id = _new_task(database)
    with database.session() as session:
        task = repository.get_task(session, task_id)
        assert (task.type, task.status, task.attempts, task.message) == (
            "api_image_import",
            TaskStatus.PENDING,
            0,
            "",
        )
        assert task.input["import_req"]["method"]["name"] == "web-download"
        assert task.image_id == image_id
        assert [t.id for t in repository.get_image(session, image_id).tasks] == [task_id]
        second = repository.create_task(session, image_id=image_id, input={})
        second.created_at = task.created_at + timedelta(seconds=1)
    with database.session() as session:
        assert [t.id for t in repository.list_tasks(session)] == [second.id, task_id]
        assert [t.id for t in repository.list_tasks(session, image_id=image_id)] == [
            second.id,
            task_id,
        ]
        assert repository.list_tasks(session, status="processing") == []
        with pytest.raises(InvalidRequest):
            repository.list_tasks(session, status="done")
        assert repository.list_tasks(session, image_id="other") == []
        with pytest.raises(NotFound, match="task missing not found"):
            repository.get_task(session, "missing")
        with pytest.raises(NotFound, match="image missing not found"):
            repository.create_task(session, image_id="missing", input={})


def test_set_task_status_cas(database):
    _, task_id = _new_task(database)
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    with database.session() as session:
        repository.set_task_status(
            session, task_id, expected=TaskStatus.PENDING, new=TaskStatus.PROCESSING
        )
        repository.set_task_status(
            session,
            task_id,
            expected=TaskStatus.PROCESSING,
            new=TaskStatus.FAILURE,
            message="source unreachable",
            result={"stores": []},
            error_code="source_unavailable",
            expires_at=expires,
        )
    with database.session() as session:
        with pytest.raises(StateConflict, match=r"task .* is failure, not processing"):
            repository.set_task_status(
                session, task_id, expected=TaskStatus.PROCESSING, new=TaskStatus.SUCCESS
            )
        with pytest.raises(IllegalTransition, match="from failure to success"):
            repository.set_task_status(
                session, task_id, expected=TaskStatus.FAILURE, new=TaskStatus.SUCCESS
            )
        with pytest.raises(NotFound):
            repository.set_task_status(
                session, "missing", expected=TaskStatus.PENDING, new=TaskStatus.PROCESSING
            )
    with database.session() as session:
        task = session.scalars(select(Task).where(Task.id == task_id)).one()
        assert task.status is TaskStatus.FAILURE
        assert (task.message, task.result, task.error_code) == (
            "source unreachable",
            {"stores": []},
            "source_unavailable",
        )
        assert task.expires_at == expires
        # Admin retry: failure → pending is an edge.
        repository.set_task_status(
            session, task_id, expected=TaskStatus.FAILURE, new=TaskStatus.PENDING
        )


def _open(session, task_id, stage, attempt):
    """Open a stage run as the runner does; return its row."""
    return session.get(
        StageRun, repository.open_stage_run(session, task_id, stage, attempt=attempt)
    )


def test_stage_runs(database):
    _, task_id = _new_task(database)
    with database.session() as session:
        first = _open(session, task_id, "stage", 1)
        assert (first.attempt, first.status, first.bytes_done) == (1, StageStatus.RUNNING, 0)
        assert first.started_at is not None
        repository.update_stage_progress(session, first.id, bytes_done=50, bytes_total=100)
        repository.finish_stage_run(
            session,
            first.id,
            status=StageStatus.FAILED,
            error_code="source_unavailable",
            error_message="connection reset",
        )
        second = _open(session, task_id, "stage", 2)
        verify = _open(session, task_id, "verify", 1)
        assert (second.attempt, verify.attempt) == (2, 1)
        repository.update_stage_progress(session, second.id, bytes_done=100, bytes_total=100)
        repository.finish_stage_run(
            session, second.id, status=StageStatus.DONE, output={"staged_uri": "file:///s"}
        )
        ids = (first.id, second.id, verify.id)
    with database.session() as session:
        runs = repository.stage_runs(session, task_id)
        assert [r.id for r in runs] == list(ids)
        failed, done, running = runs
        assert (failed.status, failed.bytes_done, failed.bytes_total) == ("failed", 50, 100)
        assert (failed.error_code, failed.error_message) == (
            "source_unavailable",
            "connection reset",
        )
        assert failed.finished_at is not None
        assert (done.status, done.bytes_done, done.output) == (
            "done",
            100,
            {"staged_uri": "file:///s"},
        )
        assert running.finished_at is None
        latest = repository.latest_stage_runs(session, task_id)
        assert {stage: run.id for stage, run in latest.items()} == {
            "stage": second.id,
            "verify": verify.id,
        }
        with pytest.raises(IllegalTransition, match="stage status cannot go from done to failed"):
            repository.finish_stage_run(session, second.id, status=StageStatus.FAILED)
        with pytest.raises(NotFound):
            repository.finish_stage_run(session, 10**9, status=StageStatus.DONE)
        with pytest.raises(NotFound):
            repository.update_stage_progress(session, 10**9, bytes_done=1)
    with pytest.raises(IntegrityError), database.session() as session:
        repository.open_stage_run(session, "missing", "stage", attempt=1)  # no such task


def test_open_stage_run_numbers_attempts_as_told_and_refuses_a_number_twice(database):
    _, task_id = _new_task(database)
    with database.session() as session:
        run_id = repository.open_stage_run(session, task_id, "stage", attempt=1)
        run = session.get(StageRun, run_id)
        assert (run.attempt, run.status, run.bytes_done) == (1, StageStatus.RUNNING, 0)
        assert _open(session, task_id, "stage", 2).attempt == 2
    with pytest.raises(IntegrityError), database.session() as session:
        repository.open_stage_run(session, task_id, "stage", attempt=2)


def test_task_to_dict(database):
    image_id, task_id = _new_task(database)
    with database.session() as session:
        run_id = repository.open_stage_run(session, task_id, "stage", attempt=1)
        repository.update_stage_progress(session, run_id, bytes_done=0, bytes_total=9)
        repository.finish_stage_run(session, run_id, status=StageStatus.SKIPPED)
    with database.session() as session:
        task = repository.get_task(session, task_id)
        body = task_to_dict(task, repository.stage_runs(session, task_id))
    assert set(body) == {
        "id",
        "type",
        "status",
        "input",
        "result",
        "message",
        "owner",
        "image_id",
        "created_at",
        "updated_at",
        "self",
        "schema",
        "error_code",
        "attempts",
        "stages",
    }
    assert (body["id"], body["type"], body["status"], body["image_id"]) == (
        task_id,
        "api_image_import",
        "pending",
        image_id,
    )
    assert body["self"] == f"/v2/tasks/{task_id}"
    assert body["schema"] == "/v2/schemas/task"
    assert body["owner"] == "project-1"
    # As in Glance, expires_at is left out until the task has ended.
    assert (body["result"], body["error_code"], body["attempts"]) == (None, None, 0)
    assert ISO_Z.match(body["created_at"])
    [stage] = body["stages"]
    assert set(stage) == {
        "stage",
        "status",
        "attempt",
        "started_at",
        "finished_at",
        "bytes_done",
        "bytes_total",
        "error_code",
        "error_message",
        "output",
    }
    assert (stage["stage"], stage["status"], stage["attempt"], stage["bytes_total"]) == (
        "stage",
        "skipped",
        1,
        9,
    )
    assert ISO_Z.match(stage["finished_at"])
    assert task_to_dict(task)["stages"] == []


def test_deleting_a_task_deletes_its_stage_runs(database):
    _, task_id = _new_task(database)
    with database.session() as session:
        repository.open_stage_run(session, task_id, "stage", attempt=1)
    with database.session() as session:
        session.delete(repository.get_task(session, task_id))
    with database.session() as session:
        assert session.scalars(select(StageRun)).all() == []

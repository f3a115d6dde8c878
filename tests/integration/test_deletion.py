"""Deleting an image never waits for its import; nothing it stored outlives the clean-up."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from api_support import api_client, api_server
from workers_support import SlowHandler, serve, wait_for

from imageport.errors import InvalidRequest, StoreUnavailable
from imageport.pipeline import delete_image, run_import
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import ImageStatus, TaskStatus, leases, repository
from imageport.records.base import utcnow
from imageport.workers.reaper import reap
from images import MIB, leftover_files, make_qcow2, make_raw, stored_path

DELETE_DEADLINE = 5.0  # seconds a delete may take, a running import or not (it used to wait 60)


@pytest.fixture
def slow_url(tmp_path):
    """A qcow2 served at 1 MiB/s: its download runs for seconds, time to delete mid-way."""
    SlowHandler.body = make_qcow2(
        tmp_path / "slow.qcow2", virtual=64 * MIB, data=6 * MIB
    ).read_bytes()
    SlowHandler.rate = 1 * MIB
    server, base = serve(SlowHandler)
    yield f"{base}/slow.qcow2", server.server_port
    server.shutdown()


def _submit(services, source, method="local-file", disk_format="raw"):
    request = ImportRequest(method=method, source=str(source), disk_format=disk_format)
    return submit_import(services, request, name="doomed")


def _image(services, image_id):
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        return image.status, [loc.url for loc in image.locations]


def _task(services, task_id):
    with services.db.session() as session:
        task = repository.get_task(session, task_id)
        return task.status, task.error_code


def _staging_running(services, task_id):
    with services.db.session() as session:
        run = repository.latest_stage_runs(session, task_id).get("stage")
        return run is not None and run.status == "running" and run.bytes_done > 0


def _leftovers(settings):
    return [
        *leftover_files(settings.resolved_staging_dir),
        *leftover_files(settings.resolved_scratch_dir),
        *leftover_files(settings.data_dir / "images"),
    ]


def _timed_delete(services, image_id):
    started = time.monotonic()
    done = delete_image(services, image_id)
    assert time.monotonic() - started < DELETE_DEADLINE
    return done


def test_delete_during_a_running_import_returns_at_once(services, settings, slow_url):
    url, _ = slow_url
    submitted = _submit(services, url, method="web-download", disk_format="qcow2")
    worker = threading.Thread(target=run_import, args=(services, submitted.task_id))
    worker.start()
    try:
        wait_for(lambda: _staging_running(services, submitted.task_id), 30, "staging to start")

        done = _timed_delete(services, submitted.image_id)

        assert done.stopping_task_id == submitted.task_id  # the worker stops it, not us
        assert _image(services, submitted.image_id)[0] == "deleted"
    finally:
        worker.join(30)
    assert not worker.is_alive()
    # The worker saw the cancel, removed what it wrote, and left the image deleted.
    assert _task(services, submitted.task_id) == ("failure", "cancelled")
    assert _image(services, submitted.image_id) == ("deleted", [])
    assert _leftovers(settings) == []


def test_delete_does_not_wait_for_a_hung_worker(services, settings, tmp_path):
    """A worker that holds the lease but never notices the cancel cannot hold the delete up."""
    submitted = _submit(services, make_raw(tmp_path / "h.raw", virtual=4 * MIB, data=MIB))
    with services.db.session() as session:
        assert leases.acquire(session, submitted.task_id, "hung-worker", 600).ok
        repository.set_task_status(
            session, submitted.task_id, expected=TaskStatus.PENDING, new=TaskStatus.PROCESSING
        )

    done = _timed_delete(services, submitted.image_id)  # the old delete waited 60 s, then 400

    assert done.stopping_task_id == submitted.task_id
    assert _image(services, submitted.image_id) == ("deleted", [])
    # The hung worker's lease runs out; the reaper requeues the job, and its next delivery
    # sees the cancel and ends it.
    with services.db.session() as session:
        task = repository.get_task(session, submitted.task_id)
        task.lease_expires_at = utcnow() - timedelta(seconds=1)
    sent: list[str] = []
    assert reap(services, sent.append).requeued == [submitted.task_id]
    assert sent == [submitted.task_id]
    run_import(services, submitted.task_id)
    assert _task(services, submitted.task_id) == ("failure", "cancelled")
    assert _image(services, submitted.image_id) == ("deleted", [])
    assert _leftovers(settings) == []


def test_delete_ends_a_queued_import_itself(services, settings, tmp_path):
    submitted = _submit(services, make_raw(tmp_path / "q.raw", virtual=4 * MIB, data=MIB))

    done = _timed_delete(services, submitted.image_id)  # no worker runs it: ended right here

    assert done.stopping_task_id is None
    assert _task(services, submitted.task_id) == ("failure", "cancelled")
    assert _image(services, submitted.image_id) == ("deleted", [])
    assert _leftovers(settings) == []


def test_delete_of_an_active_image_removes_its_data(services, settings, tmp_path):
    submitted = _submit(services, make_raw(tmp_path / "a.raw", virtual=4 * MIB, data=MIB))
    run_import(services, submitted.task_id)
    [url] = _image(services, submitted.image_id)[1]
    assert stored_path(url).exists()

    done = _timed_delete(services, submitted.image_id)

    assert (done.stopping_task_id, done.locations_left) == (None, 0)
    assert not stored_path(url).exists()
    assert _image(services, submitted.image_id) == ("deleted", [])
    assert _leftovers(settings) == []


def test_a_protected_image_is_refused(services, tmp_path):
    submitted = _submit(services, make_raw(tmp_path / "p.raw", virtual=4 * MIB, data=MIB))
    run_import(services, submitted.task_id)
    with services.db.session() as session:
        repository.update_image(session, submitted.image_id, protected=True)

    with pytest.raises(InvalidRequest, match="protected"):
        delete_image(services, submitted.image_id)

    status, locations = _image(services, submitted.image_id)
    assert status == "active"
    assert stored_path(locations[0]).exists()


def test_data_a_store_failed_to_delete_is_removed_by_the_reaper(services, settings, tmp_path):
    submitted = _submit(services, make_raw(tmp_path / "r.raw", virtual=4 * MIB, data=MIB))
    run_import(services, submitted.task_id)
    [url] = _image(services, submitted.image_id)[1]
    store = services.stores[settings.default_store]

    def unavailable(url):
        raise StoreUnavailable(f"store down: cannot delete {url}")

    store.delete = unavailable  # an instance attribute, removed below: the store is back
    try:
        done = _timed_delete(services, submitted.image_id)
        assert done.locations_left == 1
        # Deleted for every client, but the copy stays recorded: the reaper knows what is left.
        assert _image(services, submitted.image_id) == ("deleted", [url])
        assert stored_path(url).exists()
        assert reap(services, lambda _task_id: None).purged == []  # still down: kept for later
    finally:
        del store.delete

    report = reap(services, lambda _task_id: None)

    assert report.purged == [submitted.image_id]
    assert not stored_path(url).exists()
    assert _image(services, submitted.image_id) == ("deleted", [])
    assert _leftovers(settings) == []


def test_a_copy_recorded_on_a_deleted_image_is_removed_by_the_reaper(services, settings, tmp_path):
    """What a job racing the delete records (an activation just before it, a copy-image)."""
    submitted = _submit(services, make_raw(tmp_path / "c.raw", virtual=4 * MIB, data=MIB))
    run_import(services, submitted.task_id)
    [url] = _image(services, submitted.image_id)[1]
    extra = stored_path(url).with_name(f"{submitted.image_id}.late")
    extra.write_bytes(b"late copy")
    with services.db.session() as session:
        # Deleted with its copy still recorded, plus one recorded after the delete read them.
        repository.set_image_status(
            session, submitted.image_id, expected=ImageStatus.ACTIVE, new=ImageStatus.DELETED
        )
        repository.add_location(
            session,
            submitted.image_id,
            store_id=settings.default_store,
            url=extra.as_uri(),
            metadata={},
        )

    assert reap(services, lambda _task_id: None).purged == [submitted.image_id]

    assert not stored_path(url).exists()
    assert not extra.exists()
    assert _image(services, submitted.image_id) == ("deleted", [])


def test_api_delete_during_a_running_import(tmp_path, slow_url):
    """``DELETE /v2/images/ID`` answers 204 at once; the embedded worker cleans up after."""
    url, port = slow_url
    data = tmp_path / "data"
    options = {
        "web_download_allowed_networks": ["127.0.0.0/8"],
        "web_download_ports": [80, 443, port],
    }
    with api_server(data, **options) as server, api_client(server.url) as http:
        image = http.post(
            "/v2/images", json={"disk_format": "qcow2", "container_format": "bare"}
        ).json()
        body = {"method": {"name": "web-download", "uri": url}}
        assert http.post(f"/v2/images/{image['id']}/import", json=body).status_code == 202

        def staging():
            task_id = http.get(f"/v2/images/{image['id']}").json().get("os_glance_import_task")
            task = http.get(f"/v2/tasks/{task_id}").json() if task_id else {}
            stages = [s for s in task.get("stages", []) if s["stage"] == "stage"]
            return task_id if stages and stages[-1]["bytes_done"] > 0 else None

        task_id = wait_for(staging, 30, "staging to start")
        started = time.monotonic()
        answer = http.delete(f"/v2/images/{image['id']}", timeout=60)
        assert answer.status_code == 204, answer.text
        assert time.monotonic() - started < DELETE_DEADLINE
        assert http.get(f"/v2/images/{image['id']}").status_code == 404

        def cleaned():
            task = http.get(f"/v2/tasks/{task_id}").json()
            left = [
                *leftover_files(data / "staging"),
                *leftover_files(data / "scratch"),
                *leftover_files(data / "images"),
            ]
            return task["status"] == "failure" and not left and task

        task = wait_for(cleaned, 30, "the worker to stop and clean up")
        assert task["error_code"] == "cancelled"

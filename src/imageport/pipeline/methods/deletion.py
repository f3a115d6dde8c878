"""Delete an image: cancel its running import first, then remove its data from every store."""

from __future__ import annotations

import time

from imageport.errors import InvalidRequest
from imageport.pipeline.context import Services
from imageport.pipeline.runner import run_import
from imageport.records import ImageStatus, TaskStatus, repository
from imageport.records.base import utcnow

IMPORT_TASK = "os_glance_import_task"
CANCEL_WAIT_SECONDS = 60.0  # how long to wait for a worker to stop the running import


def delete_image(services: Services, image_id: str) -> None:
    """Cancel the image's import if one runs, delete every stored copy, mark it deleted.

    Raises:
        InvalidRequest: the image is protected, or its import did not stop in time.
    """
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        if image.protected:
            raise InvalidRequest(f"image {image_id} is protected: unprotect it first")
        task_id = next((p.value for p in image.properties if p.name == IMPORT_TASK), None)
        running = False
        if task_id:
            task = repository.get_task(session, task_id)
            if task.status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
                task.cancel_requested = True
                running = True
    if running and task_id:
        _stop_import(services, task_id)
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        for location in list(image.locations):
            store = services.stores.get(location.store_id)
            if store is not None:
                # A failure raises out of the transaction: the record keeps pointing at the
                # copy we could not delete, so it stays findable.
                store.delete(location.url)
        repository.remove_locations(session, image_id)
        repository.set_image_status(
            session,
            image_id,
            expected=ImageStatus(image.status),
            new=ImageStatus.DELETED,
            deleted_at=utcnow(),
        )


def _stop_import(services: Services, task_id: str) -> None:
    run_import(services, task_id, owner="delete")  # cancels at once if no worker holds it
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        with services.db.session() as session:
            if repository.get_task(session, task_id).status in (
                TaskStatus.SUCCESS,
                TaskStatus.FAILURE,
            ):
                return
        time.sleep(0.2)
    raise InvalidRequest(f"the import {task_id} did not stop within {CANCEL_WAIT_SECONDS:.0f}s")

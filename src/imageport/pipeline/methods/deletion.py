"""Delete an image at once; a running import stops and cleans up after itself.

Deleting never waits for an import to stop (``DELETE /v2/images/ID`` answers 204 at once, as
in Glance). :func:`delete_image` does three things, none of which blocks on a worker:

1. One transaction refuses a protected image, raises the cancel flag of the image's import
   if it is pending or processing, and marks the image ``deleted``. Every status but
   ``deleted`` may go to ``deleted`` (records/states.py); the status change is a conditional
   UPDATE, so an activation racing it either commits first (the image is deleted from
   ``active``, with the locations that activation recorded) or fails its own conditional
   UPDATE afterwards (and records nothing).
2. An import that no worker is running — queued, waiting for a retry, or left by a worker
   that died — is ended right here: ``run_import`` takes its lease, the job sees the cancel
   flag before it touches a byte, and ``fail_import`` removes what earlier attempts left. If
   a worker holds a live lease, that call returns at once instead; the worker notices the
   flag at its next heartbeat (every 2 s at most) and removes its staging and scratch
   directories, its partial store writes and the copies it wrote but did not record, through
   the same ``fail_import``, which leaves a ``deleted`` image deleted (only ``importing`` and
   ``saving`` go back to ``queued``).
3. The data of every location the image records is deleted, and each location row goes with
   its bytes. A store that fails keeps its row.

What makes the rest safe to leave to others is one rule: **a location of a deleted image is
data still to delete.** A location recorded after step 3 read them (a copy-image
registration adds locations to an active image without a status change, so it can land
after the delete) and a copy a store failed to delete both stay recorded, and each reaper
pass calls :func:`delete_image` again for every deleted image that still has locations;
deleting a deleted image only repeats steps 2 and 3. Bytes that are not recorded never
outlive their job: the job that wrote them removes them when it fails or is cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from imageport.errors import InvalidRequest, PipelineError
from imageport.pipeline.context import Services
from imageport.pipeline.runner import default_owner, run_import
from imageport.records import ImageStatus, TaskStatus, allowed_transitions, repository
from imageport.records.base import utcnow
from imageport.records.reserved import IMPORT_TASK

log = structlog.get_logger(__name__)

#: The statuses an image may be deleted from: all but ``deleted`` itself.
DELETABLE = tuple(
    status
    for status in ImageStatus
    if ImageStatus.DELETED in allowed_transitions(ImageStatus, status)
)
_RUNNING = (TaskStatus.PENDING, TaskStatus.PROCESSING)


@dataclass(frozen=True)
class Deletion:
    """What deleting an image did at once, and what finishes in the background."""

    image_id: str
    #: The import a worker is still stopping; it removes its own data when it stops.
    stopping_task_id: str | None = None
    #: Stored copies a store failed to delete; the reaper tries again on every pass.
    locations_left: int = 0


def delete_image(services: Services, image_id: str) -> Deletion:
    """Mark the image deleted, cancel its import, and delete the data it records.

    Safe to call again on a deleted image: that retries the removal of data still recorded
    (the reaper does so on every pass).

    Raises:
        InvalidRequest: the image is protected.
        NotFound: there is no such image.
    """
    task_id = _mark_deleted(services, image_id)
    stopping = _end_unowned_import(services, task_id) if task_id else None
    return Deletion(image_id, stopping, locations_left=_delete_locations(services, image_id))


def _mark_deleted(services: Services, image_id: str) -> str | None:
    """Step 1: refuse a protected image, flag its import, mark it deleted.

    Returns the id of the import that was still pending or processing, if any.
    """
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        if image.status != ImageStatus.DELETED:
            if image.protected:
                raise InvalidRequest(f"image {image_id} is protected: unprotect it first")
            repository.set_image_status(
                session, image_id, expected=DELETABLE, new=ImageStatus.DELETED, deleted_at=utcnow()
            )
        task_id = next((p.value for p in image.properties if p.name == IMPORT_TASK), None)
        if task_id is None:
            return None
        task = repository.get_task(session, task_id)
        if task.status not in _RUNNING:
            return None
        task.cancel_requested = True
        return task_id


def _end_unowned_import(services: Services, task_id: str) -> str | None:
    """Step 2: end the import here unless a worker runs it; return its id if one does."""
    # An owner of our own: two deletes (an API call, a reaper pass) must not share a lease.
    owner = f"delete:{default_owner()}"
    try:
        outcome = run_import(services, task_id, owner=owner)
    except PipelineError as exc:
        # The image is deleted already; the job's lease is free again, so its next delivery
        # or the reaper ends it and removes its data.
        log.warning("could not end the import here", task_id=task_id, error=str(exc))
        return task_id
    return task_id if outcome.dropped else None


def _delete_locations(services: Services, image_id: str) -> int:
    """Step 3: delete each recorded copy, then its location row; return how many are left."""
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        locations = [(loc.id, loc.store_id, loc.url) for loc in image.locations]
    left = 0
    for location_id, store_id, url in locations:
        store = services.stores.get(store_id)
        if store is None:
            # Nothing here can reach a store that is no longer configured: forget the copy.
            log.warning("store not configured; location forgotten", store=store_id, url=url)
        else:
            try:
                store.delete(url)
            except (PipelineError, OSError) as exc:
                # The row stays: the reaper tries again, and the copy stays findable meanwhile.
                log.warning("stored copy not deleted yet", store=store_id, url=url, error=str(exc))
                left += 1
                continue
        with services.db.session() as session:
            repository.remove_location(session, location_id)
    return left

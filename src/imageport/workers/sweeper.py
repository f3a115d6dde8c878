"""The local sweep: staging and scratch directories this host holds for jobs that are over.

A job ends by removing its local directories, but only on the host that ends it. When a
worker dies and another host takes the job over (remote or shared staging), or the reaper
fails it, the first host's directories stay behind; so does an API upload a worker on another
host fetched from remote staging. Each reaper pass removes, on its own host:

* ``<staging>/<task id>`` and ``<scratch>/<task id>`` of a task that finished or is gone;
* ``<staging>/uploads/<image id>`` of an image no longer ``uploading`` whose remote upload is
  gone (only with remote staging: locally, that directory is the only copy of the upload);
* ``<staging>/uploads/<image id>`` untouched for ``staging_ttl_hours`` of an image that is
  not receiving or importing data (a deleted image, one put back to ``queued``).

Staged uploads also expire, on whichever host the pass runs: an image ``uploading`` (staged
by ``PUT /stage``, never imported) unchanged for ``staging_ttl_hours`` goes back to
``queued``, Glance's status for an image without data, and its upload is removed here and
from remote staging. It counts towards ``image_stage_total`` until then. An upload whose
bytes are still arriving on this host is left alone; one arriving on another host for longer
than the TTL is not seen as such, so keep the TTL well above the longest upload.

A directory of a running or pending task is never touched.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from imageport.pipeline import UPLOADS, Services, discard_upload, upload_names
from imageport.records import Image, ImageStatus, Task, TaskStatus, repository
from imageport.records.base import utcnow
from imageport.records.states import RECEIVING

log = structlog.get_logger(__name__)

_OVER = (TaskStatus.SUCCESS, TaskStatus.FAILURE)
#: Statuses of an image whose upload directory may still be read (received or adopted).
_IN_USE = (*RECEIVING, ImageStatus.IMPORTING)


def sweep_local(services: Services) -> list[str]:
    """Remove this host's leftover directories of finished jobs; return what was removed."""
    settings = services.settings
    removed: list[str] = []
    for root in (settings.resolved_staging_dir, settings.resolved_scratch_dir):
        for folder in _id_dirs(root):
            with services.db.session() as session:
                task = session.get(Task, folder.name)
                over = task is None or task.status in _OVER
            if over:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
    if services.staging.is_remote:
        for folder in _id_dirs(settings.resolved_staging_dir / UPLOADS):
            with services.db.session() as session:
                image = session.get(Image, folder.name)
                # Staged by PUT /stage (uploading) or being saved by PUT /file (saving).
                waiting = image is not None and image.status in RECEIVING
            if not waiting and not services.staging.exists(upload_names(folder.name)[1]):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
    removed.extend(expire_uploads(services))
    removed.extend(_old_upload_dirs(services, exclude=set(removed)))
    if removed:
        log.info("local leftovers removed", dirs=removed)
    return removed


def expire_uploads(services: Services) -> list[str]:
    """Put staged uploads older than ``staging_ttl_hours`` back to ``queued``, data removed.

    Returns the upload directories (of this host) of the images expired.
    """
    settings = services.settings
    before = utcnow() - timedelta(hours=settings.staging_ttl_hours)
    with services.db.session() as session:
        stale = repository.stale_uploads(session, before)
    expired: list[str] = []
    for image_id in stale:
        folder = settings.resolved_staging_dir / UPLOADS / image_id
        if _last_change(folder) >= before:
            continue  # bytes still arriving here (the image changes only at the end)
        with services.db.session() as session:
            # Compare-and-set first: an import that started meanwhile keeps its upload.
            if not repository.expire_upload(session, image_id, before):
                continue
        discard_upload(settings, services.staging, image_id)
        expired.append(str(folder))
    if expired:
        log.info("staged uploads expired", images=[Path(f).name for f in expired])
    return expired


def _old_upload_dirs(services: Services, *, exclude: set[str]) -> list[str]:
    """Upload directories untouched for the TTL whose image no longer needs them."""
    settings = services.settings
    before = utcnow() - timedelta(hours=settings.staging_ttl_hours)
    removed: list[str] = []
    for folder in _id_dirs(settings.resolved_staging_dir / UPLOADS):
        if str(folder) in exclude or _last_change(folder) >= before:
            continue
        with services.db.session() as session:
            image = session.get(Image, folder.name)
            in_use = image is not None and image.status in _IN_USE
        if not in_use:
            discard_upload(settings, services.staging, folder.name)
            removed.append(str(folder))
    return removed


def _last_change(folder: Path) -> datetime:
    """When the folder or a file in it last changed (the epoch when there is none)."""
    try:
        stamps = [folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())]
    except OSError:  # no such folder, or it went away while we looked
        return datetime.fromtimestamp(0, UTC)
    return datetime.fromtimestamp(max(stamps), UTC)


def _id_dirs(root: Path) -> list[Path]:
    """The directories under ``root`` named by one of our ids (never anything else)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and _is_uuid(p.name)]


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False

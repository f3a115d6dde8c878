"""The local sweep: staging and scratch directories this host holds for jobs that are over.

A job ends by removing its local directories, but only on the host that ends it. When a
worker dies and another host takes the job over (remote or shared staging), or the reaper
fails it, the first host's directories stay behind; so does an API upload a worker on another
host fetched from remote staging. Each reaper pass removes, on its own host:

* ``<staging>/<task id>`` and ``<scratch>/<task id>`` of a task that finished or is gone;
* ``<staging>/uploads/<image id>`` of an image no longer ``uploading`` whose remote upload is
  gone (only with remote staging: locally, that directory is the only copy of the upload).

A directory of a running or pending task is never touched.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import structlog

from imageport.pipeline import UPLOADS, Services, upload_names
from imageport.records import Image, Task, TaskStatus
from imageport.records.states import RECEIVING

log = structlog.get_logger(__name__)

_OVER = (TaskStatus.SUCCESS, TaskStatus.FAILURE)


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
    if removed:
        log.info("local leftovers removed", dirs=removed)
    return removed


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

"""Images and tasks as the Image API v2 shows them (JSON-ready dictionaries).

Timestamps are written the way Glance writes them: ISO 8601 in UTC, whole seconds, with a
``Z`` ("2015-08-27T09:49:58Z"). Extra properties are flattened to the top level of the image,
as strings, and never hide a core field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imageport.records.models import FORWARDED_TOKEN, LOCATION_ACTIVE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from imageport.records.models import Image, StageRun, Task

IMAGE_SCHEMA = "/v2/schemas/image"
TASK_SCHEMA = "/v2/schemas/task"


def isotime(value: datetime | None) -> str | None:
    """Format an aware datetime like Glance ("2015-08-27T09:49:58Z"); None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_to_dict(image: Image, *, admin: bool = True) -> dict[str, Any]:
    """Return the Image API v2 JSON of an image.

    Args:
        image: the image, with its tags, properties and locations loaded.
        admin: include ``locations`` (only an admin or ``show_multiple_locations`` sees them).
    """
    active = [location for location in image.locations if location.status == LOCATION_ACTIVE]
    body: dict[str, Any] = {
        "id": image.id,
        "name": image.name,
        "status": str(image.status),
        "visibility": str(image.visibility),
        "protected": image.protected,
        "os_hidden": image.os_hidden,
        "owner": image.owner,
        "checksum": image.checksum,
        "os_hash_algo": image.os_hash_algo,
        "os_hash_value": image.os_hash_value,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "tags": sorted(tag.value for tag in image.tags),
        "created_at": isotime(image.created_at),
        "updated_at": isotime(image.updated_at),
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": IMAGE_SCHEMA,
    }
    if active:
        # Glance (multi-store) lists the stores holding the data, comma-separated.
        body["stores"] = ",".join(sorted({location.store_id for location in active}))
    if admin:
        body["locations"] = [
            {"url": location.url, "metadata": dict(location.meta_data)} for location in active
        ]
    for prop in sorted(image.properties, key=lambda prop: prop.name):
        body.setdefault(prop.name, str(prop.value))
    return body


def stage_run_to_dict(run: StageRun) -> dict[str, Any]:
    """Return one stage run as JSON: status, attempt, times, progress, error, output."""
    return {
        "stage": run.stage,
        "status": str(run.status),
        "attempt": run.attempt,
        "started_at": isotime(run.started_at),
        "finished_at": isotime(run.finished_at),
        "bytes_done": run.bytes_done,
        "bytes_total": run.bytes_total,
        "error_code": run.error_code,
        "error_message": run.error_message,
        "output": run.output,
    }


#: What ``task_to_dict`` adds to the stub: Glance's task details (``input``, ``result``,
#: ``message``) and imageport's ``attempts`` and ``stages``. A task list leaves them out.
TASK_DETAIL_FIELDS = ("input", "result", "message", "attempts", "stages")


def task_stub_to_dict(task: Task) -> dict[str, Any]:
    """Return a task as ``GET /v2/tasks`` lists it: Glance's task stub, plus imageport's extras.

    The stub is the task without its details (see ``TASK_DETAIL_FIELDS``); imageport adds
    ``image_id`` and ``error_code``.
    """
    return {
        "id": task.id,
        "type": task.type,
        "status": str(task.status),
        "owner": task.owner,
        "image_id": task.image_id,
        "expires_at": isotime(task.expires_at),
        "created_at": isotime(task.created_at),
        "updated_at": isotime(task.updated_at),
        "self": f"/v2/tasks/{task.id}",
        "schema": TASK_SCHEMA,
        "error_code": task.error_code,
    }


def task_to_dict(task: Task, runs: Sequence[StageRun] = ()) -> dict[str, Any]:
    """Return the Image API v2 JSON of a task, plus imageport's error code, attempts and stages.

    Args:
        task: the task.
        runs: its stage runs, in the order to show them (e.g. ``repository.stage_runs``).
    """
    return {
        **task_stub_to_dict(task),
        # The caller's forwarded token is for the worker only: never shown.
        "input": {k: v for k, v in task.input.items() if k != FORWARDED_TOKEN},
        "result": task.result,
        "message": task.message,
        "attempts": task.attempts,
        "stages": [stage_run_to_dict(run) for run in runs],
    }

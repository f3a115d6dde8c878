"""Images and tasks as the Image API v2 shows them (JSON-ready dictionaries).

Timestamps are written the way Glance writes them: ISO 8601 in UTC, whole seconds, with a
``Z`` ("2015-08-27T09:49:58Z"). Extra properties are flattened to the top level of the image,
as strings, and never hide a core field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imageport.records.models import FORWARDED_TOKEN, LOCATION_ACTIVE
from imageport.records.states import ImageStatus

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


def image_to_dict(
    image: Image,
    *,
    admin: bool = True,
    show_locations: bool | None = None,
    direct_url: bool = False,
) -> dict[str, Any]:
    """Return the Image API v2 JSON of an image.

    Args:
        image: the image, with its tags, properties and locations loaded.
        admin: whether the reader may see store URLs (Glance's ``get_image_location`` rule,
            administrators by default).
        show_locations: include ``locations`` (Glance's ``show_multiple_locations``): the
            stored locations for ``admin``, an empty list for anyone else, as Glance shows them;
            None (the CLI's admin view) includes them for ``admin`` only.
        direct_url: include ``direct_url``, the first location's URL (Glance's
            ``show_image_direct_url``), when ``admin`` and the image has a location.
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
    if active and image.status != ImageStatus.DEACTIVATED:
        # Glance (multi-store) lists the stores holding the data, comma-separated; not for a
        # deactivated image, whose locations Glance hides.
        body["stores"] = ",".join(sorted({location.store_id for location in active}))
    readable = active if admin else []  # Glance's policy proxy hides them from others
    if show_locations or (show_locations is None and admin):
        body["locations"] = [
            {"url": location.url, "metadata": dict(location.meta_data)} for location in readable
        ]
    if direct_url and readable:
        body["direct_url"] = readable[0].url
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


#: Keys of a task's stored input the API writes for its own view, never shown under
#: ``input``: who asked (Glance's task ``user_id`` and ``request_id``).
TASK_USER_ID = "_user_id"
TASK_REQUEST_ID = "_request_id"
#: Input key the API sets on the task of a ``PUT /file`` upload: imageport runs the upload as
#: an import, where Glance writes the data without a task, so the Glance task views
#: (``/v2/tasks``, ``/v2/images/{id}/tasks``) leave such tasks out; the CLI shows them.
TASK_UPLOAD = "_upload"
#: Input keys no task view shows: the forwarded token (for the worker only) and the above.
HIDDEN_INPUT = frozenset({FORWARDED_TOKEN, TASK_USER_ID, TASK_REQUEST_ID, TASK_UPLOAD})
#: imageport's own keys of a task's input (the import request it runs) and result (the stores
#: written and failed), which Glance's task bodies do not have. The CLI shows them; the API
#: leaves them out (the stores are in the ``activate`` stage's output).
OWN_INPUT = frozenset({"request"})
OWN_RESULT = frozenset({"stores", "failed_stores"})


def is_upload_task(task: Task) -> bool:
    """Whether ``task`` runs a ``PUT /file`` upload (see TASK_UPLOAD)."""
    return bool((task.input or {}).get(TASK_UPLOAD))


def task_stub_to_dict(task: Task) -> dict[str, Any]:
    """Return a task as ``GET /v2/tasks`` lists it: Glance's task stub, plus ``error_code``.

    The stub is the task without its details (``input``, ``result``, ``message``,
    ``image_id``, ``user_id``, ``request_id``, and imageport's ``attempts`` and ``stages``).
    ``expires_at`` is there once the task has ended, as in Glance, which leaves it out until
    then.
    """
    stub: dict[str, Any] = {
        "id": task.id,
        "type": task.type,
        "status": str(task.status),
        "owner": task.owner,
        "created_at": isotime(task.created_at),
        "updated_at": isotime(task.updated_at),
        "self": f"/v2/tasks/{task.id}",
        "schema": TASK_SCHEMA,
        "error_code": task.error_code,
    }
    if task.expires_at is not None:
        stub["expires_at"] = isotime(task.expires_at)
    return stub


def task_to_dict(task: Task, runs: Sequence[StageRun] = ()) -> dict[str, Any]:
    """Return a task whole, as the CLI shows it: Glance's fields and imageport's own.

    Glance's ``image_id``, ``user_id`` and ``request_id`` are there when known; ``input``
    holds imageport's import request, ``result`` the stores written and failed; imageport adds
    its error code, attempts and stages. The API shows :func:`api_task_to_dict` instead.

    Args:
        task: the task.
        runs: its stage runs, in the order to show them (e.g. ``repository.stage_runs``).
    """
    body = task_stub_to_dict(task)
    if task.image_id is not None:
        body["image_id"] = task.image_id
    stored = task.input or {}
    for key, name in ((TASK_USER_ID, "user_id"), (TASK_REQUEST_ID, "request_id")):
        if stored.get(key):
            body[name] = stored[key]
    return {
        **body,
        # The caller's forwarded token is for the worker only: never shown.
        "input": {k: v for k, v in stored.items() if k not in HIDDEN_INPUT},
        "result": task.result,
        "message": task.message,
        "attempts": task.attempts,
        "stages": [stage_run_to_dict(run) for run in runs],
    }


def api_task_to_dict(task: Task, runs: Sequence[StageRun] = ()) -> dict[str, Any]:
    """Return a task as ``GET /v2/tasks/{id}`` shows it: Glance's body, and imageport's extras.

    The extras are ``error_code``, ``attempts`` and ``stages``; imageport's own keys of
    ``input`` and ``result`` (OWN_INPUT, OWN_RESULT) are left out.
    """
    body = task_to_dict(task, runs)
    body["input"] = {k: v for k, v in body["input"].items() if k not in OWN_INPUT}
    if isinstance(task.result, dict):
        body["result"] = {k: v for k, v in task.result.items() if k not in OWN_RESULT}
    return body


def image_task_to_dict(task: Task, runs: Sequence[StageRun] = ()) -> dict[str, Any]:
    """Return a task as ``GET /v2/images/{id}/tasks`` lists it.

    Glance lists its database rows there: no ``self`` nor ``schema``, but ``deleted`` and
    ``deleted_at`` (a listed task is never deleted), and ``expires_at`` null until it ends.
    """
    body = api_task_to_dict(task, runs)
    del body["self"], body["schema"]
    body.setdefault("expires_at", None)
    return {**body, "deleted": False, "deleted_at": None}

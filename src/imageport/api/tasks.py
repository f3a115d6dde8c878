"""Tasks: ``GET /v2/tasks``, ``GET /v2/tasks/{id}`` and ``GET /v2/images/{id}/tasks``.

Glance's task fields, plus imageport's documented extras: ``error_code`` (the stable code of
the failure), ``attempts`` (deliveries so far) and ``stages`` — one entry per stage and
attempt with ``stage``, ``status``, ``attempt``, ``started_at``, ``finished_at``,
``bytes_done``, ``bytes_total``, ``error_code``, ``error_message`` and ``output`` — which is
the per-stage progress of a running import. imageport's own input and result keys (the
import request, the stores written) are left out, as Glance has none; the CLI shows them.

Only the tasks of ``POST /import`` are Glance tasks: a ``PUT /file`` upload, which Glance
writes without a task, runs as an imageport task that these routes never show (404 by id);
``imageport tasks`` shows it.

Policy, as in Glance: ``GET /v2/tasks`` and ``GET /v2/tasks/{id}`` are the tasks API, which
``tasks_api_access`` guards as a whole (administrators only by default), then ``get_tasks`` /
``get_task``; ``GET /v2/images/{id}/tasks`` is an image call, guarded by ``get_image``. An
administrator sees every task; anyone else only the tasks their project owns — on an image
too, where the owner of an image does not see an administrator's copy-image task.
``GET /v2/tasks`` lists Glance's task stubs (no ``input``, ``result``, ``message``,
``image_id``, nor imageport's ``attempts`` and ``stages``; with ``error_code``), filtered by
``status`` and ``type`` (Glance's filter takes only ``import``, the legacy task type: an
import is an ``api_image_import`` task, which no type filter selects, as in Glance; another
value is 400), sorted by ``sort_key`` (``created_at`` by default, ``updated_at``, ``status``,
``type``, ``id``) and ``sort_dir`` (``desc`` by default; ``id`` breaks ties), and paged by
``limit`` and ``marker`` (a UUID) as the image list is: keyset paging in SQL, so pages stay
consistent while tasks are added, and a full page has a ``next`` link, as in Glance. A task
shows Glance's ``user_id`` and ``request_id`` when the import call recorded them, and
``expires_at`` once it has ended.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from imageport.access.policy import Values
from imageport.api import access
from imageport.api.auth import Caller, Identity
from imageport.api.deps import ApiContext, Ctx
from imageport.api.errors import ApiError, bad_request
from imageport.api.listing import Opt, page_links, page_size
from imageport.records import Task, TaskStatus, repository
from imageport.records.serialize import (
    api_task_to_dict,
    image_task_to_dict,
    is_upload_task,
    task_stub_to_dict,
)

router = APIRouter(tags=["tasks"])

#: The values Glance's task list accepts in ``status`` and ``type`` (only the legacy
#: ``import``; its task schema also names ``api_image_import`` and ``location_import``, which
#: its filter refuses with 400).
TASK_STATUSES = tuple(str(status) for status in TaskStatus)
TASK_TYPES = ("import",)
#: Tasks read at a time while a page of the list is filled (upload tasks are skipped).
_BATCH = 100


@router.get("/v2/tasks")
def list_tasks(
    request: Request,
    ctx: Ctx,
    who: Caller,
    limit: Opt = None,
    marker: Opt = None,
    sort_key: Annotated[str, Query()] = "created_at",
    sort_dir: Annotated[str, Query()] = "desc",
    status: Opt = None,
    task_type: Annotated[str | None, Query(alias="type")] = None,
) -> dict[str, Any]:
    """List the tasks the caller may see, filtered, sorted and paged as in Glance."""
    _tasks_api(ctx, who, "get_tasks", access.caller_target(who))
    if sort_dir not in ("asc", "desc"):
        raise bad_request(f"Invalid sort direction: {sort_dir}")
    # Glance checks the filters' values (400), where the image list lets any status through.
    if status and status not in TASK_STATUSES:
        raise bad_request(f"Invalid status value: {status}")
    if task_type and task_type not in TASK_TYPES:
        raise bad_request(f"Invalid type value: {task_type}")
    size = page_size(limit)
    with ctx.services.db.session() as session:
        after = None if marker is None else _marker(session, marker, who)
        tasks: list[Task] = []
        while len(tasks) < size:
            # Keyset paging over every task, keeping the Glance tasks: a page is full unless
            # the tasks ran out, however many upload tasks lie between.
            batch = repository.list_tasks(
                session,
                owners=_owners(who),
                status=status,
                task_type=task_type,
                sort_key=sort_key,
                ascending=sort_dir == "asc",
                after=after,
                limit=_BATCH,
            )
            tasks += [task for task in batch if not is_upload_task(task)]
            if len(batch) < _BATCH:
                break
            after = batch[-1]
        stubs = [task_stub_to_dict(task) for task in tasks[:size]]
    links = page_links(request, "/v2/tasks", stubs, more=len(stubs) == size)
    return {"tasks": stubs, "schema": "/v2/schemas/tasks", **links}


@router.get("/v2/images/{image_id}/tasks")
def image_tasks(image_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The image's import tasks the caller may see, newest first.

    Anyone who may see the image may ask (Glance's ``get_image``); the tasks listed are those
    of the caller's project (every task for an administrator), so an import's input (its URL)
    is never shown to another project.
    """
    with ctx.services.db.session() as session:
        image = access.permitted_image(session, image_id, who, ctx.policy, "get_image")
        tasks = repository.list_tasks(session, image_id=image.id, owners=_owners(who))
        return {
            "tasks": [
                image_task_to_dict(t, repository.stage_runs(session, t.id))
                for t in tasks
                if not is_upload_task(t)
            ],
        }


@router.get("/v2/tasks/{task_id}")
def show_task(task_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """One task (its owner or an administrator)."""
    _tasks_api(ctx, who)
    with ctx.services.db.session() as session:
        task = _visible_task(session, task_id, who)
        if task is None:
            raise ApiError(404, f"no task found with id {task_id}")
        ctx.policy.enforce("get_task", access.task_target(task), who)
        return api_task_to_dict(task, repository.stage_runs(session, task.id))


def _tasks_api(
    ctx: ApiContext, who: Identity, rule: str | None = None, target: Values | None = None
) -> None:
    """Glance's gate of the tasks API, ``tasks_api_access`` (403), then ``rule`` if given."""
    ctx.policy.enforce("tasks_api_access", access.caller_target(who), who)
    if rule is not None:
        ctx.policy.enforce(rule, target or {}, who)


def _owners(who: Identity) -> list[str] | None:
    """Whose tasks ``who`` sees: everyone's (None) for an administrator, else its project's."""
    if who.is_admin:
        return None
    return [who.project_id] if who.project_id else []


def _visible_task(session: Session, task_id: str, who: Identity) -> Task | None:
    """The task, if it is a Glance task (not an upload's) and ``who`` may see it.

    Who may see it: the rule of ``_owners``, which the list applies in SQL.
    """
    task, owners = session.get(Task, task_id), _owners(who)
    if task is None or (owners is not None and task.owner not in owners) or is_upload_task(task):
        return None
    return task


def _marker(session: Session, marker: str, who: Identity) -> Task:
    """The marker task of a page.

    Raises:
        ApiError: 400 when it is not a task id, or names no task the caller may see.
    """
    try:
        uuid.UUID(marker)  # as in Glance; also keeps odd bytes (NUL) away from the database
    except ValueError:
        raise bad_request("Invalid marker format") from None
    task = _visible_task(session, marker, who)
    if task is None:
        raise bad_request(f"marker {marker} is not a task you can see")
    return task

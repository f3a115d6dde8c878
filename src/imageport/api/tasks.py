"""Tasks: ``GET /v2/tasks``, ``GET /v2/tasks/{id}`` and ``GET /v2/images/{id}/tasks``.

Glance's task fields, plus imageport's documented extras: ``error_code`` (the stable code of
the failure), ``attempts`` (deliveries so far) and ``stages`` — one entry per stage and
attempt with ``stage``, ``status``, ``attempt``, ``started_at``, ``finished_at``,
``bytes_done``, ``bytes_total``, ``error_code``, ``error_message`` and ``output`` — which is
the per-stage progress of a running import.

Policy, as in Glance: ``GET /v2/tasks`` and ``GET /v2/tasks/{id}`` are the tasks API, which
``tasks_api_access`` guards as a whole (administrators only by default), then ``get_tasks`` /
``get_task``; ``GET /v2/images/{id}/tasks`` is an image call, guarded by ``get_image``. An
administrator sees every task; anyone else only the tasks their project owns.
``GET /v2/tasks`` lists Glance's task stubs (no ``input``, ``result``, ``message``, nor
imageport's ``attempts`` and ``stages``; with ``image_id`` and ``error_code``), filtered by
``status`` and ``type``, sorted by ``sort_key`` (``created_at`` by default, ``updated_at``,
``status``, ``type``, ``id``) and ``sort_dir`` (``desc`` by default; ``id`` breaks ties), and
paged by ``limit`` and ``marker`` as the image list is: keyset paging in SQL, so pages stay
consistent while tasks are added.
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
from imageport.records import Task, repository, task_to_dict
from imageport.records.serialize import task_stub_to_dict

router = APIRouter(tags=["tasks"])


@router.get("/v2/tasks")
def list_tasks(
    request: Request,
    ctx: Ctx,
    who: Caller,
    limit: Annotated[int | None, Query(ge=0)] = None,
    marker: Opt = None,
    sort_key: Annotated[str, Query()] = "created_at",
    sort_dir: Annotated[str, Query()] = "desc",
    status: Opt = None,
    task_type: Annotated[str | None, Query(alias="type")] = None,
) -> dict[str, Any]:
    """List the tasks the caller may see, filtered, sorted and paged as in Glance."""
    _tasks_api(ctx, who, "get_tasks", access.caller_target(who))
    if sort_dir not in ("asc", "desc"):
        raise bad_request(f"sort direction {sort_dir!r} is neither asc nor desc")
    size = page_size(limit)
    with ctx.services.db.session() as session:
        tasks = repository.list_tasks(
            session,
            owners=_owners(who),
            status=status,
            task_type=task_type,
            sort_key=sort_key,
            ascending=sort_dir == "asc",
            after=None if marker is None else _marker(session, marker, who),
            limit=size + 1,  # one more row than a page tells whether there is a next one
        )
        stubs = [task_stub_to_dict(task) for task in tasks[:size]]
    links = page_links(request, "/v2/tasks", stubs, more=len(tasks) > size)
    return {"tasks": stubs, "schema": "/v2/schemas/tasks", **links}


@router.get("/v2/images/{image_id}/tasks")
def image_tasks(image_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The image's import tasks, newest first (its owner or an administrator)."""
    with ctx.services.db.session() as session:
        image = access.permitted_image(session, image_id, who, ctx.policy, "get_image")
        # On top of Glance's get_image: an import's input (its URL) is for the owner's eyes.
        access.check_owner(image, who)
        tasks = repository.list_tasks(session, image_id=image.id)
        return {
            "tasks": [task_to_dict(t, repository.stage_runs(session, t.id)) for t in tasks],
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
        return task_to_dict(task, repository.stage_runs(session, task.id))


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
    """The task, if ``who`` may see it (the rule of ``_owners``, which the list applies in SQL)."""
    task, owners = session.get(Task, task_id), _owners(who)
    if task is None or (owners is not None and task.owner not in owners):
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
        raise bad_request(f"marker {marker!r} is not a task id") from None
    task = _visible_task(session, marker, who)
    if task is None:
        raise bad_request(f"marker {marker} is not a task you can see")
    return task

"""Tasks: ``GET /v2/images/{id}/tasks`` and ``GET /v2/tasks/{id}``.

Glance's task fields, plus imageport's documented extras: ``error_code`` (the stable code of
the failure), ``attempts`` (deliveries so far) and ``stages`` — one entry per stage and
attempt with ``stage``, ``status``, ``attempt``, ``started_at``, ``finished_at``,
``bytes_done``, ``bytes_total``, ``error_code``, ``error_message`` and ``output`` — which is
the per-stage progress of a running import.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from imageport.api import access
from imageport.api.auth import Caller
from imageport.api.deps import Ctx
from imageport.api.errors import ApiError
from imageport.records import Task, repository, task_to_dict

router = APIRouter(tags=["tasks"])


@router.get("/v2/images/{image_id}/tasks")
def image_tasks(image_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The image's import tasks, newest first (its owner or an administrator)."""
    with ctx.services.db.session() as session:
        image = access.owned_image(session, image_id, who)
        tasks = repository.list_tasks(session, image_id=image.id)
        return {
            "tasks": [task_to_dict(t, repository.stage_runs(session, t.id)) for t in tasks],
        }


@router.get("/v2/tasks/{task_id}")
def show_task(task_id: str, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """One task (its owner or an administrator)."""
    with ctx.services.db.session() as session:
        task = session.get(Task, task_id)
        if task is None or not (who.is_admin or (who.project_id and task.owner == who.project_id)):
            raise ApiError(404, f"no task found with id {task_id}")
        return task_to_dict(task, repository.stage_runs(session, task.id))

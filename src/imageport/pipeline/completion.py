"""How a job ends well: the task's success record and the removal of its working files."""

from __future__ import annotations

import shutil

from sqlalchemy.orm import Session

from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.outputs import ActivatedOutput
from imageport.records import TaskStatus, repository


def finish_task(session: Session, ctx: JobContext, result: ActivatedOutput) -> None:
    """Mark the task a success with its result (in the caller's fenced transaction)."""
    repository.set_task_status(
        session,
        ctx.task_id,
        expected=TaskStatus.PROCESSING,
        new=TaskStatus.SUCCESS,
        message="",
        result=result.as_json(),
        expires_at=ctx.expires_at(),
    )


def remove_work_dirs(ctx: JobContext, services: Services) -> None:
    """Delete the task's staging and scratch directories, and its remote staged objects."""
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    shutil.rmtree(ctx.scratch_dir, ignore_errors=True)
    # A glance-direct job adopted the image's upload, which keeps its own name remotely.
    upload_of = ctx.image_id if ctx.request.method == "glance-direct" else None
    services.staging.discard_job(ctx.task_id, upload_of=upload_of)

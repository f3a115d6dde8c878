"""Stage ``activate``: write the image's final fields, locations and status ``active``."""

from __future__ import annotations

import shutil
from typing import Any

from sqlalchemy.orm import Session

from imageport.pipeline.context import JobContext, Services
from imageport.records import ImageStatus, TaskStatus, repository
from imageport.records.states import IN_FLIGHT

NAME = "activate"

#: Glance's reserved properties for import bookkeeping.
IMPORTING_TO_STORES = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
IMPORT_TASK = "os_glance_import_task"


def run(ctx: JobContext, services: Services) -> dict[str, Any]:
    """Activate the image and finish the task in one transaction, then clean staging."""
    copied = ctx.outputs["copy"]
    inspected = ctx.outputs["inspect"]
    converted = ctx.outputs["convert"]
    virtual_size = converted.get("virtual_size") or inspected["virtual_size"]
    result = {
        "image_id": ctx.image_id,
        "stores": [loc["store_id"] for loc in copied["locations"]],
        "failed_stores": copied["failed_stores"],
    }
    with services.db.session() as session:
        ctx.fence(session)  # only the lease holder may activate: never twice, never stale
        repository.replace_locations(
            session,
            ctx.image_id,
            [(loc["store_id"], loc["url"], loc["metadata"]) for loc in copied["locations"]],
        )
        repository.set_properties(
            session,
            ctx.image_id,
            {IMPORTING_TO_STORES: "", FAILED_IMPORT: ",".join(copied["failed_stores"])},
        )
        repository.set_image_status(
            session,
            ctx.image_id,
            expected=IN_FLIGHT,
            new=ImageStatus.ACTIVE,
            checksum=copied["md5"],
            os_hash_algo=copied["hash_algo"],
            os_hash_value=copied["hash_value"],
            size=copied["size"],
            virtual_size=virtual_size,
            disk_format=converted["format"],
            # "bare" once a compressed upload was unpacked; else what the request declared.
            container_format=ctx.outputs["stage"].get(
                "container_format", ctx.request.container_format
            ),
        )
        finish_task(session, ctx, result)
    remove_work_dirs(ctx, services)
    return result


def finish_task(session: Session, ctx: JobContext, result: dict[str, Any]) -> None:
    """Mark the task a success with its result (in the caller's fenced transaction)."""
    repository.set_task_status(
        session,
        ctx.task_id,
        expected=TaskStatus.PROCESSING,
        new=TaskStatus.SUCCESS,
        message="",
        result=result,
        expires_at=ctx.expires_at(),
    )


def remove_work_dirs(ctx: JobContext, services: Services) -> None:
    """Delete the task's staging and scratch directories, and its remote staged objects."""
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    shutil.rmtree(ctx.scratch_dir, ignore_errors=True)
    # A glance-direct job adopted the image's upload, which keeps its own name remotely.
    upload_of = ctx.image_id if ctx.request.method == "glance-direct" else None
    services.staging.discard_job(ctx.task_id, upload_of=upload_of)

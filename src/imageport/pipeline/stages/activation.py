"""Stage ``activate``: write the image's final fields, locations and status ``active``."""

from __future__ import annotations

from imageport.pipeline.completion import finish_task, remove_work_dirs
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.failures import drop_import_task
from imageport.pipeline.outputs import (
    ActivatedOutput,
    ConvertedOutput,
    CopiedOutput,
    InspectedOutput,
    StagedOutput,
)
from imageport.pipeline.stages.base import BaseStage
from imageport.records import ImageStatus, repository
from imageport.records.reserved import FAILED_IMPORT, IMPORTING_TO_STORES
from imageport.records.states import IN_FLIGHT


class Activation(BaseStage):
    """The ``activate`` stage of an import."""

    name = "activate"
    output_type = ActivatedOutput

    def run(self, ctx: JobContext, services: Services) -> ActivatedOutput:
        """Activate the image and finish the task in one transaction, then clean staging.

        The stores written leave ``os_glance_importing_to_stores``; those that failed are
        listed in ``os_glance_failed_import``; ``os_glance_import_task`` is removed, as Glance
        removes it when an import ends.
        """
        copied = ctx.output(CopiedOutput)
        converted = ctx.output(ConvertedOutput)
        virtual_size = converted.virtual_size or ctx.output(InspectedOutput).virtual_size
        result = ActivatedOutput(
            image_id=ctx.image_id,
            stores=[loc.store_id for loc in copied.locations],
            failed_stores=copied.failed_stores,
        )
        with services.db.session() as session:
            ctx.fence(session)  # only the lease holder may activate: never twice, never stale
            repository.replace_locations(
                session,
                ctx.image_id,
                [(loc.store_id, loc.url, loc.metadata) for loc in copied.locations],
            )
            repository.set_properties(
                session,
                ctx.image_id,
                {IMPORTING_TO_STORES: "", FAILED_IMPORT: ",".join(copied.failed_stores)},
            )
            repository.set_image_status(
                session,
                ctx.image_id,
                expected=IN_FLIGHT,
                new=ImageStatus.ACTIVE,
                checksum=copied.md5,
                os_hash_algo=copied.hash_algo,
                os_hash_value=copied.hash_value,
                size=copied.size,
                virtual_size=virtual_size,
                disk_format=converted.format,
                # "bare" once a compressed upload was unpacked; else what the request declared.
                container_format=ctx.output(StagedOutput).container_format,
            )
            drop_import_task(session, ctx.image_id, ctx.task_id)  # Glance drops its lock
            finish_task(session, ctx, result)
        remove_work_dirs(ctx, services)
        return result


STAGE = Activation()

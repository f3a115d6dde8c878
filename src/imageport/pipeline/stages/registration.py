"""Stage ``activate`` of copy-image: add the new locations; the image stays ``active``.

As in Glance, the stores just written leave ``os_glance_importing_to_stores``, the ones that
failed join ``os_glance_failed_import`` (earlier failures of other stores are kept), and
``os_glance_import_task`` is removed.
"""

from __future__ import annotations

from imageport.pipeline.completion import finish_task, remove_work_dirs
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.failures import drop_import_task
from imageport.pipeline.outputs import ActivatedOutput, ReplicatedOutput
from imageport.pipeline.stages.base import BaseStage
from imageport.records import repository
from imageport.records.reserved import FAILED_IMPORT, IMPORTING_TO_STORES


class Registration(BaseStage):
    """The ``activate`` stage of copy-image."""

    name = "activate"
    output_type = ActivatedOutput

    def run(self, ctx: JobContext, services: Services) -> ActivatedOutput:
        """Record the new locations and finish the task in one transaction."""
        copied = ctx.output(ReplicatedOutput)
        targets = set(ctx.target_store_ids)
        failed_now = list(copied.failed_stores)
        result = ActivatedOutput(
            image_id=ctx.image_id,
            stores=[loc.store_id for loc in copied.locations],
            failed_stores=failed_now,
        )
        with services.db.session() as session:
            ctx.fence(session)  # only the lease holder records the new locations
            image = repository.get_image(session, ctx.image_id)
            props = {p.name: p.value for p in image.properties}
            for loc in copied.locations:
                # Idempotent when this stage runs twice: replace, never duplicate, the location.
                repository.remove_locations(session, ctx.image_id, store_id=loc.store_id)
                repository.add_location(
                    session,
                    ctx.image_id,
                    store_id=loc.store_id,
                    url=loc.url,
                    metadata=loc.metadata,
                )
            importing = [s for s in _split(props.get(IMPORTING_TO_STORES)) if s not in targets]
            failed = [s for s in _split(props.get(FAILED_IMPORT)) if s not in targets] + failed_now
            repository.set_property(session, ctx.image_id, IMPORTING_TO_STORES, ",".join(importing))
            repository.set_property(session, ctx.image_id, FAILED_IMPORT, ",".join(failed))
            drop_import_task(session, ctx.image_id, ctx.task_id)  # Glance drops its lock
            finish_task(session, ctx, result)
        remove_work_dirs(ctx, services)
        return result


STAGE = Registration()


def _split(value: str | None) -> list[str]:
    return [s for s in (value or "").split(",") if s]

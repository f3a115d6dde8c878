"""The ``copy-image`` method: copy an active image to more stores, as a task.

:func:`submit_copy` records the task; the runner walks
:data:`imageport.pipeline.stages.COPY_IMAGE_STAGES` — ``copy`` (read one
existing location once, write every new store, verify the hashes) and ``activate`` (add the new
locations; the image stays ``active`` throughout).
"""

from __future__ import annotations

from imageport.errors import InvalidRequest
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import Submitted
from imageport.pipeline.request import ImportRequest
from imageport.records import Image, ImageStatus, repository
from imageport.records.reserved import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO_STORES


def submit_copy(
    services: Services,
    image_id: str,
    stores: list[str] | None,
    *,
    all_stores: bool = False,
    all_stores_must_succeed: bool = True,
) -> Submitted:
    """Record a pending copy-image task for an active image; the caller enqueues it.

    ``all_stores`` targets every writable store that does not hold the image yet.

    Raises:
        InvalidRequest: unknown or read-only store, nothing to copy, image not active.
        NotFound: no image with this id.
    """
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        targets = _targets(services, image, stores or [], all_stores=all_stores)
        request = ImportRequest(
            method="copy-image",
            source=image_id,
            disk_format=image.disk_format or "raw",
            container_format=image.container_format or "bare",
            stores=tuple(targets),
            all_stores_must_succeed=all_stores_must_succeed,
        )
        task = repository.create_task(
            session,
            image_id=image_id,
            input={"image_id": image_id, "request": request.model_dump(mode="json")},
            owner=image.owner,
        )
        repository.set_property(session, image_id, IMPORT_TASK, task.id)
        # As Glance does when a flow starts: the targets are importing, and no longer failed.
        props = {p.name: p.value for p in image.properties}
        importing = _split(props.get(IMPORTING_TO_STORES))
        failed = [s for s in _split(props.get(FAILED_IMPORT)) if s not in targets]
        joined = ",".join(importing + [s for s in targets if s not in importing])
        repository.set_property(session, image_id, IMPORTING_TO_STORES, joined)
        repository.set_property(session, image_id, FAILED_IMPORT, ",".join(failed))
        return Submitted(image_id=image_id, task_id=task.id)


def _targets(services: Services, image: Image, stores: list[str], *, all_stores: bool) -> list[str]:
    if image.status != ImageStatus.ACTIVE:
        raise InvalidRequest(f"image {image.id} is {image.status}; only active images are copied")
    held = {loc.store_id for loc in image.locations}
    unknown = [s for s in stores if s not in services.stores]
    if unknown:
        raise InvalidRequest(
            f"unknown store {', '.join(unknown)}; configured: {', '.join(services.stores)}"
        )
    if all_stores:
        stores = [s for s, store in services.stores.items() if not store.read_only]
    read_only = [s for s in stores if services.stores[s].read_only]
    if read_only:
        raise InvalidRequest(f"store {', '.join(read_only)} is read-only")
    targets = [s for s in dict.fromkeys(stores) if s not in held]
    if not targets:
        raise InvalidRequest(
            f"image {image.id} is already in {', '.join(sorted(held)) or 'no store'}; "
            "name a store that does not hold it (--store ID) or use --all-stores"
        )
    return targets


def _split(value: str | None) -> list[str]:
    return [s for s in (value or "").split(",") if s]

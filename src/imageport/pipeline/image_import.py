"""Start an import for an image that already exists (the API's ``POST /v2/images/ID/import``).

``submit_import`` creates a new image; here the image was created by the API and is in the
status the import method needs. Recording the task, the reserved ``os_glance_*`` properties and
the move to ``importing`` happens in one transaction, the status change being compare-and-set,
so two concurrent import calls cannot both start.
"""

from __future__ import annotations

from imageport.errors import InvalidRequest
from imageport.pipeline.activation import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO_STORES
from imageport.pipeline.context import Services
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.submit import Submitted
from imageport.records import ImageStatus, repository


def check_stores(services: Services, stores: tuple[str, ...]) -> list[str]:
    """The target stores (the default store when none is named).

    Raises:
        InvalidRequest: an unknown or read-only store.
    """
    targets = list(dict.fromkeys(stores)) or [services.settings.default_store]
    unknown = [s for s in targets if s not in services.stores]
    if unknown:
        raise InvalidRequest(
            f"unknown store {', '.join(unknown)}; configured: {', '.join(services.stores)}"
        )
    read_only = [s for s in targets if services.stores[s].read_only]
    if read_only:
        raise InvalidRequest(f"store {', '.join(read_only)} is read-only")
    return targets


def import_existing(
    services: Services,
    image_id: str,
    request: ImportRequest,
    *,
    expected: ImageStatus,
    status: ImageStatus = ImageStatus.IMPORTING,
) -> Submitted:
    """Record a pending import task for ``image_id`` and move the image to ``status``.

    ``status`` is ``importing`` for an import; a ``PUT /file`` upload keeps its image
    ``saving`` (``expected`` and ``status`` both), as Glance shows it until it is active.

    Raises:
        InvalidRequest: unknown or read-only store.
        StateConflict: the image is no longer in ``expected``.
        NotFound: no image with this id.
    """
    stores = check_stores(services, request.stores)
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        task = repository.create_task(
            session,
            image_id=image_id,
            input={"image_id": image_id, "request": request.model_dump(mode="json")},
            owner=image.owner,
        )
        if status == expected:  # PUT /file: saving before the task, saving during it
            repository.keep_image_status(session, image_id, expected=expected)
        else:
            repository.set_image_status(session, image_id, expected=expected, new=status)
        repository.set_property(session, image_id, IMPORT_TASK, task.id)
        repository.set_property(session, image_id, IMPORTING_TO_STORES, ",".join(stores))
        repository.set_property(session, image_id, FAILED_IMPORT, "")
        return Submitted(image_id=image_id, task_id=task.id)

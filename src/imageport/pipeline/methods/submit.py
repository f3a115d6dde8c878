"""Ask for an import: record the task (and the image, for a new one) for a worker to run.

:func:`submit_import` creates a new image with its task (the CLI's ``imageport import``);
:func:`import_existing` starts an import for an image the API created already
(``POST /v2/images/ID/import`` and ``PUT /file``). Recording the task, the reserved
``os_glance_*`` properties and the move to ``importing`` happens in one transaction, the status
change being compare-and-set, so two concurrent import calls cannot both start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imageport.errors import InvalidRequest
from imageport.pipeline.context import Services
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.safety.urlpolicy import parse_url
from imageport.records import ImageStatus, repository
from imageport.records.models import FORWARDED_TOKEN
from imageport.records.reserved import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO_STORES


@dataclass(frozen=True)
class Submitted:
    """The ids of a new import."""

    image_id: str
    task_id: str


def submit_import(
    services: Services,
    request: ImportRequest,
    *,
    name: str | None = None,
    owner: str | None = None,
) -> Submitted:
    """Record a new image (``importing``) and a pending task; the caller enqueues the task.

    Raises:
        InvalidRequest: unknown store, or a local source that is not a readable file.
    """
    stores = list(request.stores) or [services.settings.default_store]
    unknown = [s for s in stores if s not in services.stores]
    if unknown:
        raise InvalidRequest(
            f"unknown store {', '.join(unknown)}; configured: {', '.join(services.stores)}"
        )
    if request.method == "web-download":
        parse_url(request.source)  # syntax and userinfo now; the worker vets the address
    if request.method == "local-file" and not Path(request.source).is_file():
        raise InvalidRequest(f"{request.source} is not a file: check the path")
    with services.db.session() as session:
        image = repository.create_image(
            session,
            name=name,
            disk_format=request.disk_format,
            container_format=request.container_format,
            owner=owner if owner is not None else services.settings.owner,
        )
        task = repository.create_task(
            session,
            image_id=image.id,
            input={"image_id": image.id, "request": request.model_dump(mode="json")},
            owner=image.owner,
        )
        repository.set_property(session, image.id, IMPORT_TASK, task.id)
        repository.set_property(session, image.id, IMPORTING_TO_STORES, ",".join(stores))
        repository.set_image_status(
            session, image.id, expected=ImageStatus.QUEUED, new=ImageStatus.IMPORTING
        )
        return Submitted(image_id=image.id, task_id=task.id)


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
    forwarded_token: str | None = None,
) -> Submitted:
    """Record a pending import task for ``image_id`` and move the image to ``status``.

    ``status`` is ``importing`` for an import; a ``PUT /file`` upload keeps its image
    ``saving`` (``expected`` and ``status`` both), as Glance shows it until it is active.
    ``forwarded_token`` (glance-download in keystone mode: the caller's own token) is kept
    for the worker under ``FORWARDED_TOKEN``, which no serializer shows.

    Raises:
        InvalidRequest: unknown or read-only store.
        StateConflict: the image is no longer in ``expected``.
        NotFound: no image with this id.
    """
    stores = check_stores(services, request.stores)
    with services.db.session() as session:
        image = repository.get_image(session, image_id)
        task_input: dict[str, object] = {
            "image_id": image_id,
            "request": request.model_dump(mode="json"),
        }
        if forwarded_token is not None:
            task_input[FORWARDED_TOKEN] = forwarded_token
        task = repository.create_task(
            session, image_id=image_id, input=task_input, owner=image.owner
        )
        if status == expected:  # PUT /file: saving before the task, saving during it
            repository.keep_image_status(session, image_id, expected=expected)
        else:
            repository.set_image_status(session, image_id, expected=expected, new=status)
        repository.set_property(session, image_id, IMPORT_TASK, task.id)
        repository.set_property(session, image_id, IMPORTING_TO_STORES, ",".join(stores))
        repository.set_property(session, image_id, FAILED_IMPORT, "")
        return Submitted(image_id=image_id, task_id=task.id)

"""Create an image and its import task: what the CLI (and later the API) calls to ask for one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imageport.errors import InvalidRequest
from imageport.pipeline.activation import IMPORT_TASK, IMPORTING_TO_STORES
from imageport.pipeline.context import Services
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.urlpolicy import parse_url
from imageport.records import ImageStatus, repository


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

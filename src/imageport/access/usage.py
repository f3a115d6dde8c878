"""What a project uses of Glance's unified limits, counted from the records as Glance counts.

Each reader is one aggregate query (``glance/db/sqlalchemy/api.py``, ``user_get_*``):

* ``image_size_total`` — the bytes of the project's images once per location that holds
  them (Glance's ``size * locations``), over images with a size that are not ``killed`` or
  ``deleted``, in whole MiB (rounded down, as Glance does). An image stored in two stores
  counts twice: it takes twice the space.
* ``image_stage_total`` — the bytes of the project's images whose data waits in staging:
  ``uploading`` (``PUT /stage`` records the staged size on the image, as Glance does) and
  ``importing``, plus images a copy-image is still copying (``os_glance_importing_to_stores``
  not empty), in whole MiB.
* ``image_count_total`` — the project's images that are not ``killed`` or ``deleted``.
* ``image_count_uploading`` — the project's images in ``saving``, ``uploading`` or
  ``importing``, plus those a copy-image is copying.

The queries are read-only aggregates that define the quotas, so they live beside the limits
rather than in the repository, which owns the writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from imageport.access.limits import (
    IMAGE_COUNT_TOTAL,
    IMAGE_COUNT_UPLOADING,
    IMAGE_SIZE_TOTAL,
    IMAGE_STAGE_TOTAL,
)
from imageport.records import Image, ImageLocation, ImageMember, ImageProperty, ImageStatus
from imageport.records.reserved import IMPORTING_TO_STORES

MIB = 1024 * 1024
#: Statuses whose images no longer count (Glance: ``killed`` and ``deleted``).
GONE = (ImageStatus.KILLED, ImageStatus.DELETED)
#: Statuses of an image whose data is being received or imported (Glance's list).
UPLOADING = (ImageStatus.SAVING, ImageStatus.UPLOADING, ImageStatus.IMPORTING)
#: Statuses of an image whose data waits in staging (Glance's list).
STAGED = (ImageStatus.UPLOADING, ImageStatus.IMPORTING)
#: A location Glance no longer counts.
DELETED_LOCATION = "deleted"


def _copying() -> ColumnElement[bool]:
    """The image is not gone and a copy-image is still writing to some store."""
    return and_(
        Image.status.not_in(GONE),
        exists().where(
            ImageProperty.image_id == Image.id,
            ImageProperty.name == IMPORTING_TO_STORES,
            ImageProperty.value != "",
        ),
    )


def storage_mib(session: Session, project_id: str) -> int:
    """MiB of image data the project stores: size once per location (Glance's count)."""
    statement = (
        select(func.coalesce(func.sum(Image.size), 0))
        .select_from(Image)
        .join(ImageLocation, ImageLocation.image_id == Image.id)
        .where(
            Image.owner == project_id,
            Image.size > 0,
            Image.status.not_in(GONE),
            ImageLocation.status != DELETED_LOCATION,
        )
    )
    return int(session.scalar(statement) or 0) // MIB


def staging_mib(session: Session, project_id: str) -> int:
    """MiB of the project's data waiting in staging (staged uploads, imports, copies)."""
    statement = select(func.coalesce(func.sum(Image.size), 0)).where(
        Image.owner == project_id,
        Image.size > 0,
        or_(Image.status.in_(STAGED), _copying()),
    )
    return int(session.scalar(statement) or 0) // MIB


def image_count(session: Session, project_id: str) -> int:
    """How many images the project owns (not killed or deleted)."""
    statement = select(func.count(Image.id)).where(
        Image.owner == project_id, Image.status.not_in(GONE)
    )
    return int(session.scalar(statement) or 0)


def uploading_count(session: Session, project_id: str) -> int:
    """How many of the project's images are being uploaded, imported or copied."""
    statement = select(func.count(Image.id)).where(
        Image.owner == project_id,
        or_(Image.status.in_(UPLOADING), _copying()),
    )
    return int(session.scalar(statement) or 0)


def member_count(session: Session, image_id: str) -> int:
    """How many members the image has, whatever their status (Glance's member quota)."""
    statement = (
        select(func.count()).select_from(ImageMember).where(ImageMember.image_id == image_id)
    )
    return int(session.scalar(statement) or 0)


#: The reader of each unified limit.
READERS: Mapping[str, Callable[[Session, str], int]] = {
    IMAGE_SIZE_TOTAL: storage_mib,
    IMAGE_STAGE_TOTAL: staging_mib,
    IMAGE_COUNT_TOTAL: image_count,
    IMAGE_COUNT_UPLOADING: uploading_count,
}


def reader(session: Session) -> Callable[[str, Sequence[str]], Mapping[str, int]]:
    """A :data:`~imageport.access.limits.UsageReader` over ``session``.

    The enforcer calls it only for the limits it needs, so an unlimited one costs no query.
    """

    def usage(project_id: str, names: Sequence[str]) -> Mapping[str, int]:
        return {name: READERS[name](session, project_id) for name in names}

    return usage

"""Reading and writing records: plain functions that take the caller's session first.

Nothing here commits: the caller's ``Database.session()`` block is the transaction. Status
changes are compare-and-set: the UPDATE names the statuses the caller expects, and a row that
has moved on under us raises :class:`~imageport.errors.StateConflict` instead of being
overwritten. Each ``expected → new`` pair is first checked against the state machine, so an
illegal transition is an error before anything is written.

This module is long (over 400 lines) on purpose: it is the one place SQL is written for the
image, task and stage-run tables, so that every status change goes through the same
compare-and-set helpers; splitting it by table would split those helpers from their callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from sqlalchemy import CursorResult, delete, insert, select, update

from imageport.errors import InvalidRequest, NotFound, StateConflict
from imageport.records.base import utcnow
from imageport.records.models import (
    FORWARDED_TOKEN,
    TASK_TYPE_IMPORT,
    Image,
    ImageLocation,
    ImageProperty,
    ImageTag,
    StageRun,
    Task,
)
from imageport.records.paging import rows_after
from imageport.records.states import (
    ImageStatus,
    StageStatus,
    TaskStatus,
    Visibility,
    check_transition,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping
    from datetime import datetime
    from enum import StrEnum

    from sqlalchemy.orm import Session
    from sqlalchemy.sql.dml import Update

S = TypeVar("S", bound="StrEnum")

#: Image columns that ``update_image`` and ``set_image_status(**fields)`` may write.
IMAGE_FIELDS: frozenset[str] = frozenset(column.key for column in Image.__table__.columns) - {
    "id",
    "status",
    "created_at",
    "updated_at",
}


# Images


def create_image(
    session: Session,
    *,
    image_id: str | None = None,
    name: str | None,
    disk_format: str | None,
    container_format: str | None,
    owner: str | None = None,
    visibility: str = Visibility.SHARED,
    protected: bool = False,
    os_hidden: bool = False,
    min_disk: int = 0,
    min_ram: int = 0,
    tags: Iterable[str] = (),
    properties: Mapping[str, str] | None = None,
) -> Image:
    """Add a ``queued`` image with its tags and extra properties, and return it (flushed).

    Raises:
        InvalidRequest: if ``visibility`` is not one of Glance's four.
    """
    try:
        checked_visibility = Visibility(visibility)
    except ValueError:
        raise InvalidRequest(f"visibility must be one of {', '.join(Visibility)}") from None
    image = Image(
        name=name,
        status=ImageStatus.QUEUED,
        visibility=checked_visibility,
        protected=protected,
        os_hidden=os_hidden,
        owner=owner,
        disk_format=disk_format,
        container_format=container_format,
        min_disk=min_disk,
        min_ram=min_ram,
        tags=[ImageTag(value=tag) for tag in sorted(set(tags))],
        properties=[ImageProperty(name=k, value=v) for k, v in (properties or {}).items()],
    )
    if image_id is not None:
        image.id = image_id
    session.add(image)
    session.flush()
    return image


def get_image(session: Session, image_id: str) -> Image:
    """Return the image.

    Raises:
        NotFound: if there is no image with this id.
    """
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    return image


def list_images(session: Session, *, status: str | None = None) -> list[Image]:
    """Return the images, newest first, optionally only those in ``status``.

    Raises:
        InvalidRequest: if ``status`` is not an image status.
    """
    query = select(Image).order_by(Image.created_at.desc(), Image.id)
    if status is not None:
        query = query.where(Image.status == _status_filter(ImageStatus, status))
    return list(session.scalars(query))


def update_image(session: Session, image_id: str, **fields: object) -> Image:
    """Set non-status columns of an image and bump ``updated_at``; return the image.

    Raises:
        InvalidRequest: for ``status`` (use :func:`set_image_status`) or an unknown column.
        NotFound: if there is no image with this id.
    """
    _check_image_fields(fields)
    image = get_image(session, image_id)
    for key, value in fields.items():
        setattr(image, key, value)
    image.updated_at = utcnow()
    session.flush()
    return image


def set_image_status(
    session: Session,
    image_id: str,
    *,
    expected: ImageStatus | Collection[ImageStatus],
    new: ImageStatus,
    **fields: object,
) -> None:
    """Move an image from one of the ``expected`` statuses to ``new``, setting ``fields`` too.

    Raises:
        IllegalTransition: if some ``expected → new`` is not an edge; nothing is written.
        StateConflict: if the image is in none of the ``expected`` statuses.
        NotFound: if there is no image with this id.
        InvalidRequest: if ``fields`` names ``status`` or an unknown column.
    """
    _check_image_fields(fields)
    olds = _expected_statuses(ImageStatus, expected, new)
    statement = (
        update(Image)
        .where(Image.id == image_id, Image.status.in_(olds))
        .values(status=new, updated_at=utcnow(), **fields)
    )
    if _rowcount(session, statement) == 0:
        _image_conflict(session, image_id, olds, new)


def keep_image_status(session: Session, image_id: str, *, expected: ImageStatus) -> None:
    """Make sure the image is still ``expected`` and keep it so until the transaction ends.

    A conditional UPDATE (of ``updated_at``), like :func:`set_image_status`: it takes the
    row's lock, so a concurrent change (a delete) either lands before and is seen, or waits.

    Raises:
        StateConflict: if the image is no longer ``expected``.
        NotFound: if there is no image with this id.
    """
    statement = (
        update(Image)
        .where(Image.id == image_id, Image.status == expected)
        .values(updated_at=utcnow())
    )
    if _rowcount(session, statement) == 0:
        _image_conflict(session, image_id, [expected], expected)


def _image_conflict(
    session: Session, image_id: str, olds: list[ImageStatus], new: ImageStatus
) -> NoReturn:
    """Raise why a conditional update of the image's status matched no row."""
    current = session.scalar(select(Image.status).where(Image.id == image_id))
    if current is None:
        raise NotFound(f"image {image_id} not found")
    raise StateConflict(_conflict("image", image_id, current, olds, new))


def set_property(session: Session, image_id: str, name: str, value: str) -> None:
    """Add or replace one extra property of an image.

    Raises:
        NotFound: if there is no image with this id.
    """
    set_properties(session, image_id, {name: value})


def set_properties(session: Session, image_id: str, values: Mapping[str, str]) -> None:
    """Set several properties of the image at once (one flush).

    Raises:
        NotFound: if there is no image with this id.
    """
    image = get_image(session, image_id)
    existing = {prop.name: prop for prop in image.properties}
    for name, value in values.items():
        if name in existing:
            existing[name].value = value
        else:
            image.properties.append(ImageProperty(name=name, value=value))
    image.updated_at = utcnow()
    session.flush()


def replace_locations(
    session: Session, image_id: str, locations: Iterable[tuple[str, str, Mapping[str, Any]]]
) -> None:
    """Make ``locations`` (store id, URL, metadata) the image's only locations (one flush).

    Raises:
        NotFound: if there is no image with this id.
    """
    image = get_image(session, image_id)
    image.locations = [
        ImageLocation(store_id=store_id, url=url, meta_data=dict(metadata))
        for store_id, url, metadata in locations
    ]
    image.updated_at = utcnow()
    session.flush()


def delete_property(session: Session, image_id: str, name: str) -> None:
    """Remove one extra property of an image; nothing happens if it is not set.

    Raises:
        NotFound: if there is no image with this id.
    """
    image = get_image(session, image_id)
    kept = [prop for prop in image.properties if prop.name != name]
    if len(kept) != len(image.properties):
        image.properties = kept
        image.updated_at = utcnow()
        session.flush()


def add_location(
    session: Session, image_id: str, *, store_id: str, url: str, metadata: Mapping[str, Any]
) -> ImageLocation:
    """Record that ``store_id`` holds the image's data at ``url``; return the location.

    Raises:
        NotFound: if there is no image with this id.
    """
    image = get_image(session, image_id)
    location = ImageLocation(store_id=store_id, url=url, meta_data=dict(metadata))
    image.locations.append(location)
    image.updated_at = utcnow()
    session.flush()
    return location


def remove_locations(session: Session, image_id: str, *, store_id: str | None = None) -> None:
    """Delete the image's locations in ``store_id``, or all of them when it is None.

    Raises:
        NotFound: if there is no image with this id.
    """
    image = get_image(session, image_id)
    image.locations = [
        location
        for location in image.locations
        if store_id is not None and location.store_id != store_id
    ]
    image.updated_at = utcnow()
    session.flush()


def remove_location(session: Session, location_id: int) -> None:
    """Delete one location row by its id; nothing happens if it is gone already.

    By id, not by image or store: a deletion removes exactly the rows whose data it deleted,
    never one a concurrent job recorded meanwhile.
    """
    session.execute(delete(ImageLocation).where(ImageLocation.id == location_id))


def deleted_with_locations(session: Session) -> list[str]:
    """Ids of deleted images that still record a location: stored data left to delete."""
    statement = (
        select(ImageLocation.image_id)
        .join(Image, Image.id == ImageLocation.image_id)
        .where(Image.status == ImageStatus.DELETED)
        .distinct()
    )
    return list(session.scalars(statement))


#: Names per DELETE … IN (…): well under every database's limit on bound parameters.
_IN_BATCH = 500


def lock_image(session: Session, image_id: str) -> None:
    """Hold the image's row lock until the transaction ends (``SELECT … FOR UPDATE``).

    Taken before reading an image that is then rewritten as a whole (a JSON patch), so two
    such writers cannot interleave; SQLite, which has one writer at a time, ignores it.
    """
    session.execute(select(Image.id).where(Image.id == image_id).with_for_update())


def write_image_changes(
    session: Session,
    image_id: str,
    *,
    fields: Mapping[str, object],
    set_properties: Mapping[str, str],
    removed_properties: Collection[str],
    added_tags: Collection[str],
    removed_tags: Collection[str],
) -> None:
    """Write a whole set of changes to an image in a few statements, whatever their number.

    One UPDATE of the image row (``fields`` and ``updated_at``), one DELETE and one INSERT of
    the properties set or removed, the same for the tags. The ORM objects already loaded in
    ``session`` are not updated: read the image again (``populate_existing``) afterwards.

    Raises:
        InvalidRequest: if ``fields`` names ``status`` or an unknown column.
    """
    _check_image_fields(fields)
    session.execute(update(Image).where(Image.id == image_id).values(updated_at=utcnow(), **fields))
    # A changed property is replaced (deleted, then inserted), so one INSERT covers all.
    gone = sorted({*removed_properties, *set_properties})
    for start in range(0, len(gone), _IN_BATCH):
        batch = gone[start : start + _IN_BATCH]
        session.execute(
            delete(ImageProperty).where(
                ImageProperty.image_id == image_id, ImageProperty.name.in_(batch)
            )
        )
    if set_properties:
        rows = [{"image_id": image_id, "name": k, "value": v} for k, v in set_properties.items()]
        session.execute(insert(ImageProperty), rows)
    if removed_tags:
        session.execute(
            delete(ImageTag).where(ImageTag.image_id == image_id, ImageTag.value.in_(removed_tags))
        )
    if added_tags:
        session.execute(insert(ImageTag), [{"image_id": image_id, "value": t} for t in added_tags])


def record_staged_size(session: Session, image_id: str, size: int) -> bool:
    """Record the bytes a ``PUT /stage`` left in staging, while the image is ``uploading``.

    Glance records the staged size on the image; its staging quota sums it. Returns whether
    the image was still ``uploading`` (a deleted or expired image is left alone).
    """
    statement = (
        update(Image)
        .where(Image.id == image_id, Image.status == ImageStatus.UPLOADING)
        .values(size=size, updated_at=utcnow())
    )
    return _rowcount(session, statement) == 1


def stale_uploads(session: Session, before: datetime) -> list[str]:
    """Ids of images ``uploading`` and unchanged since ``before``: staged, never imported."""
    statement = select(Image.id).where(
        Image.status == ImageStatus.UPLOADING, Image.updated_at < before
    )
    return list(session.scalars(statement.order_by(Image.updated_at)))


def expire_upload(session: Session, image_id: str, before: datetime) -> bool:
    """Put an image whose staged upload expired back to ``queued``, without a size.

    Compare-and-set on the status *and* ``updated_at``: an upload that finished, or an
    import that started, since the image was found stale is left alone. Returns whether the
    image was expired.
    """
    check_transition(ImageStatus, ImageStatus.UPLOADING, ImageStatus.QUEUED)
    statement = (
        update(Image)
        .where(
            Image.id == image_id,
            Image.status == ImageStatus.UPLOADING,
            Image.updated_at < before,
        )
        .values(status=ImageStatus.QUEUED, size=None, updated_at=utcnow())
    )
    return _rowcount(session, statement) == 1


# Tasks


def create_task(
    session: Session,
    *,
    image_id: str,
    input: Mapping[str, Any],  # noqa: A002 - Glance's field name
    owner: str | None = None,
    task_type: str = TASK_TYPE_IMPORT,
) -> Task:
    """Add a ``pending`` task for an image and return it (flushed).

    Raises:
        NotFound: if there is no image with this id.
    """
    get_image(session, image_id)
    task = Task(
        type=task_type, status=TaskStatus.PENDING, input=dict(input), owner=owner, image_id=image_id
    )
    session.add(task)
    session.flush()
    return task


def get_task(session: Session, task_id: str) -> Task:
    """Return the task.

    Raises:
        NotFound: if there is no task with this id.
    """
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


#: What ``list_tasks`` sorts by (Glance's task sort keys); ``id`` always breaks ties.
TASK_SORT_KEYS = ("created_at", "updated_at", "status", "type", "id")


def list_tasks(
    session: Session,
    *,
    status: str | None = None,
    image_id: str | None = None,
    owners: Collection[str] | None = None,
    task_type: str | None = None,
    sort_key: str = "created_at",
    ascending: bool = False,
    after: Task | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Return the tasks, newest first unless told otherwise; filtering and paging are SQL.

    Args:
        session: the session.
        status: only tasks in this status.
        image_id: only the tasks of this image.
        owners: only tasks owned by one of these projects (None: any owner; empty: none).
        task_type: only tasks of this type.
        sort_key: one of ``TASK_SORT_KEYS``; ``id`` breaks ties, in the same direction.
        ascending: sort ascending instead of descending.
        after: keyset paging: only the tasks that come strictly after this one in that order,
            so a page stays the same while tasks are added.
        limit: at most this many tasks (None: all).

    Raises:
        InvalidRequest: if ``status`` is not a task status or ``sort_key`` not a sort key.
    """
    if sort_key not in TASK_SORT_KEYS:
        raise InvalidRequest(
            f"cannot sort tasks by {sort_key!r}; sort keys: {', '.join(TASK_SORT_KEYS)}"
        )
    column = getattr(Task, sort_key)
    keys = [column] if sort_key == "id" else [column, Task.id]
    query = select(Task).order_by(*(key.asc() if ascending else key.desc() for key in keys))
    if status is not None:
        query = query.where(Task.status == _status_filter(TaskStatus, status))
    if image_id is not None:
        query = query.where(Task.image_id == image_id)
    if owners is not None:
        query = query.where(Task.owner.in_(list(owners)))
    if task_type is not None:
        query = query.where(Task.type == task_type)
    if after is not None:
        query = query.where(rows_after([(key, getattr(after, key.key), ascending) for key in keys]))
    return list(session.scalars(query.limit(limit)))


def set_task_status(
    session: Session,
    task_id: str,
    *,
    expected: TaskStatus | Collection[TaskStatus],
    new: TaskStatus,
    message: str | None = None,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    expires_at: datetime | None = None,
) -> None:
    """Move a task from one of the ``expected`` statuses to ``new``; None leaves a field as is.

    Raises:
        IllegalTransition: if some ``expected → new`` is not an edge; nothing is written.
        StateConflict: if the task is in none of the ``expected`` statuses.
        NotFound: if there is no task with this id.
    """
    olds = _expected_statuses(TaskStatus, expected, new)
    optional = {
        "message": message,
        "result": result,
        "error_code": error_code,
        "expires_at": expires_at,
    }
    values = {key: value for key, value in optional.items() if value is not None}
    statement = (
        update(Task)
        .where(Task.id == task_id, Task.status.in_(olds))
        .values(status=new, updated_at=utcnow(), **values)
    )
    if _rowcount(session, statement) == 0:
        current = session.scalar(select(Task.status).where(Task.id == task_id))
        if current is None:
            raise NotFound(f"task {task_id} not found")
        raise StateConflict(_conflict("task", task_id, current, olds, new))
    if new in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
        _forget_forwarded_token(session, task_id)


def _forget_forwarded_token(session: Session, task_id: str) -> None:
    """Empty the caller's token an ended task kept for its worker (glance-download).

    The key stays, set to None: the worker of a retried task must not fall back to another
    token (see ``imageport.pipeline.methods.glance_download.task_token``).
    """
    stored = session.scalar(select(Task.input).where(Task.id == task_id))
    if stored and stored.get(FORWARDED_TOKEN) is not None:
        forgotten = {**stored, FORWARDED_TOKEN: None}
        session.execute(update(Task).where(Task.id == task_id).values(input=forgotten))


# Stage runs


def open_stage_run(session: Session, task_id: str, stage: str, *, attempt: int) -> int:
    """Add the ``running`` row of attempt ``attempt`` at ``stage``; return its id.

    The worker's hot path: one INSERT … RETURNING, no ORM object (a job starts six of these
    per import). The (task, stage, attempt) unique constraint refuses a number used twice.
    """
    statement = (
        insert(StageRun)
        .values(
            task_id=task_id,
            stage=stage,
            status=StageStatus.RUNNING,
            attempt=attempt,
            started_at=utcnow(),
            bytes_done=0,
        )
        .returning(StageRun.id)
    )
    return int(session.execute(statement).scalar_one())


def update_stage_progress(
    session: Session, run_id: int, *, bytes_done: int, bytes_total: int | None = None
) -> None:
    """Record a stage run's progress in one UPDATE (``bytes_total`` only when given).

    Raises:
        NotFound: if there is no stage run with this id.
    """
    values: dict[str, Any] = {"bytes_done": bytes_done}
    if bytes_total is not None:
        values["bytes_total"] = bytes_total
    statement = update(StageRun).where(StageRun.id == run_id).values(**values)
    if _rowcount(session, statement) == 0:
        raise NotFound(f"stage run {run_id} not found")


def finish_stage_run(
    session: Session,
    run_id: int,
    *,
    status: StageStatus,
    output: Mapping[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """End a stage run as ``done``, ``failed`` or ``skipped``, with its output or error.

    Raises:
        IllegalTransition: if the run's current status cannot move to ``status``.
        StateConflict: if the run's status changed between reading and writing it.
        NotFound: if there is no stage run with this id.
    """
    # A run ends from running: one conditional UPDATE, and a read only to explain a refusal.
    olds = _expected_statuses(StageStatus, StageStatus.RUNNING, status)
    statement = (
        update(StageRun)
        .where(StageRun.id == run_id, StageRun.status.in_(olds))
        .values(
            status=status,
            finished_at=utcnow(),
            output=dict(output) if output is not None else None,
            error_code=error_code,
            error_message=error_message,
        )
    )
    if _rowcount(session, statement) == 1:
        return
    run = session.get(StageRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"stage run {run_id} not found")
    _expected_statuses(StageStatus, run.status, status)  # IllegalTransition, e.g. done → failed
    raise StateConflict(f"stage run {run_id} is no longer running but {run.status}")


def stage_runs(session: Session, task_id: str) -> list[StageRun]:
    """Return every stage run of the task, in the order they were started."""
    query = select(StageRun).where(StageRun.task_id == task_id).order_by(StageRun.id)
    return list(session.scalars(query))


def latest_stage_runs(session: Session, task_id: str) -> dict[str, StageRun]:
    """Return the latest attempt of each stage of the task, keyed by stage name."""
    query = (
        select(StageRun).where(StageRun.task_id == task_id).order_by(StageRun.attempt, StageRun.id)
    )
    # Later attempts come last and overwrite earlier ones.
    return {run.stage: run for run in session.scalars(query)}


# Helpers


def _check_image_fields(fields: Mapping[str, object]) -> None:
    if "status" in fields:
        raise InvalidRequest("status changes go through set_image_status")
    unknown = sorted(set(fields) - IMAGE_FIELDS)
    if unknown:
        raise InvalidRequest(f"images have no writable field {', '.join(unknown)}")


def _status_filter(kind: type[S], value: str) -> S:
    try:
        return kind(value)
    except ValueError:
        raise InvalidRequest(f"status must be one of {', '.join(kind)}") from None


def _expected_statuses(kind: type[S], expected: S | str | Collection[S], new: S) -> list[S]:
    """Return the expected statuses as a list, after checking each edge to ``new``."""
    olds = [expected] if isinstance(expected, str) else list(expected)
    members = [kind(old) for old in olds]
    if not members:
        raise ValueError("expected names no status")
    for old in members:
        check_transition(kind, old, new)
    return members


def _rowcount(session: Session, statement: Update) -> int:
    result = cast("CursorResult[Any]", session.execute(statement))
    return result.rowcount


def _conflict(noun: str, record_id: str, current: StrEnum, olds: list[S], new: S) -> str:
    wanted = " or ".join(str(old) for old in olds)
    return f"{noun} {record_id} is {current}, not {wanted}: cannot set it to {new}"

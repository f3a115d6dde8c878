"""The tables: images with their tags, locations, properties and members; tasks; stage runs.

The image columns follow the Image API v2 image (see DESIGN.md, "The image record"). A task is
one import (Glance's ``api_image_import`` task) with imageport's lease and retry columns; a
stage run is one attempt at one pipeline stage of a task, with its progress and output.

Statuses are stored as their string values (``StrEnumType``), not as native database enums, so
migrations stay plain ``VARCHAR`` changes on every database. An image's tags, properties and
locations are loaded together with the image (``selectin``), so an image can be serialized
after its session has closed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from imageport.records.base import Base, utcnow
from imageport.records.states import (
    ImageStatus,
    MemberStatus,
    StageStatus,
    TaskStatus,
    Visibility,
)

#: Status of a location that serves the image's bytes (Glance also knows "pending_delete").
LOCATION_ACTIVE = "active"
#: Glance's task type for an image import.
TASK_TYPE_IMPORT = "api_image_import"


def new_id() -> str:
    """Return a fresh random UUID as text, the form of every image and task id."""
    return str(uuid.uuid4())


class Image(Base):
    """An image record: the Image API v2 image, less its data."""

    __tablename__ = "images"
    #: The image list's default order (newest first) and its name order, so a page is an
    #: index range from its marker (api/listing.py; tests/integration/test_catalog_indexes.py).
    __table_args__ = (
        Index("ix_images_created_at_id", "created_at", "id"),
        Index("ix_images_name_order", text("coalesce(name, '')"), "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[ImageStatus] = mapped_column(default=ImageStatus.QUEUED, index=True)
    #: Glance's default since Image API v2.5.
    visibility: Mapped[Visibility] = mapped_column(default=Visibility.SHARED)
    protected: Mapped[bool] = mapped_column(default=False)
    os_hidden: Mapped[bool] = mapped_column(default=False)
    owner: Mapped[str | None] = mapped_column(String(255))
    #: MD5 hex digest of the image data (Glance's legacy checksum).
    checksum: Mapped[str | None] = mapped_column(String(32))
    os_hash_algo: Mapped[str | None] = mapped_column(String(64))
    os_hash_value: Mapped[str | None] = mapped_column(String(128))
    #: Bytes of image data in the stores.
    size: Mapped[int | None] = mapped_column(BigInteger)
    #: Bytes of the virtual disk the image describes.
    virtual_size: Mapped[int | None] = mapped_column(BigInteger)
    disk_format: Mapped[str | None] = mapped_column(String(32))
    container_format: Mapped[str | None] = mapped_column(String(32))
    #: GB of disk and MB of RAM needed to boot the image.
    min_disk: Mapped[int] = mapped_column(default=0)
    min_ram: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None]

    tags: Mapped[list[ImageTag]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin"
    )
    locations: Mapped[list[ImageLocation]] = relationship(
        back_populates="image",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="ImageLocation.id",
    )
    properties: Mapped[list[ImageProperty]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin"
    )
    members: Mapped[list[ImageMember]] = relationship(
        back_populates="image", cascade="all, delete-orphan"
    )
    #: The image's import tasks, oldest first; read-only (tasks are written on their own).
    tasks: Mapped[list[Task]] = relationship(viewonly=True, order_by="Task.created_at")

    def __repr__(self) -> str:
        return f"<Image {self.id} {self.status}>"


class ImageTag(Base):
    """One tag of an image."""

    __tablename__ = "image_tags"
    #: The list's tag filter looks images up by tag value.
    __table_args__ = (Index("ix_image_tags_value", "value", "image_id"),)

    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    value: Mapped[str] = mapped_column(String(255), primary_key=True)

    image: Mapped[Image] = relationship(back_populates="tags")


class ImageLocation(Base):
    """Where one store keeps the image's data: a URL plus store-specific metadata."""

    __tablename__ = "image_locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    store_id: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text)
    # ``metadata`` is taken by the declarative class; the column keeps Glance's name.
    meta_data: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default=LOCATION_ACTIVE)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="locations")


class ImageProperty(Base):
    """One free-form extra property of an image (including Glance's ``os_glance_*``)."""

    __tablename__ = "image_properties"
    #: The list's property filters look images up by value. A hash index on PostgreSQL: a
    #: btree refuses values over ~2.7 KB, and Glance allows 65,535 characters.
    __table_args__ = (Index("ix_image_properties_value", "value", postgresql_using="hash"),)

    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    image: Mapped[Image] = relationship(back_populates="properties")


class ImageMember(Base):
    """A project an image is shared with, and its answer."""

    __tablename__ = "image_members"

    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[MemberStatus] = mapped_column(default=MemberStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    image: Mapped[Image] = relationship(back_populates="members")


#: The key of a task's ``input`` holding a credential its worker needs: glance-download's
#: caller's own token (keystone mode). Task serializers never show it; it is emptied (None)
#: when the task ends (``repository.set_task_status``).
FORWARDED_TOKEN = "forwarded_token"  # noqa: S105 - the name of a key, not a secret


class Task(Base):
    """An import task: Glance's task fields plus imageport's lease and retry bookkeeping."""

    __tablename__ = "tasks"
    #: The pending tasks of one project, oldest first: the fair-share pick walks the
    #: distinct owners of pending tasks and each one's oldest task on this index.
    __table_args__ = (Index("ix_tasks_pending_fifo", "status", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(64), default=TASK_TYPE_IMPORT)
    status: Mapped[TaskStatus] = mapped_column(default=TaskStatus.PENDING, index=True)
    input: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    message: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(255))
    # A purged image keeps its tasks' history; the link is cleared.
    image_id: Mapped[str | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), index=True
    )
    #: When a finished task may be purged (Glance's task_time_to_live).
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Stable code of the error that failed the task (``PipelineError.code``).
    error_code: Mapped[str | None] = mapped_column(String(64))
    #: How many times a worker has started this task.
    attempts: Mapped[int] = mapped_column(default=0)
    #: The worker holding the task, and until when; renewed by its heartbeat.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    #: Set by ``imageport retry --from-stage``: the runner re-runs this stage and all after it.
    restart_stage: Mapped[str | None] = mapped_column(String(32))

    image: Mapped[Image | None] = relationship(viewonly=True)
    stage_runs: Mapped[list[StageRun]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="StageRun.id",
    )

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.status}>"


class StageRun(Base):
    """One attempt at one stage of a task: its status, progress, error and output."""

    __tablename__ = "stage_runs"
    __table_args__ = (UniqueConstraint("task_id", "stage", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    status: Mapped[StageStatus] = mapped_column(default=StageStatus.PENDING)
    #: 1 for the first run of a stage in a task, then 2, 3, … for each retry.
    attempt: Mapped[int] = mapped_column(default=1)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    task: Mapped[Task] = relationship(back_populates="stage_runs")

    def __repr__(self) -> str:
        return f"<StageRun {self.task_id} {self.stage}#{self.attempt} {self.status}>"

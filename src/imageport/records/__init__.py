"""Image and task records: models, state machine, repository functions, migrations.

Open a :class:`Database`, call ``upgrade()`` once at start, and read or write through the
functions of :mod:`imageport.records.repository` inside ``with database.session() as s:``.
"""

from __future__ import annotations

from imageport.records import repository
from imageport.records.base import Base, TZDateTime, utcnow
from imageport.records.db import Database
from imageport.records.models import (
    Image,
    ImageLocation,
    ImageMember,
    ImageProperty,
    ImageTag,
    StageRun,
    Task,
)
from imageport.records.serialize import image_to_dict, task_to_dict
from imageport.records.states import (
    ImageStatus,
    MemberStatus,
    StageStatus,
    TaskStatus,
    Visibility,
    allowed_transitions,
    check_transition,
)

__all__ = [
    "Base",
    "Database",
    "Image",
    "ImageLocation",
    "ImageMember",
    "ImageProperty",
    "ImageStatus",
    "ImageTag",
    "MemberStatus",
    "StageRun",
    "StageStatus",
    "TZDateTime",
    "Task",
    "TaskStatus",
    "Visibility",
    "allowed_transitions",
    "check_transition",
    "image_to_dict",
    "repository",
    "task_to_dict",
    "utcnow",
]

"""Statuses of images, tasks, stage runs and members, and the edges allowed between them.

The image edges are Glance's. The task edges are Glance's (``pending → processing →
success | failure``) plus two of imageport's own, marked below: the reaper puts a task whose
lease expired back to ``pending``, and an admin retry moves a failed task back to ``pending``.
Every status change in imageport goes through :func:`check_transition` first.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from imageport.errors import IllegalTransition


class ImageStatus(StrEnum):
    """Status of an image, as the Image API v2 shows it."""

    QUEUED = "queued"
    SAVING = "saving"
    UPLOADING = "uploading"
    IMPORTING = "importing"
    ACTIVE = "active"
    DEACTIVATED = "deactivated"
    KILLED = "killed"
    DELETED = "deleted"
    PENDING_DELETE = "pending_delete"


class TaskStatus(StrEnum):
    """Status of an import task."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILURE = "failure"


class StageStatus(StrEnum):
    """Status of one attempt at one pipeline stage."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class Visibility(StrEnum):
    """Who may see an image."""

    PUBLIC = "public"
    PRIVATE = "private"
    SHARED = "shared"
    COMMUNITY = "community"


class MemberStatus(StrEnum):
    """A member project's answer to an image shared with it."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


#: A state machine: the set of allowed ``(old, new)`` status pairs.
Edges: TypeAlias = frozenset[tuple[StrEnum, StrEnum]]


def _edges(table: dict[StrEnum, set[StrEnum]]) -> Edges:
    return frozenset((old, new) for old, targets in table.items() for new in targets)


_I = ImageStatus
#: The statuses of an image whose data an import job is working on: ``importing`` for an
#: import (``POST /import``), ``saving`` for a classic ``PUT /file`` upload, as in Glance.
IN_FLIGHT = (ImageStatus.IMPORTING, ImageStatus.SAVING)
#: The statuses of an image whose uploaded bytes wait in the staging area for their job:
#: ``uploading`` (``PUT /stage``, until ``POST /import``) and ``saving`` (``PUT /file``).
RECEIVING = (ImageStatus.UPLOADING, ImageStatus.SAVING)
#: Glance's image state machine (glance/domain/__init__.py).
IMAGE_TRANSITIONS: Edges = _edges(
    {
        _I.QUEUED: {_I.SAVING, _I.UPLOADING, _I.IMPORTING, _I.ACTIVE, _I.DELETED},
        _I.SAVING: {_I.ACTIVE, _I.KILLED, _I.DELETED, _I.QUEUED},
        _I.UPLOADING: {_I.IMPORTING, _I.QUEUED, _I.DELETED},
        _I.IMPORTING: {_I.ACTIVE, _I.DELETED, _I.QUEUED},
        _I.ACTIVE: {_I.PENDING_DELETE, _I.DELETED, _I.DEACTIVATED},
        _I.KILLED: {_I.DELETED},
        _I.PENDING_DELETE: {_I.DELETED},
        _I.DEACTIVATED: {_I.ACTIVE, _I.DELETED},
    }
)

_T = TaskStatus
#: Glance's task state machine, plus imageport's two ways back to ``pending``:
#: ``processing → pending`` is the reaper requeueing a task whose worker lease expired, and
#: ``failure → pending`` is an admin retry (``imageport retry``).
TASK_TRANSITIONS: Edges = _edges(
    {
        _T.PENDING: {_T.PROCESSING, _T.FAILURE},
        _T.PROCESSING: {_T.SUCCESS, _T.FAILURE, _T.PENDING},
        _T.FAILURE: {_T.PENDING},
    }
)

_S = StageStatus
#: One stage attempt: it runs, then ends done, failed or skipped (its output already existed).
#: A retried stage gets a new row with the next attempt number; rows never go back.
STAGE_TRANSITIONS: Edges = _edges(
    {
        _S.PENDING: {_S.RUNNING, _S.SKIPPED},
        _S.RUNNING: {_S.DONE, _S.FAILED, _S.SKIPPED},
    }
)

#: The transition table and the noun used in messages, per status enum.
_MACHINES: dict[type[StrEnum], tuple[str, Edges]] = {
    ImageStatus: ("image", IMAGE_TRANSITIONS),
    TaskStatus: ("task", TASK_TRANSITIONS),
    StageStatus: ("stage", STAGE_TRANSITIONS),
}


def _machine(kind: type[StrEnum]) -> tuple[str, Edges]:
    try:
        return _MACHINES[kind]
    except KeyError:
        raise TypeError(f"{kind.__name__} has no state machine") from None


def _member(kind: type[StrEnum], noun: str, value: StrEnum | str) -> StrEnum:
    try:
        return kind(value)
    except ValueError:
        raise IllegalTransition(f"{noun} status {value!r} does not exist") from None


def check_transition(kind: type[StrEnum], old: StrEnum | str, new: StrEnum | str) -> None:
    """Refuse a status change that is not an edge of ``kind``'s state machine.

    Args:
        kind: ``ImageStatus``, ``TaskStatus`` or ``StageStatus``.
        old: the current status (a member or its string value).
        new: the wanted status (a member or its string value).

    Raises:
        IllegalTransition: if ``old → new`` is not an edge, or either is not a status of
            ``kind`` ("image status cannot go from active to uploading").
        TypeError: if ``kind`` has no state machine.
    """
    noun, edges = _machine(kind)
    old_member, new_member = _member(kind, noun, old), _member(kind, noun, new)
    if (old_member, new_member) not in edges:
        raise IllegalTransition(f"{noun} status cannot go from {old_member} to {new_member}")


def allowed_transitions(kind: type[StrEnum], old: StrEnum | str) -> frozenset[StrEnum]:
    """Return the statuses ``old`` may move to (empty for a final status).

    Raises:
        IllegalTransition: if ``old`` is not a status of ``kind``.
        TypeError: if ``kind`` has no state machine.
    """
    noun, edges = _machine(kind)
    old_member = _member(kind, noun, old)
    return frozenset(new for start, new in edges if start == old_member)

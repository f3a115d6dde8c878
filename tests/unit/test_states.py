"""The state machines of images, tasks and stage runs."""

from __future__ import annotations

import itertools

import pytest

from imageport.errors import IllegalTransition, StateError
from imageport.records.states import (
    IMAGE_TRANSITIONS,
    STAGE_TRANSITIONS,
    TASK_TRANSITIONS,
    ImageStatus,
    StageStatus,
    TaskStatus,
    Visibility,
    allowed_transitions,
    check_transition,
)

# The edges as the design states them, written out independently of the module's tables.
IMAGE_EDGES = {
    "queued": {"saving", "uploading", "importing", "active", "deleted"},
    "saving": {"active", "killed", "deleted", "queued"},
    "uploading": {"importing", "queued", "deleted"},
    "importing": {"active", "deleted", "queued"},
    "active": {"pending_delete", "deleted", "deactivated"},
    "killed": {"deleted"},
    "pending_delete": {"deleted"},
    "deactivated": {"active", "deleted"},
}
TASK_EDGES = {
    "pending": {"processing", "failure"},
    "processing": {"success", "failure", "pending"},
    "failure": {"pending"},
}
STAGE_EDGES = {
    "pending": {"running", "skipped"},
    "running": {"done", "failed", "skipped"},
}
MACHINES = [
    (ImageStatus, IMAGE_EDGES, IMAGE_TRANSITIONS),
    (TaskStatus, TASK_EDGES, TASK_TRANSITIONS),
    (StageStatus, STAGE_EDGES, STAGE_TRANSITIONS),
]


def _pairs(edges):
    return {(old, new) for old, targets in edges.items() for new in targets}


@pytest.mark.parametrize(("kind", "edges", "table"), MACHINES)
def test_tables_are_exactly_the_designed_edges(kind, edges, table):
    assert {(str(old), str(new)) for old, new in table} == _pairs(edges)
    assert all(isinstance(old, kind) and isinstance(new, kind) for old, new in table)


@pytest.mark.parametrize(("kind", "edges", "table"), MACHINES)
def test_every_legal_edge_is_allowed(kind, edges, table):
    for old, new in _pairs(edges):
        check_transition(kind, old, new)
        check_transition(kind, kind(old), kind(new))


@pytest.mark.parametrize(("kind", "edges", "table"), MACHINES)
def test_every_other_pair_is_refused(kind, edges, table):
    legal = _pairs(edges)
    for old, new in itertools.product(kind, repeat=2):
        if (str(old), str(new)) in legal:
            continue
        with pytest.raises(IllegalTransition):
            check_transition(kind, old, new)


@pytest.mark.parametrize(
    ("kind", "old", "new"),
    [
        (ImageStatus, "active", "uploading"),
        (ImageStatus, "active", "queued"),
        (ImageStatus, "deleted", "active"),
        (ImageStatus, "killed", "queued"),
        (ImageStatus, "importing", "importing"),
        (ImageStatus, "uploading", "active"),
        (TaskStatus, "success", "pending"),
        (TaskStatus, "success", "failure"),
        (TaskStatus, "pending", "success"),
        (TaskStatus, "failure", "processing"),
        (StageStatus, "done", "running"),
        (StageStatus, "failed", "running"),
        (StageStatus, "pending", "done"),
    ],
)
def test_sample_illegal_edges_are_refused(kind, old, new):
    with pytest.raises(IllegalTransition) as caught:
        check_transition(kind, old, new)
    assert isinstance(caught.value, StateError)
    assert caught.value.code == "illegal_transition"


def test_message_names_the_machine_and_both_statuses():
    with pytest.raises(
        IllegalTransition, match=r"^image status cannot go from active to uploading$"
    ):
        check_transition(ImageStatus, ImageStatus.ACTIVE, ImageStatus.UPLOADING)
    with pytest.raises(IllegalTransition, match=r"^task status cannot go from success to pending$"):
        check_transition(TaskStatus, "success", "pending")
    with pytest.raises(IllegalTransition, match=r"^stage status cannot go from done to running$"):
        check_transition(StageStatus, "done", "running")


def test_unknown_status_is_refused():
    with pytest.raises(IllegalTransition, match="image status 'bogus' does not exist"):
        check_transition(ImageStatus, "bogus", "active")
    with pytest.raises(IllegalTransition, match="task status 'done' does not exist"):
        check_transition(TaskStatus, "pending", "done")


def test_enum_without_machine_is_a_type_error():
    with pytest.raises(TypeError, match="Visibility has no state machine"):
        check_transition(Visibility, "public", "private")


def test_allowed_transitions():
    assert allowed_transitions(ImageStatus, "active") == {
        ImageStatus.PENDING_DELETE,
        ImageStatus.DELETED,
        ImageStatus.DEACTIVATED,
    }
    assert allowed_transitions(TaskStatus, TaskStatus.SUCCESS) == frozenset()
    assert allowed_transitions(StageStatus, "running") == {"done", "failed", "skipped"}


def test_enum_values_are_glances():
    assert [str(s) for s in ImageStatus] == [
        "queued",
        "saving",
        "uploading",
        "importing",
        "active",
        "deactivated",
        "killed",
        "deleted",
        "pending_delete",
    ]
    assert [str(s) for s in TaskStatus] == ["pending", "processing", "success", "failure"]
    assert [str(s) for s in Visibility] == ["public", "private", "shared", "community"]

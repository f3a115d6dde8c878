"""The JSON schemas Glance serves under ``/v2/schemas`` (python-glanceclient builds on them).

glanceclient validates and diffs images with the ``image`` schema (through warlock), so its
property list, read-only markers and ``additionalProperties`` follow Glance's. As in Glance, the
``tasks`` collection lists task stubs: the ``task`` properties less the details a list leaves out.
"""

from __future__ import annotations

from typing import Any

from imageport.config import CONTAINER_FORMATS, DISK_FORMATS
from imageport.records import ImageStatus, MemberStatus, TaskStatus, Visibility
from imageport.records.serialize import TASK_DETAIL_FIELDS

_NULLABLE_STR: dict[str, Any] = {"type": ["null", "string"]}
_TIME: dict[str, Any] = {"type": "string", "readOnly": True}


def _image_properties() -> dict[str, Any]:
    return {
        "id": {
            "type": "string",
            "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
            "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$",
        },
        "name": {**_NULLABLE_STR, "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "enum": [str(s) for s in ImageStatus]},
        "visibility": {"type": "string", "enum": [str(v) for v in Visibility]},
        "protected": {"type": "boolean"},
        "os_hidden": {"type": "boolean"},
        "checksum": {**_NULLABLE_STR, "readOnly": True, "maxLength": 32},
        "os_hash_algo": {**_NULLABLE_STR, "readOnly": True, "maxLength": 64},
        "os_hash_value": {**_NULLABLE_STR, "readOnly": True, "maxLength": 128},
        "owner": {**_NULLABLE_STR, "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True},
        "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS]},
        "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS]},
        "created_at": _TIME,
        "updated_at": _TIME,
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "direct_url": {"type": "string", "readOnly": True},
        "min_ram": {"type": "integer", "minimum": 0},
        "min_disk": {"type": "integer", "minimum": 0},
        "self": {"type": "string", "readOnly": True},
        "file": {"type": "string", "readOnly": True},
        "stores": {"type": "string", "readOnly": True},
        "schema": {"type": "string", "readOnly": True},
        "locations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"url": {"type": "string"}, "metadata": {"type": "object"}},
                "required": ["url", "metadata"],
            },
        },
    }


def image_schema() -> dict[str, Any]:
    """The ``image`` schema."""
    return {
        "name": "image",
        "properties": _image_properties(),
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def _collection(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def member_schema() -> dict[str, Any]:
    """The ``member`` schema."""
    return {
        "name": "member",
        "properties": {
            "created_at": _TIME,
            "updated_at": _TIME,
            "image_id": {"type": "string"},
            "member_id": {"type": "string"},
            "schema": {"type": "string", "readOnly": True},
            "status": {"type": "string", "enum": [str(s) for s in MemberStatus]},
        },
    }


def task_schema() -> dict[str, Any]:
    """The ``task`` schema, with imageport's documented extras (``stages`` and friends)."""
    return {
        "name": "task",
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string", "enum": ["import", "api_image_import"]},
            "status": {"type": "string", "enum": [str(s) for s in TaskStatus]},
            "input": {"type": ["null", "object"]},
            "result": {"type": ["null", "object"]},
            "owner": {"type": ["null", "string"]},
            "message": {"type": "string"},
            "image_id": {"type": ["null", "string"]},
            "expires_at": {"type": ["null", "string"]},
            "created_at": _TIME,
            "updated_at": _TIME,
            "self": {"type": "string"},
            "schema": {"type": "string"},
            "error_code": {
                "type": ["null", "string"],
                "description": "imageport: stable code of the error that failed the task",
            },
            "attempts": {"type": "integer", "description": "imageport: deliveries so far"},
            "stages": {
                "type": "array",
                "description": "imageport: one entry per stage and attempt (stage, status, "
                "attempt, started_at, finished_at, bytes_done, bytes_total, error_code, "
                "error_message, output)",
                "items": {"type": "object"},
            },
        },
    }


def task_stub_schema() -> dict[str, Any]:
    """The ``task`` schema of a ``GET /v2/tasks`` entry: the task less its details."""
    task = task_schema()
    shown = {k: v for k, v in task["properties"].items() if k not in TASK_DETAIL_FIELDS}
    return {**task, "properties": shown}


def all_schemas() -> dict[str, dict[str, Any]]:
    """Every schema by the name it is served under."""
    image, member, task = image_schema(), member_schema(), task_schema()
    return {
        "image": image,
        "images": _collection("images", image),
        "member": member,
        "members": _collection("members", member),
        "task": task,
        "tasks": _collection("tasks", task_stub_schema()),
    }

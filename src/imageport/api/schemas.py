"""The JSON schemas Glance 33 serves under ``/v2/schemas`` (python-glanceclient builds on them).

The documents are Glance's own: the ``image`` schema is Glance's base properties (with their
descriptions and types) plus the properties of the ``schema-image.json`` Glance ships (marked
``"is_base": false``, as Glance marks them), ``additionalProperties`` of type string and the
``links``; ``images`` is its collection. ``member``, ``members``, ``task`` and ``tasks`` are
Glance's *minimal* forms (no ``additionalProperties``), as Glance serves them. The ``task``
schema adds imageport's documented extras (``error_code``, ``attempts``, ``stages``), each
described as imageport's; as in Glance, the ``tasks`` collection lists task stubs: the ``task``
properties less the details a list leaves out.

glanceclient validates images with the ``image`` schema (through warlock), so an image body
must fit it: every extra property is a string.
"""

from __future__ import annotations

import copy
from typing import Any

from imageport.config import CONTAINER_FORMATS, DISK_FORMATS

UUID_PATTERN = (
    "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
)
_PROPERTY_KEYS_DOC = "https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html"

#: The properties of the ``schema-image.json`` Glance ships (``/etc/glance``), which every
#: packaged Glance serves in its image schema; create and PATCH check their values.
CUSTOM_PROPERTIES: dict[str, dict[str, Any]] = {
    "kernel_id": {
        "type": ["null", "string"],
        "pattern": UUID_PATTERN,
        "description": "ID of image stored in Glance that should be used as the kernel when "
        "booting an AMI-style image.",
    },
    "ramdisk_id": {
        "type": ["null", "string"],
        "pattern": UUID_PATTERN,
        "description": "ID of image stored in Glance that should be used as the ramdisk when "
        "booting an AMI-style image.",
    },
    "instance_uuid": {
        "type": "string",
        "description": "Metadata which can be used to record which instance this image is "
        "associated with. (Informational only, does not create an instance snapshot.)",
    },
    "architecture": {
        "description": f"Operating system architecture as specified in {_PROPERTY_KEYS_DOC}",
        "type": "string",
    },
    "os_distro": {
        "description": "Common name of operating system distribution as specified in "
        + _PROPERTY_KEYS_DOC,
        "type": "string",
    },
    "os_version": {
        "description": "Operating system version as specified by the distributor.",
        "type": "string",
    },
    "description": {
        "description": "A human-readable string describing this image.",
        "type": "string",
    },
    "cinder_encryption_key_id": {
        "description": "Identifier in the OpenStack Key Management Service for the encryption "
        "key for the Block Storage Service to use when mounting a volume created from this "
        "image",
        "type": "string",
    },
    "cinder_encryption_key_deletion_policy": {
        "description": "States the condition under which the Image Service will delete the "
        "object associated with the 'cinder_encryption_key_id' image property.  If this "
        "property is missing, the Image Service will take no action",
        "type": "string",
        "enum": ["on_image_deletion", "do_not_delete"],
    },
}


def _string(description: str, **extra: Any) -> dict[str, Any]:  # noqa: ANN401
    return {"type": "string", "description": description, **extra}


def _read_only(kind: str | list[str], description: str, **extra: Any) -> dict[str, Any]:  # noqa: ANN401
    return {"type": kind, "readOnly": True, "description": description, **extra}


def _image_properties() -> dict[str, Any]:
    """Glance's ``get_base_properties()`` (glance/api/v2/images.py)."""
    nullable = ["null", "string"]
    return {
        "id": _string("An identifier for the image", pattern=UUID_PATTERN),
        "name": {"type": nullable, "description": "Descriptive name for the image",
                 "maxLength": 255},
        "status": _read_only("string", "Status of the image", enum=[
            "queued", "saving", "active", "killed", "deleted", "uploading", "importing",
            "pending_delete", "deactivated"]),
        "visibility": _string("Scope of image accessibility",
                              enum=["community", "public", "private", "shared"]),
        "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
        "os_hidden": {"type": "boolean", "description": "If true, image will not appear in "
                      "default image list response."},
        "checksum": _read_only(nullable, "md5 hash of image contents.", maxLength=32),
        "os_hash_algo": _read_only(nullable, "Algorithm to calculate the os_hash_value",
                                   maxLength=64),
        "os_hash_value": _read_only(nullable, "Hexdigest of the image contents using the "
                                    "algorithm specified by the os_hash_algo", maxLength=128),
        "owner": {"type": nullable, "description": "Owner of the image", "maxLength": 255},
        "size": _read_only(["null", "integer"], "Size of image file in bytes"),
        "virtual_size": _read_only(["null", "integer"], "Virtual size of image in bytes"),
        "container_format": {"type": nullable, "description": "Format of the container",
                             "enum": [None, *CONTAINER_FORMATS]},
        "disk_format": {"type": nullable, "description": "Format of the disk",
                        "enum": [None, *DISK_FORMATS]},
        "created_at": _read_only("string", "Date and time of image registration"),
        "updated_at": _read_only("string", "Date and time of the last image modification"),
        "tags": {"type": "array", "description": "List of strings related to the image",
                 "items": {"type": "string", "maxLength": 255}},
        "direct_url": _read_only("string", "URL to access the image file kept in external store"),
        "min_ram": {"type": "integer",
                    "description": "Amount of ram (in MB) required to boot image."},
        "min_disk": {"type": "integer",
                     "description": "Amount of disk space (in GB) required to boot image."},
        "self": _read_only("string", "An image self url"),
        "file": _read_only("string", "An image file url"),
        "stores": _read_only("string", "Store in which image data resides.  Only present when "
                             "the operator has enabled multiple stores.  May be a "
                             "comma-separated list of store identifiers."),
        "schema": _read_only("string", "An image schema url"),
        "locations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "maxLength": 255},
                    "metadata": {"type": "object"},
                    "validation_data": {
                        "description": "Values to be used to populate the corresponding image "
                        "properties. If the image status is not 'queued', values must exactly "
                        "match those already contained in the image properties.",
                        "type": "object",
                        "writeOnly": True,
                        "additionalProperties": False,
                        "properties": {
                            "checksum": {"type": "string", "minLength": 32, "maxLength": 32},
                            "os_hash_algo": {"type": "string", "maxLength": 64},
                            "os_hash_value": {"type": "string", "maxLength": 128},
                        },
                        "required": ["os_hash_algo", "os_hash_value"],
                    },
                },
                "required": ["url", "metadata"],
            },
            "description": "A set of URLs to access the image file kept in external store",
        },
    }  # fmt: skip


def image_schema() -> dict[str, Any]:
    """The ``image`` schema (Glance's ``PermissiveSchema.raw()``)."""
    custom = {name: {**spec, "is_base": False} for name, spec in CUSTOM_PROPERTIES.items()}
    return {
        "name": "image",
        "properties": {**_image_properties(), **copy.deepcopy(custom)},
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def _collection(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """Glance's ``CollectionSchema.raw()``."""
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def _minimal_collection(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """Glance's ``CollectionSchema.minimal()``."""
    return {
        "name": name,
        "properties": {name: {"type": "array", "items": item}, "schema": {"type": "string"}},
        "links": [{"rel": "describedby", "href": "{schema}"}],
    }


def member_schema() -> dict[str, Any]:
    """The ``member`` schema (Glance's ``Schema.minimal()``)."""
    return {
        "name": "member",
        "properties": {
            "member_id": _string("An identifier for the image member (tenantId)"),
            "image_id": _string("An identifier for the image", pattern=UUID_PATTERN),
            "created_at": _string("Date and time of image member creation"),
            "updated_at": _string("Date and time of last modification of image member"),
            "status": _string(
                "The status of this image member", enum=["pending", "accepted", "rejected"]
            ),
            "schema": {"readOnly": True, "type": "string"},
        },
    }


def _task_properties() -> dict[str, Any]:
    """Glance's ``_TASK_SCHEMA`` (glance/api/v2/tasks.py), then imageport's extras."""
    return {
        "id": _string("An identifier for the task", pattern=UUID_PATTERN),
        "type": _string("The type of task represented by this content",
                        enum=["import", "api_image_import", "location_import"]),
        "status": _string("The current status of this task",
                          enum=["pending", "processing", "success", "failure"]),
        "input": {"description": "The parameters required by task, JSON blob",
                  "type": ["null", "object"]},
        "result": {"description": "The result of current task, JSON blob",
                   "type": ["null", "object"]},
        "owner": _string("An identifier for the owner of this task"),
        "message": _string("Human-readable informative message only included when "
                           "appropriate (usually on failure)"),
        "image_id": _string("Image associated with the task"),
        "request_id": _string("Human-readable informative request-id"),
        "user_id": _string("User associated with the task"),
        "expires_at": {"description": "Datetime when this resource would be subject to removal",
                       "type": ["null", "string"]},
        "created_at": _string("Datetime when this resource was created"),
        "updated_at": _string("Datetime when this resource was updated"),
        "self": {"readOnly": True, "type": "string"},
        "schema": {"readOnly": True, "type": "string"},
        "error_code": {"type": ["null", "string"],
                       "description": "imageport: stable code of the error that failed the task"},
        "attempts": {"type": "integer", "description": "imageport: deliveries so far"},
        "stages": {
            "type": "array",
            "description": "imageport: one entry per stage and attempt (stage, status, attempt, "
            "started_at, finished_at, bytes_done, bytes_total, error_code, error_message, "
            "output)",
            "items": {"type": "object"},
        },
    }  # fmt: skip


def task_schema() -> dict[str, Any]:
    """The ``task`` schema (Glance's ``Schema.minimal()``), with imageport's extras."""
    return {"name": "task", "properties": _task_properties()}


#: What Glance's partial task schema leaves out (``input``, ``result``, ``message``), and
#: imageport's details a list leaves out too.
STUB_HIDDEN = frozenset({"input", "result", "message", "attempts", "stages"})


def task_stub_schema() -> dict[str, Any]:
    """The ``task`` schema of a ``GET /v2/tasks`` entry: the task less its details."""
    shown = {k: v for k, v in _task_properties().items() if k not in STUB_HIDDEN}
    return {"name": "task", "properties": shown}


def all_schemas() -> dict[str, dict[str, Any]]:
    """Every schema by the name it is served under."""
    member = member_schema()
    return {
        "image": image_schema(),
        "images": _collection("images", image_schema()),
        "member": member,
        "members": _minimal_collection("members", member),
        "task": task_schema(),
        "tasks": _minimal_collection("tasks", task_stub_schema()),
    }

"""``PATCH /v2/images/{id}``: Glance's JSON-patch media types applied to an image.

``application/openstack-images-v2.1-json-patch`` is RFC 6902 (``op``, ``path``, ``value``)
restricted to top-level paths; the deprecated v2.0 form (``{"replace": "/name", "value": …}``)
is accepted too. Operations are checked and applied to a copy of the image's state first, in
memory; the result is checked against the per-image quotas and then written at once (one
UPDATE of the image row, one DELETE and one INSERT each for the properties and the tags that
changed), so a patch of thousands of operations costs a handful of statements and holds the
image's row lock for milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from imageport.access.quotas import Quotas
from imageport.api import fields
from imageport.api.auth import Identity
from imageport.api.errors import bad_request, conflict, forbidden
from imageport.records import Image, ImageStatus, repository

MEDIA_TYPES = (
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
)
OPS = ("add", "replace", "remove")
#: Fields whose value may change only while the image has no data.
QUEUED_ONLY = ("disk_format", "container_format")


@dataclass
class Changes:
    """The image's writable state, changed by the operations."""

    core: dict[str, Any]
    tags: list[str]
    properties: dict[str, str]
    touched: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, image: Image) -> Changes:
        """The current state of ``image``."""
        return cls(
            core={name: getattr(image, name) for name in fields.CORE},
            tags=sorted(tag.value for tag in image.tags),
            properties={p.name: p.value for p in image.properties},
        )


def parse(body: object) -> list[tuple[str, str, Any]]:
    """The operations as ``(op, field, value)``; 400 for anything malformed."""
    if not isinstance(body, list):
        raise bad_request("a JSON patch is a list of operations")
    return [_operation(item) for item in body]


def _operation(item: object) -> tuple[str, str, Any]:
    if not isinstance(item, dict):
        raise bad_request("each patch operation is an object")
    op = item.get("op")
    path = item.get("path")
    if op is None:  # the v2.0 form names the operation as the key holding the path
        op = next((name for name in OPS if name in item), None)
        path = item.get(op) if op else None
    if op not in OPS or not isinstance(path, str) or not path.startswith("/"):
        raise bad_request("each operation needs op (add, replace or remove) and a /path")
    if op != "remove" and "value" not in item:
        raise bad_request(f"operation {op} on {path} needs a value")
    parts = path[1:].split("/")
    name = parts[0].replace("~1", "/").replace("~0", "~")  # JSON pointer escapes, RFC 6901
    if len(parts) > 1 and name != "locations":
        raise bad_request(f"path {path} is not a top-level attribute")
    return op, name, item.get("value")


def apply(
    image: Image, operations: list[tuple[str, str, Any]], who: Identity, max_tags: int
) -> Changes:
    """Apply the operations to a copy of the image's state; 400/403/409/413 on refusal."""
    changes = Changes.of(image)
    for op, name, value in operations:
        fields.check_writable(name, who)
        if name == "tags":
            _tags(changes, op, value, max_tags)
        elif name in fields.CORE:
            _core(changes, image, op, name, value)
        else:
            _property(changes, op, name, value)
    return changes


def _tags(changes: Changes, op: str, value: object, max_tags: int) -> None:
    changes.tags = [] if op == "remove" else fields.check_tags(value, max_tags)
    changes.touched.add("tags")


def _core(changes: Changes, image: Image, op: str, name: str, value: object) -> None:
    if op == "remove":
        raise forbidden(f"Attribute '{name}' is a core attribute and cannot be removed.")
    queued = image.status == ImageStatus.QUEUED
    if name in QUEUED_ONLY and not queued and value != getattr(image, name):
        raise forbidden(f"Attribute '{name}' can be only replaced for a queued image.")
    changes.core[name] = fields.check_core(name, value)
    changes.touched.add(name)


def _property(changes: Changes, op: str, name: str, value: object) -> None:
    exists = name in changes.properties
    if op == "remove":
        if not exists:
            raise conflict(f"Property {name} does not exist.", code="property_missing")
        del changes.properties[name]
    elif op == "replace" and not exists:
        raise conflict(f"Property {name} does not exist.", code="property_missing")
    else:
        changes.properties[name] = fields.check_property(name, value)
    changes.touched.add(name)


def save(session: Session, image: Image, changes: Changes, quotas: Quotas) -> Image:
    """Check the per-image quotas, then write ``changes`` at once; return the image as now.

    The image's row lock should be held since it was read (``repository.lock_image``), so the
    difference written is the difference to what is stored.

    Raises:
        OverQuota: the patch adds a property and the image would have more than
            ``max_image_properties`` (413).
    """
    stored = {prop.name: prop.value for prop in image.properties}
    # As Glance: the quota is enforced on a save that adds a property, so an image over a
    # lowered quota can still have properties replaced or removed.
    if changes.properties.keys() - stored.keys():
        quotas.check_properties(changes.properties)
    stored_tags = {tag.value for tag in image.tags}
    core = {
        name: changes.core[name]
        for name in changes.touched & fields.CORE
        if changes.core[name] != getattr(image, name)
    }
    repository.write_image_changes(
        session,
        image.id,
        fields=core,
        set_properties={k: v for k, v in changes.properties.items() if stored.get(k) != v},
        removed_properties=stored.keys() - changes.properties.keys(),
        added_tags=[tag for tag in changes.tags if tag not in stored_tags],
        removed_tags=stored_tags - set(changes.tags),
    )
    # The statements bypassed the ORM: read the row and its collections again.
    return session.get(Image, image.id, populate_existing=True) or image

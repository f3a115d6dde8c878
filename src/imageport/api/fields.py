"""Checks on the image fields a client may write, shared by create and PATCH.

Glance's rules: read-only fields are refused with 403, as are Glance's reserved ``os_glance_*``
properties; values of the wrong type or outside their enum are 400; too many tags is 413;
only an administrator gives an image to another owner. Who may make an image ``public`` or
``community`` is the policy's decision (``publicize_image``, ``communitize_image``), checked by
the routes before these checks' values are written.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from imageport.access.quotas import per_image_message
from imageport.api.auth import Identity
from imageport.api.errors import ApiError, bad_request, forbidden
from imageport.api.schemas import CUSTOM_PROPERTIES
from imageport.config import CONTAINER_FORMATS, DISK_FORMATS
from imageport.records import Visibility
from imageport.records.reserved import RESERVED_PREFIX

MAX_LENGTH = 255  # characters in a name, tag, owner or property name
MAX_PROPERTY_VALUE = 65535  # characters in an extra property's value (Glance's Text column)

#: Fields no client may write.
READ_ONLY = frozenset(
    {
        "status", "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
        "created_at", "updated_at", "self", "file", "schema", "direct_url", "locations",
        "stores", "deleted", "deleted_at",
    }
)  # fmt: skip
#: Read-only fields that creation accepts and drops, as Glance does (only PATCH refuses them
#: with 403), with the longest value the image schema allows.
IGNORED_AT_CREATION = {"os_hash_algo": 64, "os_hash_value": 128}
#: Core fields a client may write (besides ``id`` at creation and extra properties).
CORE = frozenset(
    {"name", "visibility", "protected", "os_hidden", "disk_format", "container_format",
     "min_disk", "min_ram", "owner"}
)  # fmt: skip


def check_id(value: object) -> str:
    """A client-supplied image id: a UUID in its canonical form (400 otherwise)."""
    try:
        return str(uuid.UUID(str(value))) if isinstance(value, str) else _bad_id(value)
    except ValueError:
        return _bad_id(value)


def _bad_id(value: object) -> str:
    raise bad_request(f"id {value!r} is not a UUID (nnnnnnnn-nnnn-nnnn-nnnn-nnnnnnnnnnnn)")


def check_writable(name: str, who: Identity) -> None:
    """Refuse a field that is read-only, reserved, or the owner for a non-administrator."""
    if name in READ_ONLY or name == "id":
        raise forbidden(f"Attribute '{name}' is read-only.")
    if name.startswith(RESERVED_PREFIX):
        raise forbidden(f"Attribute '{name}' is reserved.")
    if name == "owner" and not who.is_admin:
        raise forbidden("only an administrator may set an image's owner")


def check_ignored(name: str, value: object) -> None:
    """A field of IGNORED_AT_CREATION: null or a string the schema allows (400 otherwise)."""
    longest = IGNORED_AT_CREATION[name]
    if value is None or (isinstance(value, str) and len(value) <= longest):
        return
    raise bad_request(
        f"Provided object does not match schema 'image': {name} must be null or a string of "
        f"at most {longest} characters"
    )


def check_core(name: str, value: Any) -> Any:  # noqa: ANN401, C901
    """Validate one core field's value and return it as stored (400/403 on a bad value)."""
    if name in ("name", "owner"):
        if value is None or (isinstance(value, str) and len(value) <= MAX_LENGTH):
            return value
        raise bad_request(f"{name} must be a string of at most {MAX_LENGTH} characters or null")
    if name == "visibility":
        if value not in [str(v) for v in Visibility]:
            raise bad_request(f"visibility must be one of {', '.join(Visibility)}")
        return value
    if name in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise bad_request(f"{name} must be true or false")
        return value
    if name in ("disk_format", "container_format"):
        allowed = DISK_FORMATS if name == "disk_format" else CONTAINER_FORMATS
        if value is None or value in allowed:
            return value
        raise bad_request(f"{name} must be one of {', '.join(allowed)}")
    if name in ("min_disk", "min_ram"):
        # bool is an int in Python, not in JSON: refuse it explicitly.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            return value
        raise bad_request(f"{name} must be a non-negative integer")
    raise bad_request(f"unknown field {name}")


def check_property(name: str, value: object) -> str:
    """An extra property: a name of at most 255 characters and a string value."""
    if not name or len(name) > MAX_LENGTH:
        raise bad_request(f"property names are 1 to {MAX_LENGTH} characters")
    if not isinstance(value, str) or len(value) > MAX_PROPERTY_VALUE:
        raise bad_request(f"property {name!r} must be a string (extra properties are strings)")
    _check_schema_property(name, value)
    return value


def _check_schema_property(name: str, value: str) -> None:
    """A property the image schema defines (Glance's ``schema-image.json``) fits its rule.

    Glance validates the image against its schema, so ``kernel_id`` must look like a UUID and
    ``cinder_encryption_key_deletion_policy`` be one of its values (400 otherwise).
    """
    rule = CUSTOM_PROPERTIES.get(name)
    if rule is None:
        return
    pattern, allowed = rule.get("pattern"), rule.get("enum")
    if (pattern is not None and re.match(pattern, value) is None) or (
        allowed is not None and value not in allowed
    ):
        wanted = f"one of {', '.join(allowed)}" if allowed is not None else "a UUID"
        raise bad_request(
            f"Provided object does not match schema 'image': {value!r} is not valid for "
            f"{name!r}, which must be {wanted}"
        )


def check_tag(tag: object) -> str:
    """One tag: a string of at most 255 characters."""
    if not isinstance(tag, str) or not tag or len(tag) > MAX_LENGTH:
        raise bad_request(f"a tag is a non-empty string of at most {MAX_LENGTH} characters")
    return tag


def check_tags(value: object, limit: int) -> list[str]:
    """A tag list: unique strings (order kept), at most ``limit`` of them (413 otherwise)."""
    if not isinstance(value, list):
        raise bad_request("tags must be a list of strings")
    tags = list(dict.fromkeys(check_tag(tag) for tag in value))
    check_tag_count(len(tags), limit)
    return tags


def check_tag_count(count: int, limit: int) -> None:
    """Refuse more than ``limit`` tags with 413, Glance's quota answer."""
    if count > limit:
        hint = "Remove tags first, or ask the operator to raise max_image_tags."
        raise ApiError(413, per_image_message("tags", count, limit, hint), code="over_quota")

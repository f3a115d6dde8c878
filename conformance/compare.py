"""What is compared between Glance's and imageport's answers to one request.

* **status**: the HTTP status codes are equal.
* **shape**: the body's structure. A JSON body's shape is the JSON with every value replaced
  by its type (``str``, ``int``, ``float``, ``bool``, ``null``), recursively; a list by the
  shape of its first element (``[]`` when empty); dict keys compared as sets. imageport's
  own additions ``error_code``, ``stages`` and ``attempts`` are ignored wherever they occur.
  An error body (status >= 400) is reduced to its form: ``text`` (text/plain), ``html``
  (text/html) or ``json`` with its keys. Other bodies are ``bytes`` or ``empty``. A few
  requests also compare the presence of named response headers (``Content-Range``,
  ``Location``, ``OpenStack-image-import-methods`` …): a missing one is a shape difference.
* **items** (reported, not part of the two headline numbers): what a list answer holds, by
  name — the images' names in order, the members' ids and statuses, the stores' ids, the
  number of tasks, the versions and their statuses — and a download's bytes (their
  SHA-256). It tells a filter, a sort or a page that selects different images although the
  shape agrees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: imageport's documented additions to Glance's bodies, ignored wherever they occur.
IGNORED_KEYS = frozenset({"error_code", "stages", "attempts"})


@dataclass
class Answer:
    """One server's answer to one request, reduced to what is compared and reported."""

    status: int
    content_type: str
    shape: Any
    items: Any
    headers: dict[str, str] = field(default_factory=dict)
    excerpt: str = ""
    json: Any = None


def media_of(content_type: str) -> str:
    """The media type of a Content-Type value, without parameters, lower-case."""
    return content_type.split(";", 1)[0].strip().lower()


def parse(status: int, content_type: str, body: bytes, headers: dict[str, str]) -> Answer:
    """Reduce a response to an :class:`Answer`."""
    media = media_of(content_type)
    document: Any = None
    if media.endswith("json") and body:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
    excerpt = body[:300].decode("utf-8", errors="replace")
    if status >= 400:
        shape: Any = error_form(media, document, body)
        items: Any = None
    elif document is not None:
        shape = shape_of(document)
        items = items_of(document)
    elif not body:
        shape, items = "empty", None
    else:
        shape, items = "bytes", "sha256:" + hashlib.sha256(body).hexdigest()[:16]
        excerpt = f"<{len(body)} bytes>"
    return Answer(status, content_type, shape, items, headers, excerpt, document)


def error_form(media: str, document: Any, body: bytes) -> Any:  # noqa: ANN401 - JSON
    """The form of an error body: text, html, json{keys} or empty."""
    if not body:
        return "empty"
    if document is not None:
        if isinstance(document, dict):
            return "json{" + ",".join(sorted(set(document) - IGNORED_KEYS)) + "}"
        return "json"
    if media == "text/html":
        return "html"
    return "text"


#: The type name of each JSON scalar (bool before int: a bool is an int in Python).
_SCALARS: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "bool"),
    (int, "int"),
    (float, "float"),
    (str, "str"),
)


def shape_of(value: Any) -> Any:  # noqa: ANN401 - JSON
    """The JSON structure with values replaced by their types (see the module doc)."""
    if isinstance(value, dict):
        return {k: shape_of(v) for k, v in value.items() if k not in IGNORED_KEYS}
    if isinstance(value, list):
        return [shape_of(value[0])] if value else []
    return next((name for kind, name in _SCALARS if isinstance(value, kind)), "str")


def items_of(document: Any) -> Any:  # noqa: ANN401 - JSON
    """What a list answer holds, by name (see the module doc); None for other answers."""
    if not isinstance(document, dict):
        return None
    for key, summary in _ITEMS.items():
        listed = document.get(key)
        if isinstance(listed, list):
            return summary([entry for entry in listed if isinstance(entry, dict)])
    return None


#: How each kind of list answer is summed up, by the key that holds the list.
_ITEMS: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
    "images": lambda entries: [e.get("name") for e in entries],
    "members": lambda entries: sorted(f"{e.get('member_id')}:{e.get('status')}" for e in entries),
    "stores": lambda entries: [e.get("id") for e in entries],
    "tasks": lambda entries: f"{len(entries)} tasks",
    "versions": lambda entries: [f"{e.get('id')}:{e.get('status')}" for e in entries],
}


def _type_name(shape: Any) -> str:  # noqa: ANN401 - a shape
    if isinstance(shape, dict):
        return "object"
    if isinstance(shape, list):
        return "list" if shape else "[]"
    return str(shape)


def shape_diff(glance: Any, imageport: Any, path: str = "") -> list[str]:  # noqa: ANN401
    """The differences between two shapes, one line each, Glance's side first."""
    where = path or "body"
    if isinstance(glance, dict) and isinstance(imageport, dict):
        out: list[str] = []
        missing = sorted(set(glance) - set(imageport))
        extra = sorted(set(imageport) - set(glance))
        if missing:
            out.append(f"{where}: missing {', '.join(missing)}")
        if extra:
            out.append(f"{where}: extra {', '.join(extra)}")
        for key in sorted(set(glance) & set(imageport)):
            out.extend(shape_diff(glance[key], imageport[key], f"{path}.{key}" if path else key))
        return out
    if isinstance(glance, list) and isinstance(imageport, list):
        if glance and imageport:
            return shape_diff(glance[0], imageport[0], f"{path}[]")
        if glance or imageport:
            side = "imageport" if glance else "glance"
            return [f"{where}: list empty in {side}"]
        return []
    if glance != imageport:
        return [f"{where}: glance {_type_name(glance)}, imageport {_type_name(imageport)}"]
    return []


@dataclass
class Verdict:
    """The comparison of the two answers to one request."""

    status_match: bool
    shape_match: bool
    items_match: bool | None
    diff: list[str]


def compare(glance: Answer, imageport: Answer, headers: tuple[str, ...] = ()) -> Verdict:
    """Compare two answers (``headers``: response headers whose presence must agree)."""
    diff: list[str] = []
    status_match = glance.status == imageport.status
    if not status_match:
        diff.append(f"status glance {glance.status}, imageport {imageport.status}")
    shape_lines = shape_diff(glance.shape, imageport.shape)
    for name in headers:
        in_glance, in_imageport = name in glance.headers, name in imageport.headers
        if in_glance != in_imageport:
            side = "missing in imageport" if in_glance else "extra in imageport"
            shape_lines.append(f"header {name}: {side}")
    if (
        glance.status < 400
        and imageport.status < 400
        and glance.shape not in ("bytes", "empty")
        and media_of(glance.content_type) != media_of(imageport.content_type)
    ):
        shape_lines.append(
            f"content-type glance {media_of(glance.content_type)}, "
            f"imageport {media_of(imageport.content_type)}"
        )
    diff.extend(shape_lines)
    items_match: bool | None = None
    if glance.items is not None or imageport.items is not None:
        items_match = glance.items == imageport.items
        if not items_match:
            diff.append(f"items glance {glance.items}, imageport {imageport.items}")
    return Verdict(status_match, not shape_lines, items_match, diff)

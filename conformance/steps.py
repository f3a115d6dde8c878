"""The vocabulary of the scenario: requests, waits and pauses, and who sends them.

A path, a header value or a string anywhere in a JSON body may name values with ``{var}``.
Each server has its own values (image ids, timestamps, checksums differ between the two),
filled in by ``save`` from earlier answers; ``{files}`` is the file server's URL on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Who sends a request: the identity headers Glance's context filter and imageport's
#: trusted-proxy strategy read. ``anon`` sends none (no X-Identity-Status: Confirmed).
IDENTITIES: dict[str, dict[str, str]] = {
    "admin": {"project": "p-admin", "user": "u-admin", "roles": "admin,member,reader"},
    "alice": {"project": "p-a", "user": "u-alice", "roles": "member,reader"},
    "reader": {"project": "p-a", "user": "u-ralph", "roles": "reader"},
    "bob": {"project": "p-b", "user": "u-bob", "roles": "member,reader"},
    "carol": {"project": "p-c", "user": "u-carol", "roles": "member,reader"},
    "anon": {},
}

#: The media types of a JSON patch (Glance's v2.1 and the deprecated v2.0).
PATCH = "application/openstack-images-v2.1-json-patch"
PATCH_V20 = "application/openstack-images-v2.0-json-patch"
OCTETS = "application/octet-stream"
JSON = "application/json"


def identity_headers(who: str) -> dict[str, str]:
    """The headers an authenticating proxy would set for ``who``."""
    ident = IDENTITIES[who]
    if not ident:
        return {}
    return {
        "X-Identity-Status": "Confirmed",
        "X-Project-Id": ident["project"],
        "X-User-Id": ident["user"],
        "X-Roles": ident["roles"],
    }


@dataclass
class Req:
    """One request, sent to both servers and compared.

    Attributes:
        name: a short unique label for the table.
        method: the HTTP method.
        path: the path and query, with ``{var}`` placeholders.
        who: the identity (a key of IDENTITIES).
        json: a JSON body (placeholders in its strings are filled in).
        data: a raw body: bytes, or the name of a blob (``@raw``, ``@qcow2``).
        content_type: the request's Content-Type (default: JSON for ``json`` bodies).
        accept: the request's Accept header (None: no Accept header at all).
        headers: more request headers (values may hold placeholders).
        save: variable name -> dotted path into the JSON answer (``images.1.id``) or
            ``header:NAME``; saved per server.
        check_headers: response headers whose presence must agree between the servers.
        quiet: send to both servers but compare nothing: a clean-up after a request that
            changed the state on one server only (so later answers are not all different).
    """

    name: str
    method: str
    path: str
    who: str = "alice"
    json: Any = None
    data: bytes | str | None = None
    content_type: str | None = None
    accept: str | None = "*/*"
    headers: dict[str, str] = field(default_factory=dict)
    save: dict[str, str] = field(default_factory=dict)
    check_headers: tuple[str, ...] = ()
    quiet: bool = False


@dataclass
class Wait:
    """Wait (bounded) until the imports of an image have ended on each server.

    Polls the image and the task its ``os_glance_import_task`` names (as admin) until the
    task is neither pending nor processing and the image neither ``importing`` nor
    ``saving``. Not compared. Each import is waited for before the next request: Glance on
    SQLite fails imports that write at the same time ("database is locked").
    """

    image: str
    timeout: float = 120.0
    #: copy-image: also wait until the image lists this store (or a failed import).
    store: str | None = None


@dataclass
class Cleanup:
    """Delete stray images, as admin, on each server. Not compared.

    Stray: what one server created and the other refused — images named in ``names``, and
    nameless images except those the ``keep`` variables name.
    """

    keep: tuple[str, ...] = ()
    names: tuple[str, ...] = ("cf-bad",)


@dataclass
class Pause:
    """Sleep, so that the next images are created in a later second (date filters)."""

    seconds: float


Step = Req | Wait | Cleanup | Pause

"""The ``glance-download`` method: an image of another Image API endpoint, hashes verified.

Endpoints come from the operator (``glance_download_endpoints``, keyed by region or by
``region/interface``), so they are trusted addresses and bypass web-download's URL policy.
The remote image id must be a UUID (:func:`check_remote_id`) before any URL is built with it:
an id such as ``../../v3/auth`` would otherwise reach other paths of that host, credentials
attached.

Whose authority the remote sees (:func:`remote_auth`):

* with ``auth_strategy = keystone`` the caller's own token, so the remote shows the caller
  exactly the images their project may read there, as Glance's glance-download does. The
  worker needs the token again to download, so the task keeps it in its input under
  :data:`~imageport.records.models.FORWARDED_TOKEN`, a key the task serializers (API and CLI)
  never show and that is emptied when the task ends (:mod:`imageport.records.repository`);
* otherwise the operator's ``glance_download_token``, which may see every project's images:
  a caller who is not an administrator may then import only a remote image that is public,
  community, or owned by the caller's own project id (:func:`check_visible`).

:func:`remote_image` reads and validates the remote record when the import is requested
(active, a size, an MD5 ``checksum`` or none, and a sha256/384/512 multihash of the right
length); its digests become the import's expected ones, which the ``verify`` stage compares
with what the ``stage`` step (:func:`open_remote`) received. A remote that serves other bytes
than its record declares fails with ``checksum_mismatch``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from imageport.access.identity import Identity
from imageport.config import Settings
from imageport.errors import InvalidRequest, SourceNotFound, SourceUnavailable, Unauthenticated
from imageport.pipeline.context import Services
from imageport.pipeline.data.sources import SourceInfo
from imageport.records import repository
from imageport.records.models import FORWARDED_TOKEN

DEFAULT_INTERFACE = "public"  # Glance's default glance_service_interface
#: The multihash algorithms a remote record may declare, with their hex digest lengths.
#: MD5 and SHA-1 are refused: a remote (or anyone between) could forge a matching image.
ACCEPTED_HASHES = {"sha256": 64, "sha384": 96, "sha512": 128}
#: The ``error_code`` of a remote record that cannot be trusted as it is.
INVALID_RECORD = "remote_image_invalid"
#: Visibilities anyone may import with the operator's token.
OPEN_VISIBILITIES = frozenset({"public", "community"})

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_HEX = re.compile(r"[0-9a-f]*\Z")


@dataclass(frozen=True)
class RemoteAuth:
    """The token sent to the remote, and whether it is the caller's own.

    Attributes:
        token: ``X-Auth-Token`` for the remote (None: send none).
        forwarded: the caller's own token (keystone), not the operator's.
    """

    token: str | None = field(repr=False)
    forwarded: bool

    @property
    def forwarded_token(self) -> str | None:
        """The token to keep in the task for its worker: only a forwarded one."""
        return self.token if self.forwarded else None


@dataclass(frozen=True)
class RemoteImage:
    """The validated fields of a remote image record."""

    id: str
    size: int
    checksum: str | None
    os_hash_algo: str
    os_hash_value: str
    disk_format: str | None
    container_format: str | None
    owner: str | None
    visibility: str | None


def remote_auth(settings: Settings, who: Identity) -> RemoteAuth:
    """Whose token the remote gets: the caller's own in keystone mode, else the operator's.

    Raises:
        Unauthenticated: keystone mode, but the caller's token is unknown.
    """
    if who.strategy == "keystone":
        if not who.token:
            raise Unauthenticated("glance-download needs the caller's own token in keystone mode")
        return RemoteAuth(who.token, forwarded=True)
    return RemoteAuth(settings.glance_download_token, forwarded=False)


def check_remote_id(remote_id: object) -> str:
    """The remote image id, lower-cased, if it is a UUID in its usual 8-4-4-4-12 form.

    Raises:
        InvalidRequest: anything else (it would become part of a URL path).
    """
    if isinstance(remote_id, str) and _UUID.match(remote_id.lower()):
        return remote_id.lower()
    raise InvalidRequest(
        "method.glance_image_id must be the remote image's id, a UUID "
        f"(8-4-4-4-12 hex digits), not {remote_id!r}"
    )


def file_url(endpoint: str, remote_id: str) -> str:
    """The URL of the remote image's data, for a validated id."""
    return f"{endpoint}/v2/images/{check_remote_id(remote_id)}/file"


def resolve_endpoint(settings: Settings, region: str, interface: str | None) -> str:
    """The configured endpoint URL of ``region`` (and ``interface``), without a trailing slash.

    Raises:
        InvalidRequest: no endpoint is configured for the region.
    """
    endpoints = settings.glance_download_endpoints
    for key in (f"{region}/{interface or DEFAULT_INTERFACE}", region):
        if key in endpoints:
            return endpoints[key].rstrip("/")
    known = ", ".join(sorted(endpoints)) or "none"
    raise InvalidRequest(
        f"no Image API endpoint is configured for region {region!r} "
        f"(glance_download_endpoints has: {known})"
    )


def _client(settings: Settings, token: str | None) -> httpx.Client:
    headers = {"Accept-Encoding": "identity", "User-Agent": "imageport"}
    if token:
        headers["X-Auth-Token"] = token
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_read_timeout, connect=settings.http_connect_timeout),
        follow_redirects=False,  # a redirect would carry the token elsewhere
        trust_env=False,  # never a proxy or netrc from the environment
        headers=headers,
    )


def remote_image(settings: Settings, endpoint: str, image_id: str, auth: RemoteAuth) -> RemoteImage:
    """Read the remote image's record and validate it (see :func:`check_record`).

    Raises:
        InvalidRequest: the id is not a UUID (nothing is sent), or the record is unusable.
        SourceNotFound: the remote has no such image (for this token), or it is not active.
        SourceUnavailable: the endpoint could not be reached or answered 5xx.
    """
    image_id = check_remote_id(image_id)
    url = f"{endpoint}/v2/images/{image_id}"
    try:
        with _client(settings, auth.token) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"cannot reach {endpoint}: {exc}") from exc
    if response.status_code in (403, 404):
        raise SourceNotFound(_not_found(image_id))
    _raise_for_status(response, url)
    try:
        record: Any = response.json()  # the JSON boundary: checked field by field below
    except ValueError:
        record = None
    return check_record(record, image_id)


def _not_found(image_id: str) -> str:
    # One message for "absent" and "not yours": the answer must not tell which.
    return f"remote image {image_id} does not exist, or the caller may not read it"


def check_record(record: object, image_id: str) -> RemoteImage:
    """The remote record's fields, each checked before the import may rely on it.

    Raises:
        InvalidRequest: a field is missing or malformed (the message names it); code
            ``remote_image_invalid``.
        SourceNotFound: the image is not active.
    """
    if not isinstance(record, dict):
        raise _invalid(image_id, "the record", "is not a JSON object")
    if record.get("id") != image_id:
        raise _invalid(image_id, "id", f"is {record.get('id')!r}, not the image asked for")
    if record.get("status") != "active":
        raise SourceNotFound(
            f"remote image {image_id} is {record.get('status')!r} (field status), not active: "
            "only an active image can be downloaded"
        )
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(image_id, "size", f"is {size!r}, not a byte count")
    checksum = record.get("checksum")
    if checksum is not None and not _is_hex(checksum, 32):
        raise _invalid(image_id, "checksum", f"is {checksum!r}, not an MD5 (32 hex digits)")
    algo, value = record.get("os_hash_algo"), record.get("os_hash_value")
    if algo not in ACCEPTED_HASHES:
        raise _invalid(
            image_id,
            "os_hash_algo",
            f"is {algo!r}; only {', '.join(ACCEPTED_HASHES)} can vouch for the data",
        )
    length = ACCEPTED_HASHES[algo]
    if not isinstance(value, str) or not _is_hex(value, length):
        raise _invalid(image_id, "os_hash_value", f"is {value!r}, not {length} hex digits")
    strings = {}
    for name in ("disk_format", "container_format", "owner", "visibility"):
        given = record.get(name)
        if given is not None and not isinstance(given, str):
            raise _invalid(image_id, name, f"is {given!r}, not a string")
        strings[name] = given
    return RemoteImage(
        id=image_id,
        size=size,
        checksum=checksum.lower() if isinstance(checksum, str) else None,
        os_hash_algo=algo,
        os_hash_value=value.lower(),
        **strings,
    )


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_HEX.match(value.lower()))


def _invalid(image_id: str, name: str, problem: str) -> InvalidRequest:
    return InvalidRequest(
        f"the remote's record of image {image_id} cannot be used: {name} {problem}",
        code=INVALID_RECORD,
    )


def check_visible(record: RemoteImage, who: Identity, auth: RemoteAuth) -> None:
    """Refuse a remote image the caller's own project could not read there.

    Only needed with the operator's token (the caller's own token is checked by the remote):
    an administrator may import any image; anyone else a public or community one, or one
    their project owns (project ids are shared between regions of one cloud).

    Raises:
        SourceNotFound: the caller may not use the image (worded as for a missing one).
    """
    if auth.forwarded or who.is_admin:
        return
    if record.visibility in OPEN_VISIBILITIES:
        return
    if who.project_id is not None and record.owner == who.project_id:
        return
    raise SourceNotFound(_not_found(record.id))


def task_token(services: Services, task_id: str) -> str | None:
    """The token a task's worker sends to the remote: the one the task keeps, or the operator's.

    Raises:
        SourceNotFound: the task was given the caller's token, and it is no longer kept.
    """
    with services.db.session() as session:
        stored = dict(repository.get_task(session, task_id).input)
    if FORWARDED_TOKEN not in stored:
        return services.settings.glance_download_token
    token = stored[FORWARDED_TOKEN]
    if not isinstance(token, str) or not token:
        # Never the operator's token instead: the import was asked for with the caller's rights.
        raise SourceNotFound(
            "this glance-download ran with the caller's own token, which is not kept once "
            "the task has ended: start a new import"
        )
    return token


@contextlib.contextmanager
def open_remote(
    settings: Settings, url: str, *, token: str | None
) -> Iterator[tuple[SourceInfo, Iterator[memoryview]]]:
    """Stream the remote image's data (``…/v2/images/ID/file``) as received.

    Args:
        settings: timeouts.
        url: the data URL the import recorded (built by :func:`file_url`).
        token: ``X-Auth-Token`` for the remote (:func:`task_token`).

    Raises:
        SourceNotFound: 4xx from the remote.
        SourceUnavailable: connection errors, timeouts, 5xx.
    """
    with _client(settings, token) as client:
        try:
            with client.stream("GET", url) as response:
                _raise_for_status(response, url)
                length = response.headers.get("Content-Length")
                info = SourceInfo(length=int(length) if length and length.isdigit() else None)
                yield info, _chunks(response)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"reading {url} failed: {exc}") from exc


def _chunks(response: httpx.Response) -> Iterator[memoryview]:
    for chunk in response.iter_raw():
        yield memoryview(chunk)


def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code >= 500:
        raise SourceUnavailable(f"{url} answered {response.status_code}")
    if response.status_code != 200:
        raise SourceNotFound(f"{url} answered {response.status_code}")

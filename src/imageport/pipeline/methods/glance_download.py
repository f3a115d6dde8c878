"""The ``glance-download`` method: an image of another Image API endpoint, hashes verified.

Endpoints come from the operator (``glance_download_endpoints``, keyed by region or by
``region/interface``), so they are trusted addresses and bypass web-download's URL policy.
:func:`remote_image` reads the remote image's record when the import is requested; its
``checksum`` and ``os_hash_algo``/``os_hash_value`` become the import's expected digests, which
the ``verify`` stage compares with what the ``stage`` step (:func:`open_remote`) received.
A remote that serves other bytes than its record declares fails with ``checksum_mismatch``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from imageport.config import Settings
from imageport.errors import InvalidRequest, SourceNotFound, SourceUnavailable
from imageport.pipeline.data.sources import SourceInfo

DEFAULT_INTERFACE = "public"  # Glance's default glance_service_interface


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


def _client(settings: Settings) -> httpx.Client:
    headers = {"Accept-Encoding": "identity", "User-Agent": "imageport"}
    if settings.glance_download_token:
        headers["X-Auth-Token"] = settings.glance_download_token
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_read_timeout, connect=settings.http_connect_timeout),
        follow_redirects=False,
        trust_env=False,  # never a proxy or netrc from the environment
        headers=headers,
    )


def remote_image(settings: Settings, endpoint: str, image_id: str) -> dict[str, Any]:
    """Read the remote image's record; it must be active and carry its hashes.

    Raises:
        SourceNotFound: the remote has no such image, or it is not active.
        SourceUnavailable: the endpoint could not be reached or answered 5xx.
    """
    url = f"{endpoint}/v2/images/{image_id}"
    try:
        with _client(settings) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"cannot reach {endpoint}: {exc}") from exc
    _raise_for_status(response, url)
    record: dict[str, Any] = response.json()
    if record.get("status") != "active":
        raise SourceNotFound(f"remote image {image_id} is {record.get('status')}, not active")
    if not record.get("checksum") or not record.get("os_hash_value"):
        raise SourceNotFound(f"remote image {image_id} has no checksum to verify its data with")
    return record


@contextlib.contextmanager
def open_remote(settings: Settings, url: str) -> Iterator[tuple[SourceInfo, Iterator[memoryview]]]:
    """Stream the remote image's data (``…/v2/images/ID/file``) as received.

    Raises:
        SourceNotFound: 4xx from the remote.
        SourceUnavailable: connection errors, timeouts, 5xx.
    """
    with _client(settings) as client:
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

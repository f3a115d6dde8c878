"""Where import bytes come from: a local file or an http(s) URL, read as a chunk stream.

Each source yields memoryviews; a file source reuses one buffer (``readinto``), so a consumer
must be done with a chunk before asking for the next. httpx and OS errors are translated here.

web-download goes through `http_stream` only, with a client from
`imageport.pipeline.context.build_http_client`: its `PinnedTransport` checks every request's
URL (SSRF policy in `imageport.pipeline.safety.urlpolicy`) and connects only to the checked address.
This module follows redirects by hand, so each hop is one request the transport checks afresh.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from imageport.errors import (
    ConfigurationError,
    InvalidRequest,
    SizeLimitExceeded,
    SourceNotFound,
    SourceUnavailable,
)
from imageport.pipeline.safety.pinning import DEADLINE_EXTENSION, PinnedTransport
from imageport.pipeline.safety.urlpolicy import parse_url

DEFAULT_MAX_REDIRECTS = 5  # hops followed by hand for web-download (settings: http_max_redirects)

# "bytes START-END/TOTAL" (TOTAL may be "*"), RFC 9110 14.4.
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")


@dataclass(frozen=True)
class SourceInfo:
    """What is known about a source before reading it."""

    length: int | None  # bytes in this body, when the source declares it (never trusted as a cap)
    #: Offset in the source of the first byte yielded: the requested offset when the server
    #: honoured the Range request (206), 0 when it sent the whole body (200) or for files.
    start: int = 0


def file_chunks(path: Path, buffer: bytearray) -> Iterator[memoryview]:
    """Yield a local file's bytes through ``buffer``.

    Raises:
        SourceNotFound: the path does not exist or is not a regular file.
    """
    try:
        handle = path.open("rb", buffering=0)
    except FileNotFoundError as exc:
        raise SourceNotFound(f"{path} does not exist: check the path") from exc
    except PermissionError as exc:
        raise SourceNotFound(f"{path} is not readable: check its permissions") from exc
    with handle:
        view = memoryview(buffer)
        while True:
            n = handle.readinto(view)
            if not n:
                return
            yield view[:n]


@contextlib.contextmanager
def http_stream(
    client: httpx.Client,
    url: str,
    *,
    deadline_seconds: float,
    max_bytes: int,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    offset: int = 0,
) -> Iterator[tuple[SourceInfo, Iterator[memoryview]]]:
    """Open ``url`` (following redirects by hand) and yield its body as sent, uncompressed or not.

    Args:
        client: a client from ``build_http_client`` (its transport enforces the URL policy).
        url: the http(s) URL the user gave.
        deadline_seconds: the whole download, every hop and byte included, ends by then.
        max_bytes: the source may not be larger (counted on the bytes received, from 0).
        max_redirects: redirects followed before giving up.
        offset: ask for the source from this byte on (``Range``); see ``SourceInfo.start``
            for whether the server honoured it.

    Raises:
        ConfigurationError: ``client`` does not pin addresses (not from ``build_http_client``).
        InvalidRequest: the URL or a redirect target is refused (``url_*`` codes, or
            ``url_redirects`` for too many redirects or a loop).
        SourceNotFound: the server answered 4xx or an unusable status.
        SourceUnavailable: connection errors, timeouts, 5xx, or the deadline passed.
        SizeLimitExceeded: the body is, or says it is, larger than ``max_bytes``.
    """
    _require_pinned(client)
    deadline = time.monotonic() + deadline_seconds
    # identity: the bytes stored are the bytes sent; decompression is the staging step's job,
    # under its own output cap. (iter_raw below would not decode either way.)
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = _open_following_redirects(client, url, headers, deadline, max_redirects)
    try:
        info = _source_info(response, offset, max_bytes)
        yield info, _raw_chunks(response, deadline, max_bytes - info.start)
    finally:
        response.close()


def _require_pinned(client: httpx.Client) -> None:
    # httpx has no public accessor for a client's transport. Checking it here keeps a miswired
    # caller (a plain httpx.Client) from fetching a URL nobody vetted.
    if not isinstance(client._transport, PinnedTransport):  # noqa: SLF001
        raise ConfigurationError(
            "web-download needs the client from build_http_client (it pins checked addresses)"
        )


def _open_following_redirects(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    deadline: float,
    max_redirects: int,
) -> httpx.Response:
    current = parse_url(url)
    seen = {str(current)}
    for hop in range(max_redirects + 1):
        response = _send(client, current, headers, deadline)
        # has_redirect_location: 301/302/303/307/308 with a Location (is_redirect is any 3xx).
        if not response.has_redirect_location:
            return _checked(response)
        location = response.headers["Location"]
        response.close()  # the body of a redirect is never read
        target = parse_url(location, base=current)
        if hop == max_redirects:
            raise InvalidRequest(
                f"{url}: more than {max_redirects} redirects (last to {target})",
                code="url_redirects",
            )
        if str(target) in seen:
            # A loop cannot end well, whatever the hop budget left: stop at the first repeat.
            raise InvalidRequest(f"{url}: redirect loop back to {target}", code="url_redirects")
        seen.add(str(target))
        current = target
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def _send(
    client: httpx.Client, url: httpx.URL, headers: dict[str, str], deadline: float
) -> httpx.Response:
    request = client.build_request(
        "GET", url, headers=headers, extensions={DEADLINE_EXTENSION: deadline}
    )
    try:
        # The transport vets ``url`` (resolving it once) before it connects anywhere; a
        # refusal arrives here as InvalidRequest and passes through untouched.
        return client.send(request, stream=True, follow_redirects=False)
    except httpx.TimeoutException as exc:
        raise _timeout(url, deadline, exc) from exc
    except httpx.TransportError as exc:
        raise SourceUnavailable(f"cannot reach {url}: {exc}; will retry") from exc


def _checked(response: httpx.Response) -> httpx.Response:
    url, status = response.request.url, response.status_code
    if status in (200, 206):
        return response
    response.close()
    what = f"{url} answered {status} {response.reason_phrase}"
    if status >= 500:
        raise SourceUnavailable(f"{what}; will retry")
    if status >= 400:
        raise SourceNotFound(f"{what}: check the URL")
    raise SourceNotFound(f"{what}, which is not an image body: check the URL")


def _source_info(response: httpx.Response, offset: int, max_bytes: int) -> SourceInfo:
    start = _range_start(response, offset)
    declared = response.headers.get("Content-Length")
    length = int(declared) if declared and declared.isdigit() else None
    if length is not None and start + length > max_bytes:
        # Believed only when it says "too big": a smaller lie is caught by counting.
        raise SizeLimitExceeded(
            f"{response.request.url} declares {start + length} bytes, more than "
            f"max_image_bytes={max_bytes}",
            code="upload_limit",
        )
    return SourceInfo(length=length, start=start)


def _range_start(response: httpx.Response, offset: int) -> int:
    if response.status_code != 206:
        return 0  # the whole body: a server may ignore Range, and then we start over
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not offset or match is None or int(match.group(1)) != offset:
        # Bytes from somewhere we did not ask for cannot be appended to what we have.
        raise SourceUnavailable(
            f"{response.request.url} answered 206 with Content-Range "
            f"{response.headers.get('Content-Range')!r} for bytes={offset}-; will retry"
        )
    return offset


def _raw_chunks(response: httpx.Response, deadline: float, budget: int) -> Iterator[memoryview]:
    # iter_raw: bytes exactly as sent; iter_bytes would silently undo (chained) Content-Encoding.
    url, received = response.request.url, 0
    try:
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > budget:
                raise SizeLimitExceeded(
                    f"{url} sent more than max_image_bytes allows ({budget} bytes)",
                    code="upload_limit",
                )
            yield memoryview(chunk)
    except httpx.TimeoutException as exc:
        raise _timeout(url, deadline, exc) from exc
    except httpx.TransportError as exc:
        raise SourceUnavailable(f"download of {url} broke off: {exc}; will retry") from exc


def _timeout(url: httpx.URL, deadline: float, exc: httpx.TimeoutException) -> SourceUnavailable:
    if time.monotonic() >= deadline:
        return SourceUnavailable(f"download of {url} passed its deadline; will retry")
    return SourceUnavailable(f"{url} timed out ({type(exc).__name__}); will retry")

"""Where import bytes come from: a local file or an http(s) URL, read as a chunk stream.

Each source yields memoryviews; a file source reuses one buffer (``readinto``), so a consumer
must be done with a chunk before asking for the next. httpx and OS errors are translated here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from imageport.errors import InvalidRequest, SourceNotFound, SourceUnavailable

MAX_REDIRECTS = 5  # hops followed by hand for web-download


@dataclass(frozen=True)
class SourceInfo:
    """What is known about a source before reading it."""

    length: int | None  # bytes, when the source declares it (never trusted as a cap)


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
    client: httpx.Client, url: str, *, deadline_seconds: float, offset: int = 0
) -> Iterator[tuple[SourceInfo, Iterator[memoryview]]]:
    """Open ``url`` (following up to 5 redirects by hand) and yield its raw body chunks.

    Raises:
        SourceNotFound: the server answered 4xx, or the URL is not http(s).
        SourceUnavailable: connection errors, timeouts, 5xx, or the deadline passed.
    """
    deadline = time.monotonic() + deadline_seconds
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with contextlib.ExitStack() as stack:
        response = _open_following_redirects(client, url, headers, stack)
        length = response.headers.get("Content-Length")
        info = SourceInfo(length=int(length) if length and length.isdigit() else None)
        yield info, _raw_chunks(response, url, deadline)


def _open_following_redirects(
    client: httpx.Client, url: str, headers: dict[str, str], stack: contextlib.ExitStack
) -> httpx.Response:
    for _hop in range(MAX_REDIRECTS + 1):
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise InvalidRequest(f"{url}: only http and https URLs can be downloaded")
        try:
            response = stack.enter_context(client.stream("GET", parsed, headers=headers))
        except httpx.TransportError as exc:
            raise SourceUnavailable(f"cannot reach {url}: {exc}") from exc
        if response.is_redirect and "Location" in response.headers:
            url = urljoin(str(parsed), response.headers["Location"])
            continue
        if 400 <= response.status_code < 500:
            raise SourceNotFound(
                f"{url} answered {response.status_code} {response.reason_phrase}: check the URL"
            )
        if response.status_code >= 500 or not response.is_success:
            raise SourceUnavailable(
                f"{url} answered {response.status_code} {response.reason_phrase}; will retry"
            )
        return response
    raise SourceNotFound(f"{url}: more than {MAX_REDIRECTS} redirects")


def _raw_chunks(response: httpx.Response, url: str, deadline: float) -> Iterator[memoryview]:
    # iter_raw: bytes exactly as sent; iter_bytes would silently undo a Content-Encoding.
    try:
        for chunk in response.iter_raw():
            if time.monotonic() > deadline:
                raise SourceUnavailable(f"download of {url} passed its deadline; will retry")
            yield memoryview(chunk)
    except httpx.TransportError as exc:
        raise SourceUnavailable(f"download of {url} broke off: {exc}") from exc

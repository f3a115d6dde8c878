"""HttpStore: read-only image locations served over http(s).

The ``httpx.Client`` is injected (tests build one with ``httpx.MockTransport`` or point it at a
local server). Every httpx error is translated in one place, :func:`mapped`. Location URLs come
from our own records, never from a request, and redirects are not followed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

import httpx

from imageport.errors import InvalidRequest, SourceNotFound, StoreUnavailable
from imageport.stores.base import StoredObject, StoreWriter

DEFAULT_READ_CHUNK = 1024 * 1024  # bytes per chunk handed on from a response


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Translate httpx errors raised inside the block into store errors.

    Raises:
        SourceNotFound: the server answered 4xx.
        StoreUnavailable: 5xx, or the connection failed or broke off.
    """
    try:
        yield
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        if 400 <= status < 500:
            raise SourceNotFound(f"{what}: HTTP {status}") from exc
        raise StoreUnavailable(f"{what}: HTTP {status}") from exc
    except httpx.HTTPError as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


class HttpStore:
    """Reads images from http(s) locations; never writes or deletes."""

    kind = "http"
    read_only = True

    def __init__(self, store_id: str, *, client: httpx.Client) -> None:
        self.store_id = store_id
        self.client = client

    def begin_write(self, key: str, *, size: int | None = None) -> StoreWriter:  # noqa: ARG002
        """Refuse: http locations are read-only."""
        raise InvalidRequest(f"store {self.store_id} is read-only (http)")

    def add(
        self,
        key: str,  # noqa: ARG002
        chunks: Iterable[bytes | memoryview],  # noqa: ARG002
        *,
        size: int | None = None,  # noqa: ARG002
    ) -> StoredObject:
        """Refuse: http locations are read-only."""
        raise InvalidRequest(f"store {self.store_id} is read-only (http)")

    def url_for(self, key: str) -> str:
        """Refuse: http locations are named by their server, not by us."""
        raise InvalidRequest(f"store {self.store_id} has no object {key!r} (http)")

    def read(self, url: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream ``url``, asking for a Range; a server that ignores it is trimmed here."""
        _check_url(url)
        if length == 0:
            return
        headers: dict[str, str] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        with mapped(f"read {url}"), self.client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            # 200 instead of 206: the server sent the whole object, skip and cut it ourselves.
            skip = offset if response.status_code == 200 else 0
            yield from _window(response.iter_raw(), skip, length)

    def exists(self, url: str) -> bool:
        """Whether a HEAD of ``url`` succeeds."""
        _check_url(url)
        with mapped(f"head {url}"):
            response = self.client.head(url)
            if response.status_code in (404, 410):
                return False
            response.raise_for_status()
        return True

    def delete(self, url: str) -> None:
        """Refuse: http locations are read-only."""
        raise InvalidRequest(f"store {self.store_id} is read-only; cannot delete {url}")

    def free_bytes(self) -> int | None:
        """Unknown."""
        return None

    def discard_partial(self, key: str) -> None:
        """Nothing is ever written, so nothing is left behind."""


def _check_url(url: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidRequest(f"{url} is not an http(s) location")


def _window(chunks: Iterator[bytes], skip: int, length: int | None) -> Iterator[bytes]:
    """Drop the first ``skip`` bytes of ``chunks`` and stop after ``length`` bytes."""
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        piece = chunk[skip:]
        skip = 0
        if length is not None:
            piece = piece[:length]
            length -= len(piece)
        if piece:
            yield piece
        if length == 0:
            return

"""The store protocol every target store (and the staging area) implements.

A store receives bytes through a :class:`StoreWriter` — written in order, zero runs announced as
holes so sparse images stay sparse — and commits them atomically, or aborts and leaves nothing
behind. Reads are ranged streams. Results are frozen dataclasses, never tuples.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imageport.errors import InvalidRequest

#: Object keys are our own ids (UUIDs, optionally with a suffix), never user input.
_KEY_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(\.[a-z0-9]+)?$"
)


def check_key(key: str) -> str:
    """Return ``key`` if it is one of our own object names, else raise InvalidRequest."""
    if not _KEY_RE.fullmatch(key):
        raise InvalidRequest(f"refusing object key {key!r}: keys are image ids")
    return key


@dataclass(frozen=True)
class StoredObject:
    """Where a committed object lives and what was written."""

    store_id: str
    url: str
    size: int
    metadata: Mapping[str, Any] = field(default_factory=dict)


class StoreWriter(Protocol):
    """An object being written; nothing is visible until :meth:`commit`."""

    def write(self, data: memoryview) -> None:
        """Append ``data``."""

    def write_hole(self, length: int) -> None:
        """Append ``length`` zero bytes (a hole where the store can keep one)."""

    @property
    def local_path(self) -> Path | None:
        """The temporary file being written, if the store is a local file system."""

    def commit(self) -> StoredObject:
        """Make the object durable and visible under its final name."""

    def abort(self) -> None:
        """Remove everything written so far; safe to call more than once."""


class Store(Protocol):
    """A place images are kept, addressed by location URL."""

    store_id: str
    kind: str
    read_only: bool

    def begin_write(self, key: str, *, size: int | None = None) -> StoreWriter:
        """Start writing object ``key`` (an image id); ``size`` when known."""

    def url_for(self, key: str) -> str:
        """The location URL object ``key`` has (or would have) in this store."""

    def read(self, url: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream the object at ``url`` from ``offset`` for ``length`` bytes (all if None)."""

    def exists(self, url: str) -> bool:
        """Whether an object exists at ``url``."""

    def delete(self, url: str) -> None:
        """Remove the object at ``url``; no error if it is already gone."""

    def free_bytes(self) -> int | None:
        """Free space in bytes where known, else None."""

    def discard_partial(self, key: str) -> None:
        """Remove what an interrupted write of ``key`` left behind (never a committed object)."""

    def add(
        self, key: str, chunks: Iterable[bytes | memoryview], *, size: int | None = None
    ) -> StoredObject:
        """Store the stream ``chunks`` as ``key`` (``size`` when known); see :func:`add_stream`."""


def add_stream(
    store: Store, key: str, chunks: Iterable[bytes | memoryview], *, size: int | None = None
) -> StoredObject:
    """Write ``chunks`` to ``store`` as ``key`` and commit; nothing is left behind on failure.

    Raises:
        PipelineError: whatever the store raised; the partial object is aborted first.
    """
    writer = store.begin_write(key, size=size)
    try:
        for chunk in chunks:
            writer.write(memoryview(chunk))
        return writer.commit()
    finally:
        writer.abort()  # a no-op after commit

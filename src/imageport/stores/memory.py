"""MemoryStore: a store kept in a dict, for unit tests of the pipeline's logic."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from imageport.errors import InvalidRequest, SourceNotFound
from imageport.stores.base import StoredObject, add_stream, check_key


class MemoryWriter:
    """Buffers an object until commit."""

    def __init__(self, store: MemoryStore, key: str) -> None:
        self._store = store
        self._key = key
        self._buffer = bytearray()
        self._aborted = False

    @property
    def local_path(self) -> Path | None:
        """Memory objects have no file."""
        return None

    def write(self, data: memoryview) -> None:
        """Append bytes."""
        self._buffer += data

    def write_hole(self, length: int) -> None:
        """Append zeros."""
        self._buffer += bytes(length)

    def commit(self) -> StoredObject:
        """Publish the object."""
        url = self._store.url_for(self._key)
        self._store.objects[url] = bytes(self._buffer)
        return StoredObject(store_id=self._store.store_id, url=url, size=len(self._buffer))

    def abort(self) -> None:
        """Drop the buffer."""
        self._aborted = True
        self._buffer.clear()


class MemoryStore:
    """Objects in a dict keyed by URL."""

    kind = "memory"

    def __init__(self, store_id: str = "memory", *, read_only: bool = False) -> None:
        self.store_id = store_id
        self.read_only = read_only
        self.objects: dict[str, bytes] = {}

    def begin_write(self, key: str, *, size: int | None = None) -> MemoryWriter:  # noqa: ARG002
        """Start an object."""
        if self.read_only:
            raise InvalidRequest(f"store {self.store_id} is read-only")
        return MemoryWriter(self, check_key(key))

    def add(
        self, key: str, chunks: Iterable[bytes | memoryview], *, size: int | None = None
    ) -> StoredObject:
        """Buffer ``chunks`` and publish them as ``key``."""
        return add_stream(self, key, chunks, size=size)

    def url_for(self, key: str) -> str:
        """The ``memory://`` URL of object ``key``."""
        return f"memory://{self.store_id}/{check_key(key)}"

    def read(self, url: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the object's bytes."""
        try:
            data = self.objects[self._own(url)]
        except KeyError as exc:
            raise SourceNotFound(f"{url} does not exist") from exc
        end = len(data) if length is None else offset + length
        yield data[offset:end]

    def exists(self, url: str) -> bool:
        """Whether the URL is stored."""
        return self._own(url) in self.objects

    def delete(self, url: str) -> None:
        """Forget the URL."""
        self.objects.pop(self._own(url), None)

    def _own(self, url: str) -> str:
        """Return ``url`` if it is one of this store's locations, else raise InvalidRequest."""
        if not url.startswith(f"memory://{self.store_id}/"):
            raise InvalidRequest(f"{url} is not a location of store {self.store_id}")
        return url

    def free_bytes(self) -> int | None:
        """Unknown."""
        return None

    def discard_partial(self, key: str) -> None:
        """Nothing is left behind by an aborted memory write."""

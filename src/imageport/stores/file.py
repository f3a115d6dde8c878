"""FileStore: images as files in one directory, written atomically and kept sparse."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imageport.errors import InvalidRequest, NoSpace, SourceNotFound, StoreUnavailable
from imageport.stores.base import StoredObject, add_stream, check_key

DEFAULT_READ_CHUNK = 8 * 1024 * 1024  # bytes per read of a stored file
_PARTIAL_SUFFIX = ".partial"


class FileWriter:
    """Writes ``<root>/.<key>.<random>.partial`` and renames it to ``<root>/<key>``."""

    def __init__(self, store: FileStore, key: str) -> None:
        self._store = store
        self._final = store.root / key
        self._temp = store.root / f".{key}.{secrets.token_hex(4)}{_PARTIAL_SUFFIX}"
        self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._size = 0
        self._done = False

    @property
    def local_path(self) -> Path:
        """The temporary file; a converter may write into it directly."""
        return self._temp

    def write(self, data: memoryview) -> None:
        """Append ``data`` at the current end of the file."""
        try:
            written = os.pwrite(self._fd, data, self._size)
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], self._size + written)
        except OSError as exc:
            raise _map_os_error(exc, self._temp) from exc
        self._size += len(data)

    def write_hole(self, length: int) -> None:
        """Leave ``length`` bytes unallocated; ftruncate at commit makes the tail a hole too."""
        self._size += length

    def adopt(self) -> None:
        """Take the temporary file's current length as written (after an external writer)."""
        self._size = os.fstat(self._fd).st_size

    def commit(self) -> StoredObject:
        """Set the length, fsync, rename over the final name and fsync the directory."""
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
            os.close(self._fd)
            self._done = True
            self._temp.replace(self._final)
            self._store.fsync_dir()
        except OSError as exc:
            self.abort()
            raise _map_os_error(exc, self._final) from exc
        return StoredObject(
            store_id=self._store.store_id, url=self._final.as_uri(), size=self._size, metadata={}
        )

    def abort(self) -> None:
        """Close and remove the temporary file."""
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


class FileStore:
    """A store in a local or shared directory; object names are image ids."""

    kind = "file"

    def __init__(self, store_id: str, root: Path, *, read_only: bool = False) -> None:
        self.store_id = store_id
        self.root = root.resolve()
        self.read_only = read_only
        self.root.mkdir(parents=True, exist_ok=True)

    def begin_write(self, key: str, *, size: int | None = None) -> FileWriter:
        """Start a new temporary object for ``key``, checking free space when size is known."""
        if self.read_only:
            raise InvalidRequest(f"store {self.store_id} is read-only")
        free = self.free_bytes()
        if size is not None and free < size:
            raise NoSpace(
                f"store {self.store_id} has {free} bytes free, {size} needed: free space in "
                f"{self.root} or choose another store"
            )
        return FileWriter(self, check_key(key))

    def add(
        self, key: str, chunks: Iterable[bytes | memoryview], *, size: int | None = None
    ) -> StoredObject:
        """Write ``chunks`` as ``key`` atomically (temp file, fsync, rename)."""
        return add_stream(self, key, chunks, size=size)

    def url_for(self, key: str) -> str:
        """The ``file://`` URL of object ``key``."""
        return (self.root / check_key(key)).as_uri()

    def path_of(self, url: str) -> Path:
        """Map a ``file://`` URL to a path inside this store, refusing anything outside it."""
        parts = urlsplit(url)
        path = Path(unquote(parts.path)).resolve()
        if parts.scheme != "file" or path.parent != self.root:
            raise InvalidRequest(f"{url} is not a location of store {self.store_id}")
        return path

    def read(self, url: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a stored file."""
        path = self.path_of(url)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise SourceNotFound(f"{url} does not exist") from exc
        with handle:
            handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                want = min(remaining or DEFAULT_READ_CHUNK, DEFAULT_READ_CHUNK)
                chunk = handle.read(want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def exists(self, url: str) -> bool:
        """Whether the file exists."""
        return self.path_of(url).is_file()

    def delete(self, url: str) -> None:
        """Remove the file; no error if already gone."""
        with contextlib.suppress(FileNotFoundError):
            self.path_of(url).unlink()

    def free_bytes(self) -> int:
        """Free bytes on the file system holding the store."""
        return shutil.disk_usage(self.root).free

    def fsync_dir(self) -> None:
        """Make a rename in the store directory durable."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def can_take(self, path: Path) -> bool:
        """Whether ``path`` can be moved into this store by rename (same file system)."""
        return not self.read_only and path.stat().st_dev == self.root.stat().st_dev

    def take_file(self, key: str, path: Path) -> StoredObject:
        """Move our own finished file ``path`` into the store as ``key``: fsync, rename.

        The cheapest way to store a converted image: no byte is copied.
        """
        final = self.root / check_key(key)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            path.replace(final)
            self.fsync_dir()
        except OSError as exc:
            raise _map_os_error(exc, final) from exc
        return StoredObject(store_id=self.store_id, url=final.as_uri(), size=size, metadata={})

    def discard_partial(self, key: str) -> None:
        """Remove temporary files left by an interrupted write of ``key``."""
        for partial in self.root.glob(f".{check_key(key)}.*{_PARTIAL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def _map_os_error(exc: OSError, path: Path) -> Exception:
    """Translate an OSError on ``path`` into the store error the caller acts on."""
    import errno  # noqa: PLC0415 - only needed on the error path

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left writing {path}: free space there and retry")
    return StoreUnavailable(f"cannot write {path}: {exc.strerror}")

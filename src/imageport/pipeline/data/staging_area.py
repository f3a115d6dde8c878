"""The staging area: where staged bytes wait between stages, reachable by every worker.

Stages always work on local files (qemu-img needs them), in ``<staging dir>/<task id>``. Where
that directory lives decides who can resume a job:

* a local directory (the embedded default): only workers on this host;
* a shared file system (``staging_url = "file:///mnt/shared/staging"``): every worker mounting
  it; nothing more is needed, the directory itself is what they all see;
* an S3 bucket (``staging_url = "s3://bucket/prefix"``): every durable stage output (the staged
  source, a conversion's output, an API upload) is also written to the bucket before its stage
  is recorded done, under a name made of our own ids. A job taken over on another host finds
  its local directory empty and :meth:`StagingArea.restore` fetches what the next stage needs.

The remote copies are deleted with the task's local directories when the import ends, whatever
the outcome, by whichever worker (or reaper) ends it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog

from imageport.errors import PipelineError, SourceNotFound, StagingLost
from imageport.pipeline.data.extents import data_runs, pwrite_all, read_extents
from imageport.stores.base import Store

log = structlog.get_logger(__name__)

#: Suffixes of the remote objects, after the task id (or, for uploads, the image id).
SOURCE = "source"
CONVERTED = "converted"
UPLOAD = "upload"
UPLOAD_SCAN = "scan"


def upload_names(image_id: str) -> list[str]:
    """The remote objects of an image's API upload: its bytes and its recorded scan."""
    return [f"{image_id}.{UPLOAD}", f"{image_id}.{UPLOAD_SCAN}"]


Tick = Callable[[], object]  # called per chunk moved: keeps the job's heartbeat and cancel live


def _no_tick() -> None:
    return None


class StagingArea:
    """The local staging root and, when staging is remote, the store that keeps its outputs."""

    def __init__(self, root: Path, remote: Store | None = None, *, chunk_size: int) -> None:
        self.root = root
        self.remote = remote
        self._chunk_size = chunk_size

    @property
    def is_remote(self) -> bool:
        """True when staged outputs are also kept in a remote store."""
        return self.remote is not None

    def url_of(self, name: str) -> str | None:
        """The remote URL of object ``name`` (``<uuid>.<suffix>``), or None if staging is local."""
        return None if self.remote is None else self.remote.url_for(name)

    def publish(self, name: str, path: Path, tick: Tick = _no_tick) -> str | None:
        """Copy the finished local file ``path`` to the remote store as ``name``.

        Holes are sent as holes (the store decides how to keep them). Returns the object's URL,
        or None when staging is local (there is nothing to do: the file is the durable copy).
        """
        if self.remote is None:
            return None
        size = path.stat().st_size
        writer = self.remote.begin_write(name, size=size)
        try:
            for piece in read_extents(path, bytearray(self._chunk_size)):
                if piece.data is None:
                    writer.write_hole(piece.hole)
                else:
                    writer.write(piece.data)
                tick()
            stored = writer.commit()
        finally:
            writer.abort()  # a no-op after commit
        return stored.url

    def publish_bytes(self, name: str, data: bytes) -> None:
        """Keep the small object ``data`` (a recorded scan) remotely as ``name``, if remote."""
        if self.remote is not None:
            self.remote.add(name, [data], size=len(data))

    def exists(self, name: str) -> bool:
        """Whether the remote object ``name`` exists (False when staging is local)."""
        return self.remote is not None and self.remote.exists(self.remote.url_for(name))

    def fetch_bytes(self, name: str) -> bytes | None:
        """The small remote object ``name``, or None when staging is local or it is absent."""
        if self.remote is None:
            return None
        if not self.exists(name):
            return None
        return b"".join(self.remote.read(self.remote.url_for(name)))

    def available(self, url: str | None, path: Path, size: int | None) -> bool:
        """Whether ``path`` holds ``size`` bytes here, or the remote object ``url`` exists."""
        if path.is_file() and path.stat().st_size == size:
            return True
        if self.remote is None or url is None:
            return False
        try:
            return self.remote.exists(url)
        except PipelineError as exc:
            # Unreachable now: stage again rather than fail (the next stage needs the bytes).
            log.warning("remote staging unreachable", url=url, error=str(exc))
            return False

    def restore(self, url: str | None, path: Path, size: int, tick: Tick = _no_tick) -> None:
        """Make ``path`` hold the staged object ``url`` (``size`` bytes), fetching it if needed.

        Raises:
            StagingLost: the local file is missing and the remote object is gone or damaged;
                the job is retried, and the stage that made it runs again.
        """
        if path.is_file() and path.stat().st_size == size:
            return
        if self.remote is None or url is None:
            raise StagingLost(f"staged file {path} is gone and staging is local")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._fetch(fd, url, size, tick)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        os.close(fd)
        partial.replace(path)
        log.info("staged data fetched from remote staging", url=url, bytes=size)

    def _fetch(self, fd: int, url: str, size: int, tick: Tick) -> None:
        """Write the object ``url`` to ``fd`` with zero runs left as holes; check its size."""
        assert self.remote is not None  # noqa: S101 - only called with remote staging
        offset = 0
        try:
            for chunk in self.remote.read(url):
                view = memoryview(chunk)
                for start, end in data_runs(view):
                    pwrite_all(fd, view[start:end], offset + start)
                offset += len(view)
                tick()
        except SourceNotFound as exc:
            # Gone (a lifecycle rule, an operator): stage again rather than fail the import.
            raise StagingLost(f"staged object {url} is gone") from exc
        if offset != size:
            raise StagingLost(f"staged object {url} holds {offset} bytes, not {size}")
        os.ftruncate(fd, size)

    def discard_job(self, task_id: str, *, upload_of: str | None = None) -> None:
        """Delete a job's remote objects (best effort).

        Its staged source, its conversion output and, with ``upload_of`` (an image id), the
        API upload it adopted.
        """
        names = [f"{task_id}.{SOURCE}", f"{task_id}.{CONVERTED}"]
        if upload_of is not None:
            names += upload_names(upload_of)
        self.discard(*names)

    def discard(self, *names: str) -> None:
        """Delete the remote objects ``names`` (best effort: cleanup must not hide a failure)."""
        if self.remote is None:
            return
        for name in names:
            url = self.remote.url_for(name)
            try:
                self.remote.delete(url)
            except PipelineError as exc:
                log.warning("remote staging object not deleted", url=url, error=str(exc))

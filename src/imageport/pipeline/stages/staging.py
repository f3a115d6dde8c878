"""Stage ``stage``: bring the source bytes into the task's staging directory in one pass.

While the bytes flow they are counted against ``max_image_bytes``, hashed when someone needs
their digests (MD5 and the configured multihash, in parallel; see
:attr:`~imageport.pipeline.request.ImportRequest.source_hash_needed`) and shown to the stream
inspector
(:func:`imageport.pipeline.data.scan.scan`); zero chunks are left as holes. The staged file is
the durable output a resumed job reuses. A glance-direct job adopts the upload the API already
scanned (:func:`imageport.pipeline.methods.uploads.adopt`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data import decompression, early, space, staging_area
from imageport.pipeline.data.scan import ScanResult, coalesce, scan
from imageport.pipeline.data.sources import SourceInfo, file_chunks, http_stream
from imageport.pipeline.data.staging_area import Tick
from imageport.pipeline.data.writer import BackgroundWriter
from imageport.pipeline.methods import glance_download, uploads
from imageport.pipeline.outputs import StagedOutput
from imageport.pipeline.stages.base import BaseStage

RESUME_MARKER = "source.resume"  # names the URL whose uncompressed bytes ``source`` holds


class Staging(BaseStage):
    """The ``stage`` stage."""

    name = "stage"
    output_type = StagedOutput

    def run(self, ctx: JobContext, services: Services) -> StagedOutput:
        """Stage the source and return its size, hashes and the inspector's verdict.

        A web-download interrupted by a crash continues with a ``Range`` request from the end
        of what the earlier attempt staged, when the bytes were not compressed (the staged file
        then holds exactly the bytes received) and the server honours the range; the staged
        prefix is read back once to rebuild the hashes and the inspector's view.
        """
        if ctx.request.method == "glance-direct":
            # The API staged and scanned the upload already: adopt it, no second pass.
            return uploads.adopt(ctx, services)
        return _stage(ctx, services)

    def still_valid(self, ctx: JobContext, services: Services) -> bool:
        """Reused only while the staged file is intact here or remotely."""
        staged = ctx.output(StagedOutput)
        return services.staging.available(staged.staged_url, ctx.staged_path, staged.disk_bytes)

    def restore(self, ctx: JobContext, services: Services, tick: Tick) -> bool:
        """Fetch the staged file from remote staging when this host does not have it.

        Raises:
            StagingLost: neither this host nor remote staging has it.
        """
        staged = ctx.output(StagedOutput)
        services.staging.restore(staged.staged_url, ctx.staged_path, staged.disk_bytes, tick)
        return True


STAGE = Staging()


def _stage(ctx: JobContext, services: Services) -> StagedOutput:
    ctx.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = ctx.staged_path
    buffer = bytearray(_buffer_size(ctx))
    resume = _resumable_bytes(ctx, target)
    with _open_source(ctx, services, buffer, offset=resume) as (info, body):
        if info.start != resume:
            resume = 0  # the server sent the whole body: start over
        chunks = body
        if resume:
            # What is staged already is read back (and scanned) first, then the rest arrives.
            chunks = itertools.chain(file_chunks(target, buffer), body)
        elif ctx.request.method == "web-download":
            chunks = _mark_resumable(ctx, body)
        # Admission: hand the job back (not fail it) when the source does not fit here.
        space.admit(ctx.work_dir, info.length, ctx.settings, "staging")
        scanned = _copy(ctx, chunks, target, info, keep=resume)
    (ctx.work_dir / RESUME_MARKER).unlink(missing_ok=True)
    done = scanned.size or 0
    # Remote staging: the staged file must be in the bucket before the stage counts as done.
    url = services.staging.publish(
        f"{ctx.task_id}.{staging_area.SOURCE}", target, lambda: ctx.progress(done, done)
    )
    # A decompressed image is stored as the bare disk it contains.
    container = "bare" if scanned.compression else ctx.request.container_format
    return StagedOutput(
        **scanned.model_dump(),
        path=str(target),
        container_format=container,
        resumed_from=resume,
        staged_url=url,
    )


def _buffer_size(ctx: JobContext) -> int:
    """A chunk buffer no larger than a local source needs (zeroing 8 MiB costs ~1 ms)."""
    size = ctx.settings.chunk_size
    if ctx.request.method == "local-file":
        with contextlib.suppress(OSError):
            # Whole pages, at least 64 KiB; a file that grows meanwhile is read in more chunks.
            length = Path(ctx.request.source).stat().st_size
            size = min(size, max(64 * 1024, -(-length // 4096) * 4096))
    return size


def _resumable_bytes(ctx: JobContext, target: Path) -> int:
    marker = ctx.work_dir / RESUME_MARKER
    if ctx.request.method != "web-download" or not marker.is_file() or not target.is_file():
        return 0
    if marker.read_text() != ctx.request.source:
        return 0
    return target.stat().st_size


def _mark_resumable(ctx: JobContext, chunks: Iterator[memoryview]) -> Iterator[memoryview]:
    """Pass chunks on; after the first, record whether a crash could resume this download."""
    marker = ctx.work_dir / RESUME_MARKER
    first = True
    for chunk in chunks:
        if first:
            first = False
            if decompression.detect(chunk) is None:  # compressed: staged bytes != received
                marker.write_text(ctx.request.source)
        yield chunk


@contextlib.contextmanager
def _open_source(
    ctx: JobContext, services: Services, buffer: bytearray, *, offset: int = 0
) -> Iterator[tuple[SourceInfo, Iterator[memoryview]]]:
    request = ctx.request
    if request.method == "web-download":
        with http_stream(
            services.http,
            request.source,
            deadline_seconds=ctx.settings.http_deadline_seconds,
            max_bytes=ctx.settings.max_image_bytes,
            max_redirects=ctx.settings.http_max_redirects,
            offset=offset,
        ) as (info, chunks):
            yield info, coalesce(chunks)
        return
    if request.method == "glance-download":
        # The operator's own Image API endpoint: trusted, so no web-download URL policy;
        # its hashes are in the request and checked by the verify stage.
        # The caller's own token when the import was asked for in keystone mode.
        token = glance_download.task_token(services, ctx.task_id)
        with glance_download.open_remote(ctx.settings, request.source, token=token) as (
            info,
            chunks,
        ):
            yield info, coalesce(chunks)
        return
    path = Path(request.source)
    length = path.stat().st_size if path.is_file() else None
    yield SourceInfo(length=length), file_chunks(path, buffer)


def _copy(
    ctx: JobContext, chunks: Iterator[memoryview], target: Path, info: SourceInfo, *, keep: int = 0
) -> ScanResult:
    # keep > 0: the first ``keep`` bytes are already staged (a resumed download).
    if not keep:
        # A new file, never the old one truncated: a conversion may still be reading the old
        # one (its follower is told to stop, but only sees it between two reads).
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    # A qcow2 converted to raw is converted while it is staged (not a resumed download: the
    # follower must see every byte land).
    following = early.following(
        target,
        disk_format=ctx.request.disk_format if not keep else None,
        target_format=ctx.request.final_format,
        expected_size=info.length,
        settings=ctx.settings,
    )
    try:
        with following as follower:
            scanned = _scan_into(ctx, chunks, (fd, target), info, keep, follower.advance)
            os.ftruncate(fd, scanned.disk_size or 0)
            # No fsync: the staged file only has to survive a worker crash (its blocks went
            # to the disk with O_DIRECT, its last partial block sits in the page cache), and a
            # lost host loses local staging anyway.
            follower.complete(scanned.disk_size or 0)
    finally:
        os.close(fd)
    return scanned


def _scan_into(
    ctx: JobContext,
    chunks: Iterator[memoryview],
    into: tuple[int, Path],
    info: SourceInfo,
    keep: int,
    told: Callable[[int], None],
) -> ScanResult:
    """Scan ``chunks`` into ``into`` (an open file and its path); ``told`` hears how far."""
    total = None if info.length is None else info.start + info.length
    # Around the page cache, in aligned blocks (pipeline/data/writer.py); zero blocks are not
    # written: they stay holes, so staged raw images stay sparse.
    fd, target = into
    writer = BackgroundWriter(fd, path=target, done=told, size=ctx.settings.chunk_size)
    try:

        def sink(chunk: memoryview, offset: int) -> None:
            if offset + len(chunk) > keep:  # else read back from the staged file itself
                writer.write(chunk, offset)

        scanned = scan(
            chunks,
            ctx.settings,
            declared=ctx.request.disk_format,
            extra_algo=ctx.request.os_hash_algo,
            sink=sink,
            progress=lambda done: ctx.progress(done, total),
            hashed=ctx.request.source_hash_needed,
        )
        writer.finish()
        if not scanned.complete:
            # Refused from its first bytes: fail the stage before staging the rest.
            scanned.verdict.raise_if_rejected()
    finally:
        writer.close()
    return scanned

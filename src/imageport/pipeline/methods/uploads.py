"""Bytes uploaded through the API (``PUT /stage`` and ``PUT /file``), staged and scanned once.

The API streams an upload into ``<staging>/uploads/<image id>/source`` through the same
single-pass :func:`imageport.pipeline.data.scan.scan` a worker uses (count and cap, MD5 and
multihash when the upload will be stored as it is, decompression, stream inspection, zero runs
left as holes) and records the scan
result beside it. When the import runs, its ``stage`` step :func:`adopt` s the upload: it
renames the file and the scan result into the task's staging directory (same file system, no
byte copied) and returns the recorded scan as its output. So a glance-direct image is read
exactly once between the client's socket and the ``inspect`` stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from imageport.config import Settings
from imageport.errors import SourceNotFound
from imageport.pipeline.context import STAGED_NAME, JobContext, Services
from imageport.pipeline.data import early
from imageport.pipeline.data.scan import ScanResult, scan
from imageport.pipeline.data.sources import file_chunks
from imageport.pipeline.data.space import check_space
from imageport.pipeline.data.staging_area import StagingArea, upload_names
from imageport.pipeline.data.writer import BackgroundWriter
from imageport.pipeline.outputs import StagedOutput

UPLOADS = "uploads"  # directory under the staging dir; task directories are UUIDs, never this
SOURCE_NAME = STAGED_NAME  # the uploaded file (the same name the stage step gives its output)
SCAN_NAME = "scan.json"  # the recorded scan result, beside the upload
ADOPTED_SCAN = "upload-scan.json"  # the scan result once moved into a task's directory


def upload_dir(settings: Settings, image_id: str) -> Path:
    """The private directory holding an image's staged upload."""
    return settings.resolved_staging_dir / UPLOADS / image_id


def has_upload(settings: Settings, staging_area: StagingArea, image_id: str) -> bool:
    """Whether a complete upload (file and scan result) waits for the image's import.

    With remote staging the upload may have arrived at another API host: the bucket says.
    """
    folder = upload_dir(settings, image_id)
    if (folder / SOURCE_NAME).is_file() and (folder / SCAN_NAME).is_file():
        return True
    return staging_area.exists(_remote_scan(image_id))


def receive_upload(
    settings: Settings,
    staging_area: StagingArea,
    image_id: str,
    chunks: Iterator[memoryview],
    *,
    disk_format: str | None,
    length: int | None,
    hashed: bool = True,
    target_format: str | None = None,
) -> ScanResult:
    """Stream ``chunks`` into the image's upload file in one scanning pass; return the scan.

    Args:
        settings: caps, hash algorithm and staging location.
        staging_area: where the upload is also kept when staging is remote.
        image_id: the image the bytes belong to.
        chunks: the request body (each chunk is consumed before the next is asked for).
        disk_format: the image's declared format, shown to the inspector (None: any).
        length: the body's declared length, used only for the free-space check.
        hashed: compute MD5 and the multihash (only worth it when the upload will be stored
            as it is; a converted image is hashed as its output is written).
        target_format: the format its import will convert to, if known: a qcow2 going to
            raw is converted while it arrives (:mod:`imageport.pipeline.data.early`).

    Raises:
        SizeLimitExceeded: the body passed ``max_image_bytes`` (``upload_limit``).
        UnsafeImage: the inspector refused the bytes before their end.
        NoSpace: not enough room in staging.
    """
    folder = upload_dir(settings, image_id)
    discard_upload(settings, staging_area, image_id)  # a new upload replaces an interrupted one
    folder.mkdir(mode=0o700, parents=True)
    try:
        check_space(folder, length)
        scanned = _write(
            settings,
            folder / SOURCE_NAME,
            chunks,
            (disk_format, target_format, length),
            hashed=hashed,
        )
        record = json.dumps({"declared": disk_format, **scanned.model_dump(mode="json")}).encode()
        # Remote staging: the bytes first, the scan last; its presence marks a complete upload
        # for a worker on another host, as the local scan file does here.
        staging_area.publish(_remote_source(image_id), folder / SOURCE_NAME)
        staging_area.publish_bytes(_remote_scan(image_id), record)
        (folder / SCAN_NAME).write_bytes(record)
    except BaseException:
        discard_upload(settings, staging_area, image_id)
        raise
    return scanned


def _write(
    settings: Settings,
    target: Path,
    chunks: Iterator[memoryview],
    formats: tuple[str | None, str | None, int | None],
    *,
    hashed: bool,
) -> ScanResult:
    """Write and scan the upload; ``formats``: declared format, target format, length."""
    disk_format, target_format, length = formats
    target.unlink(missing_ok=True)  # a new file, never one truncated (see staging._copy)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    following = early.following(
        target,
        disk_format=disk_format,
        target_format=target_format,
        expected_size=length,
        settings=settings,
        nice=early.UPLOAD_NICE,
    )
    try:
        with following as follower:
            # Zero blocks stay holes, as in the stage step; the writes overlap the receiving.
            with contextlib.closing(
                BackgroundWriter(fd, path=target, done=follower.advance, size=settings.chunk_size)
            ) as writer:
                scanned = scan(
                    chunks,
                    settings,
                    declared=disk_format,
                    extra_algo=None,
                    sink=writer.write,
                    hashed=hashed,
                )
                if not scanned.complete:
                    scanned.verdict.raise_if_rejected()
                writer.finish()
            os.ftruncate(fd, scanned.disk_size or 0)
            follower.complete(scanned.disk_size or 0)
    finally:
        os.close(fd)
    return scanned


def discard_upload(settings: Settings, staging_area: StagingArea, image_id: str) -> None:
    """Remove the image's staged upload, if any (here and in remote staging)."""
    early.stop(upload_dir(settings, image_id) / SOURCE_NAME)
    shutil.rmtree(upload_dir(settings, image_id), ignore_errors=True)
    staging_area.discard(*upload_names(image_id))


def _remote_source(image_id: str) -> str:
    return upload_names(image_id)[0]


def _remote_scan(image_id: str) -> str:
    return upload_names(image_id)[1]


def adopt(ctx: JobContext, services: Services) -> StagedOutput:
    """The glance-direct stage step: move the upload into the task's directory, reuse its scan.

    Idempotent: a resumed job finds the file already moved and reuses it. With remote staging
    a worker on another host than the API that received the upload fetches it from there; the
    remote upload object then stands for the staged file (no second upload).

    Raises:
        SourceNotFound: neither an upload nor an adopted upload exists.
    """
    work = ctx.work_dir
    target, scan_file = work / SOURCE_NAME, work / ADOPTED_SCAN
    folder = upload_dir(ctx.settings, ctx.image_id)
    remote_url = services.staging.url_of(_remote_source(ctx.image_id))
    if (folder / SOURCE_NAME).is_file() and (folder / SCAN_NAME).is_file():
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Renames within the staging file system: the bytes are not copied again. The early
        # conversion's output goes along (once its follower is done with the upload folder).
        size = (folder / SOURCE_NAME).stat().st_size
        early.move(folder / SOURCE_NAME, target, tick=lambda _done: ctx.progress(size, size))
        (folder / SCAN_NAME).replace(scan_file)
        (folder / SOURCE_NAME).replace(target)
        shutil.rmtree(folder, ignore_errors=True)
    elif not (target.is_file() and scan_file.is_file()):
        _fetch_remote(ctx, services, remote_url, target, scan_file)
    if not (target.is_file() and scan_file.is_file()):
        raise SourceNotFound(
            f"image {ctx.image_id} has no staged data: upload it again with PUT /stage"
        )
    # The JSON boundary: the scan recorded when the upload arrived.
    record = json.loads(scan_file.read_text())
    declared = record.pop("declared")
    scanned = ScanResult.model_validate(record)
    if declared != ctx.request.disk_format:
        # disk_format changed after the upload: inspect again against the new declaration.
        buffer = bytearray(ctx.settings.chunk_size)
        again = scan(
            file_chunks(target, buffer),
            ctx.settings,
            declared=ctx.request.disk_format,
            extra_algo=None,
        )
        scanned = scanned.model_copy(update={"verdict": again.verdict})
    ctx.progress(scanned.size or 0, scanned.size)  # done at once: the bytes are here
    container = "bare" if scanned.compression else ctx.request.container_format
    return StagedOutput(
        **scanned.model_dump(),
        path=str(target),
        container_format=container,
        staged_url=remote_url,
    )


def _fetch_remote(
    ctx: JobContext, services: Services, url: str | None, target: Path, scan_file: Path
) -> None:
    """Bring an upload received by another host from remote staging (if it is there)."""
    record = services.staging.fetch_bytes(_remote_scan(ctx.image_id))
    if record is None:
        return
    size = int(json.loads(record)["disk_size"])
    services.staging.restore(url, target, size, lambda: ctx.progress(0, size))
    scan_file.write_bytes(record)  # last: its presence marks a complete adoption

"""Stage ``stage``: bring the source bytes into the task's staging directory in one pass.

While the bytes flow they are counted against ``max_image_bytes``, hashed (MD5 and the
configured multihash, in parallel) and shown to the stream inspector; zero chunks are left as
holes. The staged file is the durable output a resumed job reuses.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imageport.config import Settings
from imageport.errors import NoSpace, PermanentError, SizeLimitExceeded, SourceUnavailable
from imageport.pipeline import decompression, extents, glance_download, stagingarea
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.extents import data_runs
from imageport.pipeline.hashing import MultiHasher
from imageport.pipeline.inspector import StreamInspector, Verdict, reject
from imageport.pipeline.sources import SourceInfo, file_chunks, http_stream
from imageport.pipeline.stagingarea import Tick

NAME = "stage"
STAGED_NAME = "source"  # the staged file's name inside the task's private directory


RESUME_MARKER = "source.resume"  # names the URL whose uncompressed bytes ``source`` holds


def run(ctx: JobContext, services: Services) -> dict[str, Any]:
    """Stage the source and return its size, hashes and the inspector's verdict.

    A web-download interrupted by a crash continues with a ``Range`` request from the end of
    what the earlier attempt staged, when the bytes were not compressed (the staged file then
    holds exactly the bytes received) and the server honours the range; the staged prefix is
    read back once to rebuild the hashes and the inspector's view.
    """
    if ctx.request.method == "glance-direct":
        from imageport.pipeline import uploads  # noqa: PLC0415 - uploads imports this module

        # The API staged and scanned the upload already: adopt it, no second pass.
        return uploads.adopt(ctx, services)
    ctx.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = staged_path(ctx)
    buffer = bytearray(_buffer_size(ctx))
    resume = _resumable_bytes(ctx, target)
    with _open_source(ctx, services, buffer, offset=resume) as (info, body):
        if info.start != resume:
            resume = 0  # the server sent the whole body: start over
        chunks = body
        if resume:
            # The file chunks are used up before the body's first chunk fills the buffer.
            chunks = itertools.chain(file_chunks(target, buffer), body)
        elif ctx.request.method == "web-download":
            chunks = _mark_resumable(ctx, body)
        check_space(ctx.work_dir, info.length)
        staged = _copy(ctx, chunks, target, info, keep=resume)
    (ctx.work_dir / RESUME_MARKER).unlink(missing_ok=True)
    done = staged["size"] or 0
    # Remote staging: the staged file must be in the bucket before the stage counts as done.
    url = services.staging.publish(
        f"{ctx.task_id}.{stagingarea.SOURCE}", target, lambda: ctx.progress(done, done)
    )
    return {**staged, "resumed_from": resume, "staged_url": url}


def staged_path(ctx: JobContext) -> Path:
    """The staged file of a job (its directory may be on another host than the one recorded)."""
    return ctx.work_dir / STAGED_NAME


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


def still_valid(ctx: JobContext, services: Services, output: dict[str, Any]) -> bool:
    """A finished stage is reused only while its staged file is intact here or remotely."""
    return services.staging.available(output.get("staged_url"), staged_path(ctx), _disk(output))


def restore(ctx: JobContext, services: Services, output: dict[str, Any], tick: Tick) -> None:
    """Fetch the staged file from remote staging when this host does not have it.

    Raises:
        StagingLost: neither this host nor remote staging has it.
    """
    services.staging.restore(output.get("staged_url"), staged_path(ctx), _disk(output), tick)


def _disk(output: dict[str, Any]) -> int:
    # The staged file is the disk: the decompressed bytes when the upload was compressed.
    return int(output.get("disk_size", output.get("size")) or 0)


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
            yield info, coalesce(chunks, buffer)
        return
    if request.method == "glance-download":
        # The operator's own Image API endpoint: trusted, so no web-download URL policy;
        # its hashes are in the request and checked by the verify stage.
        with glance_download.open_remote(ctx.settings, request.source) as (info, chunks):
            yield info, coalesce(chunks, buffer)
        return
    path = Path(request.source)
    length = path.stat().st_size if path.is_file() else None
    yield SourceInfo(length=length), file_chunks(path, buffer)


COALESCE_BYTES = 1024 * 1024  # network reads are gathered into chunks of at least this
COALESCE_SECONDS = 0.25  # ... unless this long passed: a slow source still reports progress


def coalesce(chunks: Iterator[memoryview], buffer: bytearray) -> Iterator[memoryview]:
    """Gather small network reads into larger chunks (>= 1 MiB, or every 0.25 s).

    A server (or a network) that delivers tiny reads would otherwise cost one inspector,
    hashing and write round per read; one copy into a reused buffer is far cheaper. The time
    bound keeps progress, cancel and the stall watchdog live on a slow download.
    """
    view = memoryview(buffer)
    filled = 0
    last = time.monotonic()
    for received in chunks:
        rest = received
        while len(rest):
            n = min(len(rest), len(view) - filled)
            view[filled : filled + n] = rest[:n]
            filled += n
            rest = rest[n:]
            now = time.monotonic()
            if filled == len(view) or (filled >= COALESCE_BYTES or now - last >= COALESCE_SECONDS):
                yield view[:filled]
                filled = 0
                last = now
    if filled:
        yield view[:filled]


def check_space(where: Path, needed: int | None) -> None:
    """Fail with NoSpace when ``needed`` bytes (if known) do not fit where they would land."""
    free = shutil.disk_usage(where).free
    if needed is not None and needed > free:
        raise NoSpace(
            f"staging has {free} bytes free but the source is {needed} bytes: "
            f"free space in {where} or move staging_dir"
        )


def _copy(
    ctx: JobContext, chunks: Iterator[memoryview], target: Path, info: SourceInfo, *, keep: int = 0
) -> dict[str, Any]:
    # keep > 0: the first ``keep`` bytes are already staged (a resumed download).
    flags = os.O_WRONLY | os.O_CREAT | (0 if keep else os.O_TRUNC)
    fd = os.open(target, flags, 0o600)
    total = None if info.length is None else info.start + info.length
    copier = _kernel_copier(ctx, fd) if not keep else None
    try:

        def sink(chunk: memoryview, offset: int) -> None:
            if offset + len(chunk) <= keep:
                return  # read back from the staged file itself: already there
            if copier is not None:
                copier.copy(chunk, offset)
                return
            # Zero blocks are not written: they stay holes, so staged raw images stay sparse.
            for start, end in data_runs(chunk):
                extents.pwrite_all(fd, chunk[start:end], offset + start)

        scanned = scan(
            chunks,
            ctx.settings,
            declared=ctx.request.disk_format,
            extra_algo=ctx.request.os_hash_algo,
            sink=sink,
            progress=lambda done: ctx.progress(done, total),
        )
        if copier is not None:
            copier.finish()
        if not scanned["complete"]:
            # Refused from its first bytes: fail the stage before staging the rest.
            Verdict(**scanned["verdict"]).raise_if_rejected()
        os.ftruncate(fd, scanned["disk_size"])
        # No fsync: the staged file only has to survive a worker crash (the page cache does),
        # and a lost host loses local staging anyway; syncing would cost a full write-back of
        # the source on the hot path.
    finally:
        if copier is not None:
            copier.close()
        os.close(fd)
    # A decompressed image is stored as the bare disk it contains.
    container = "bare" if scanned["compression"] else ctx.request.container_format
    return {"path": str(target), "container_format": container, **scanned}


def scan(
    chunks: Iterator[memoryview],
    settings: Settings,
    *,
    declared: str | None,
    extra_algo: str | None,
    sink: Callable[[memoryview, int], None] | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, Any]:
    """Count, cap, hash, decompress and inspect a byte stream, handing disk bytes to ``sink``.

    One pass: each received chunk is counted and hashed as it is pulled; if the stream starts
    with a gzip/zstd/xz magic, the disk bytes are its decompressed output (one layer, capped),
    otherwise the received chunks themselves. The inspector sees the disk bytes before ``sink``
    does. A refusal that is certain before the end stops the reading before the next chunk
    (``complete`` is then False and sizes and hashes are None), so at most one chunk past the
    header region is ever read for a refused image.

    Raises:
        SizeLimitExceeded: more than ``max_image_bytes`` arrived. (A decompression bomb, a
            nested layer or a damaged stream is a refusal verdict, like an early refusal.)
    """
    inspector = StreamInspector(declared, settings)
    extra = _extra_hash(settings, extra_algo)
    with MultiHasher(settings.hash_algo) as hasher:
        received = _received(chunks, settings, hasher, extra, progress)
        compression, disk_chunks = _disk_bytes(received, settings)
        offset = 0
        refused: Verdict | None = None
        try:
            for chunk in disk_chunks:
                if refused is not None:
                    # More bytes would be staged for an image already refused: stop reading.
                    return {"complete": False, "compression": compression, **_refusal(refused)}
                refused = inspector.feed(chunk)
                if sink is not None:
                    sink(chunk, offset)
                offset += len(chunk)
        except PermanentError as exc:
            if exc.code not in decompression.REASON_CODES:
                raise
            # A bomb, a nested layer or a damaged stream: refuse the content seen so far.
            broken = reject(inspector.best_guess(), exc.code, exc.message)
            return {"complete": False, "compression": compression, **_refusal(broken)}
        digests = hasher.digests()
    verdict = refused or inspector.verdict()
    return {
        "complete": True,
        "size": digests.size,
        "disk_size": offset,
        "compression": compression,
        "md5": digests.md5,
        "hash_algo": digests.algo,
        "hash_value": digests.value,
        "extra_hash": (
            {"algo": extra.name, "value": extra.hexdigest()} if extra is not None else None
        ),
        "verdict": verdict.as_output(),
    }


def _refusal(verdict: Verdict) -> dict[str, Any]:
    # The stream was not read to its end: sizes and hashes are unknown.
    unknown = dict.fromkeys(("size", "disk_size", "md5", "hash_algo", "hash_value", "extra_hash"))
    return {**unknown, "verdict": verdict.as_output()}


def _received(
    chunks: Iterator[memoryview],
    settings: Settings,
    hasher: MultiHasher,
    extra: hashlib._Hash | None,
    progress: Callable[[int], object] | None,
) -> Iterator[memoryview]:
    """The received chunks, each counted against the cap and hashed as it is pulled."""
    for chunk in chunks:
        if hasher.size + len(chunk) > settings.max_image_bytes:
            raise SizeLimitExceeded(
                f"the source is larger than max_image_bytes={settings.max_image_bytes}",
                code="upload_limit",
            )
        hasher.update(chunk)
        if extra is not None:
            extra.update(chunk)
        if progress is not None:
            progress(hasher.size)
        yield chunk


def _disk_bytes(
    received: Iterator[memoryview], settings: Settings
) -> tuple[str | None, Iterator[memoryview]]:
    """Peek at the first bytes: the compression found and the stream of disk bytes."""
    head: list[memoryview] = []
    seen = 0
    for chunk in received:
        # Tiny first chunks (HTTP) are copied so that a later chunk cannot overwrite them.
        head.append(chunk if len(chunk) >= decompression.MAGIC_LENGTH else memoryview(bytes(chunk)))
        seen += len(chunk)
        if seen >= decompression.MAGIC_LENGTH:
            break
    start = b"".join(bytes(c[: decompression.MAGIC_LENGTH]) for c in head)
    replayed = itertools.chain(head, received)
    kind = decompression.detect(start)
    if kind is None:
        return None, replayed
    out = bytearray(settings.chunk_size)
    return kind, decompression.decompress(kind, replayed, out, settings.max_decompressed_bytes)


def _extra_hash(settings: Settings, algo: str | None) -> hashlib._Hash | None:
    # A user may declare a hash in another algorithm than ours; compute that one too.
    if algo is None or algo == settings.hash_algo:
        return None
    return hashlib.new(algo)


def _kernel_copier(ctx: JobContext, fd: int) -> _KernelCopier | None:
    """A kernel copier for an uncompressed local file (its staged bytes equal its bytes)."""
    if ctx.request.method != "local-file":
        return None
    path = Path(ctx.request.source)
    try:
        with path.open("rb") as handle:
            head = handle.read(decompression.MAGIC_LENGTH)
    except OSError:
        return None  # the normal path reports the error
    if decompression.detect(head) is not None:
        return None  # staged bytes are the decompressed output, not the file's bytes
    return _KernelCopier(path, fd)


class _KernelCopier:
    """Stages a local file with ``copy_file_range`` on a helper thread, run by run.

    The scan loop still reads every byte once (to hash and inspect it); writing those bytes
    from user space costs ~3x more here than letting the kernel copy the same, page-cache-hot
    ranges of the source, and the helper thread overlaps that copy with the hashing. Zero runs
    are skipped, so holes stay holes.
    """

    def __init__(self, source: Path, fd: int) -> None:
        self._src = os.open(source, os.O_RDONLY)
        self._dst = fd
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-copy")
        self._futures: list[Future[None]] = []

    def copy(self, chunk: memoryview, offset: int) -> None:
        """Queue the non-zero runs of ``chunk`` (at ``offset`` in the source) for copying."""
        self._raise_failures()
        runs = [(offset + a, b - a) for a, b in data_runs(chunk)]
        self._futures.append(self._pool.submit(self._copy_runs, runs))

    def finish(self) -> None:
        """Wait for every queued copy; raise the first failure."""
        for future in self._futures:
            future.result()
        self._futures.clear()

    def close(self) -> None:
        """Stop the helper thread and close the source."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self._src)

    def _raise_failures(self) -> None:
        done = [f for f in self._futures if f.done()]
        for future in done:
            future.result()
            self._futures.remove(future)

    def _copy_runs(self, runs: list[tuple[int, int]]) -> None:
        for start, length in runs:
            copied = 0
            try:
                while copied < length:
                    n = os.copy_file_range(
                        self._src, self._dst, length - copied, start + copied, start + copied
                    )
                    if n == 0:
                        raise SourceUnavailable("the source file shrank while it was staged")
                    copied += n
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace("staging ran out of space: free space there and retry") from exc
                raise

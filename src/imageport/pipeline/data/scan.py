"""The one-pass scan: count and cap, hash, decompress and inspect a byte stream as it flows.

Every way bytes enter imageport — the stage step of a worker, an API upload (``PUT /stage``,
``PUT /file``) and ``imageport inspect`` — goes through :func:`scan`, so the caps, hashes and
inspector verdict are computed the same way, once, while the bytes pass. :func:`coalesce`
gathers small network reads into chunks first.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

from imageport.config import Settings
from imageport.errors import PermanentError, SizeLimitExceeded
from imageport.pipeline.data import decompression
from imageport.pipeline.data.hashing import MultiHasher
from imageport.pipeline.safety.inspector import StreamInspector, Verdict, reject


class ExtraHash(BaseModel):
    """A digest in an algorithm the user declared besides the configured one."""

    model_config = ConfigDict(frozen=True)

    algo: str
    value: str


class ScanResult(BaseModel):
    """What one pass over a byte stream found.

    When the inspector refused the bytes before their end (``complete`` is False) the stream
    was not read to its end, so sizes and hashes are None.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    complete: bool
    #: Bytes received (compressed bytes when the stream was compressed).
    size: int | None = None
    #: Bytes of the disk image (the decompressed bytes when the stream was compressed).
    disk_size: int | None = None
    #: ``gzip``, ``zstd`` or ``xz`` when one layer was undone.
    compression: str | None = None
    md5: str | None = None
    hash_algo: str | None = None
    hash_value: str | None = None
    extra_hash: ExtraHash | None = None
    verdict: Verdict

    def digest(self, algo: str) -> str | None:
        """The hex digest of the received bytes in ``algo`` (None when it was not computed)."""
        if algo == self.hash_algo:
            return self.hash_value
        if self.extra_hash is not None and self.extra_hash.algo == algo:
            return self.extra_hash.value
        return None


COALESCE_BYTES = 1024 * 1024  # network reads are gathered into chunks of at least this
COALESCE_SECONDS = 0.25  # ... unless this long passed: a slow source still reports progress


def coalesce(chunks: Iterable[memoryview]) -> Iterator[memoryview]:
    """Gather small network reads into larger chunks (>= 1 MiB, or every 0.25 s).

    A server (or a network) that delivers tiny reads would otherwise cost one inspector,
    hashing and write round per read; one join of the reads is far cheaper. The time bound
    keeps progress, cancel and the stall watchdog live on a slow download. Each chunk is a view
    of a ``bytes`` object of its own, which the background writer keeps until written instead
    of copying it: a read is copied once (by the join), not twice.
    """
    pieces: list[memoryview] = []
    size = 0
    last = time.monotonic()
    for received in chunks:
        if not len(received):
            continue
        # Kept until the join: a view of someone's reused buffer is copied now, a view of
        # bytes (what httpx and uvicorn hand over) cannot change and is kept as it is.
        pieces.append(received if isinstance(received.obj, bytes) else memoryview(bytes(received)))
        size += len(received)
        now = time.monotonic()
        if size >= COALESCE_BYTES or now - last >= COALESCE_SECONDS:
            yield _joined(pieces)
            pieces, size, last = [], 0, now
    if pieces:
        yield _joined(pieces)


def _joined(pieces: list[memoryview]) -> memoryview:
    return pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))


def scan(
    chunks: Iterator[memoryview],
    settings: Settings,
    *,
    declared: str | None,
    extra_algo: str | None,
    sink: Callable[[memoryview, int], None] | None = None,
    progress: Callable[[int], object] | None = None,
    hashed: bool = True,
) -> ScanResult:
    """Count, cap, hash, decompress and inspect a byte stream, handing disk bytes to ``sink``.

    One pass: each received chunk is counted and hashed as it is pulled; if the stream starts
    with a gzip/zstd/xz magic, the disk bytes are its decompressed output (one layer, capped),
    otherwise the received chunks themselves. The inspector sees the disk bytes before ``sink``
    does. A refusal that is certain before the end stops the reading before the next chunk
    (``complete`` is then False and sizes and hashes are None), so at most one chunk past the
    header region is ever read for a refused image.

    ``hashed=False`` skips MD5 and the multihash (``md5`` and ``hash_value`` are then None):
    hashing costs more CPU than anything else here, and when no declared digest is checked
    against these bytes and they are converted before being stored, nobody needs it.

    Raises:
        SizeLimitExceeded: more than ``max_image_bytes`` arrived. (A decompression bomb, a
            nested layer or a damaged stream is a refusal verdict, like an early refusal.)
    """
    inspector = StreamInspector(declared, settings)
    extra = _extra_hash(settings, extra_algo) if hashed else None
    with MultiHasher(settings.hash_algo) as hasher:
        counter = _Counter()
        received = _received(chunks, settings, counter, hasher if hashed else None, extra, progress)
        compression, disk_chunks = _disk_bytes(received, settings)
        offset = 0
        refused: Verdict | None = None
        try:
            for chunk in disk_chunks:
                if refused is not None:
                    # More bytes would be staged for an image already refused: stop reading.
                    return ScanResult(complete=False, compression=compression, verdict=refused)
                refused = inspector.feed(chunk)
                if sink is not None:
                    sink(chunk, offset)
                offset += len(chunk)
        except PermanentError as exc:
            if exc.code not in decompression.REASON_CODES:
                raise
            # A bomb, a nested layer or a damaged stream: refuse the content seen so far.
            broken = reject(inspector.best_guess(), exc.code, exc.message)
            return ScanResult(complete=False, compression=compression, verdict=broken)
        digests = hasher.digests() if hashed else None
    verdict = refused or inspector.verdict()
    return ScanResult(
        complete=True,
        size=counter.size,
        disk_size=offset,
        compression=compression,
        md5=digests.md5 if digests else None,
        hash_algo=digests.algo if digests else None,
        hash_value=digests.value if digests else None,
        extra_hash=ExtraHash(algo=extra.name, value=extra.hexdigest()) if extra else None,
        verdict=verdict,
    )


class _Counter:
    """Bytes received so far (kept apart from the hasher, which may not run)."""

    size = 0


def _received(
    chunks: Iterator[memoryview],
    settings: Settings,
    counter: _Counter,
    hasher: MultiHasher | None,
    extra: hashlib._Hash | None,
    progress: Callable[[int], object] | None,
) -> Iterator[memoryview]:
    """The received chunks, each counted against the cap (and hashed) as it is pulled."""
    for chunk in chunks:
        if counter.size + len(chunk) > settings.max_image_bytes:
            raise SizeLimitExceeded(
                f"the source is larger than max_image_bytes={settings.max_image_bytes}",
                code="upload_limit",
            )
        counter.size += len(chunk)
        if hasher is not None:
            hasher.update(chunk)
        if extra is not None:
            extra.update(chunk)
        if progress is not None:
            progress(counter.size)
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

"""MD5 plus the configured secure hash, computed in parallel threads over the same buffers.

hashlib releases the GIL on large buffers, so the two hashes run in parallel: about twice the
throughput of both in one thread on a 2-core machine. A caller that waits for each buffer
(:meth:`MultiHasher.update`) hashes MD5 itself and the secure hash on a helper thread; a caller
that does not (:meth:`MultiHasher.feed`, a conversion reading its next range meanwhile) hands
each hash to a helper thread of its own. Then the caller's other work (reads, bookkeeping) is
not added to one of the hashes (measured for the headline import: the follower's thread took
5.8 CPU-s hashing MD5 and reading, beside 5.4 for SHA-512; now 5.4 and 5.2, and 0.3 for the
reads). On 2 cores the wall time is the same within noise, the reads still needing a core;
with more cores they run beside both hashes instead of delaying one.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from imageport.errors import InvalidRequest
from imageport.pipeline.data.extents import read_extents

SUPPORTED_ALGOS = ("sha256", "sha384", "sha512")
_PARALLEL_MIN = 256 * 1024  # bytes; below this, a thread hand-off costs more than it saves
_ZERO_PIECE = 8 * 1024 * 1024  # bytes of zeros hashed per step of update_zeros
_MAX_QUEUED = 64  # hash steps queued before feed waits for the oldest
_BOTH_LOCK = threading.Lock()  # settles the futures _both returns


@dataclass(frozen=True)
class Digests:
    """The hashes of one byte stream."""

    md5: str
    algo: str
    value: str
    size: int


class MultiHasher:
    """Feeds every buffer to MD5 and one multihash algorithm, the two in parallel."""

    def __init__(self, algo: str, *, thread_init: Callable[[], None] | None = None) -> None:
        """Hash with MD5 and ``algo``; ``thread_init`` runs first on the helper thread."""
        if algo not in SUPPORTED_ALGOS:
            raise InvalidRequest(
                f"unsupported hash algorithm {algo!r}; use one of {', '.join(SUPPORTED_ALGOS)}"
            )
        self.algo = algo
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._secure = hashlib.new(algo)
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hash", initializer=thread_init
        )
        # MD5 of fed buffers; its thread starts at the first feed (update hashes MD5 inline).
        self._md5_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hash-md5", initializer=thread_init
        )
        self._zeros: memoryview | None = None  # allocated at the first hole only
        self._queued: deque[Future[None]] = deque()  # hash steps not yet waited for
        self._md5_queued: deque[Future[None]] = deque()  # of which MD5 steps
        self.size = 0

    def update(self, data: memoryview | bytes) -> None:
        """Hash ``data``; returns when both hashes have consumed it (the buffer may be reused)."""
        self.size += len(data)
        if len(data) < _PARALLEL_MIN:
            self._drain()  # the hashes must take fed buffers first: order is the digest
            self._md5.update(data)
            self._secure.update(data)
            return
        self._drain_md5()  # MD5 runs here now, after the fed buffers
        future = self._pool.submit(self._secure.update, data)
        self._md5.update(data)
        future.result()

    def feed(self, data: memoryview | bytes) -> Future[None]:
        """Hash ``data`` without waiting for either hash.

        Each hash is queued on its own helper thread behind the buffers fed before (so in
        order): neither hash waits for the other, nor for the caller's next read. ``data``
        must not change until the returned future is done (both hashes consumed it).
        """
        self.size += len(data)
        md5 = self._md5_pool.submit(self._md5.update, data)
        secure = self._pool.submit(self._secure.update, data)
        self._md5_queued.append(md5)
        self._queued.extend((md5, secure))
        while self._queued and (len(self._queued) > _MAX_QUEUED or self._queued[0].done()):
            self._queued.popleft().result()  # bounded bookkeeping; raises a failed step
        while self._md5_queued and self._md5_queued[0].done():
            self._md5_queued.popleft()
        return _both(md5, secure)

    def update_zeros(self, length: int) -> None:
        """Hash ``length`` zero bytes (a hole: its bytes are never read, only hashed).

        Fed without waiting: the zero buffer never changes.
        """
        if self._zeros is None:
            self._zeros = memoryview(bytes(_ZERO_PIECE))
        while length > 0:
            n = min(length, len(self._zeros))
            self.feed(self._zeros[:n])
            length -= n

    def _drain(self) -> None:
        """Wait for every queued hash step."""
        while self._queued:
            self._queued.popleft().result()
        self._md5_queued.clear()

    def _drain_md5(self) -> None:
        """Wait for every queued MD5 step (MD5 is about to be updated on this thread)."""
        while self._md5_queued:
            self._md5_queued.popleft().result()

    def digests(self) -> Digests:
        """The hex digests so far (once every queued step is done)."""
        self._drain()
        return Digests(
            md5=self._md5.hexdigest(),
            algo=self.algo,
            value=self._secure.hexdigest(),
            size=self.size,
        )

    def close(self) -> None:
        """Stop the helper threads."""
        self._md5_pool.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _both(first: Future[None], second: Future[None]) -> Future[None]:
    """A future done when ``first`` and ``second`` both are (failed if either failed)."""
    both: Future[None] = Future()
    pending = [first, second]

    def settle(_done: Future[None]) -> None:
        # Done callbacks run on the two helper threads: the last of them settles ``both``.
        with _BOTH_LOCK:
            if both.done() or not all(f.done() for f in pending):
                return
            failure = first.exception() or second.exception()
            if failure is not None:
                both.set_exception(failure)
            else:
                both.set_result(None)

    for future in pending:
        future.add_done_callback(settle)
    return both


def hash_file(path: Path, algo: str, buffer: bytearray) -> Digests:
    """MD5 and ``algo`` of a local file; its holes are hashed from zeros, never read."""
    with MultiHasher(algo) as hasher:
        for piece in read_extents(path, buffer):
            if piece.data is not None:
                hasher.update(piece.data)
            else:
                hasher.update_zeros(piece.hole)
        return hasher.digests()


def same_digest(expected: str, actual: str) -> bool:
    """Constant-time, case-insensitive comparison of two hex digests."""
    return hmac.compare_digest(expected.strip().lower().encode(), actual.lower().encode())


def parse_hash_spec(spec: str) -> tuple[str, str]:
    """Split ``ALGO:HEX`` (as given to ``--hash``) and check both parts.

    Raises:
        InvalidRequest: if the algorithm is unknown or the value is not hex of the right length.
    """
    algo, sep, value = spec.partition(":")
    algo = algo.strip().lower()
    value = value.strip().lower()
    if not sep or algo not in SUPPORTED_ALGOS:
        raise InvalidRequest(
            f"--hash must be ALGO:HEX with ALGO one of {', '.join(SUPPORTED_ALGOS)}"
        )
    _check_hex(value, hashlib.new(algo).digest_size * 2, f"{algo} hash")
    return algo, value


def check_md5(value: str) -> str:
    """Validate an MD5 hex digest given by a user and return it lower-cased."""
    value = value.strip().lower()
    _check_hex(value, 32, "MD5 checksum")
    return value


def _check_hex(value: str, length: int, what: str) -> None:
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise InvalidRequest(f"the {what} must be {length} hex digits, got {value!r}")

"""Convert a qcow2 to raw while it is still being staged, so the output hash overlaps staging.

Producing MD5 and the secure hash of the raw output is the one piece of work no import can
avoid, and it is the bulk of a qcow2 -> raw import. Done after staging, it adds to the upload's
time; done while the upload arrives, the two share the machine. :class:`EarlyConversion` follows
the staged file as the stage writer fills it (``advance``): it learns the guest layout from the
qcow2 tables as they arrive (:mod:`~imageport.pipeline.data.qcow2_stream`), copies the data
ranges into ``early.raw`` beside the staged file and hashes the guest in order, holes included,
on the same one-pass path as the conversion stage (:func:`~imageport.pipeline.data.mapped.
write_raw`). Following an API upload, its threads run at nice 19 on what the upload leaves:
free for a client slower than the API receives; a CPU-bound upload still loses a fifth of its
speed to them, which ``early_conversion = false`` avoids (README, Performance).

Nothing it produces is trusted by itself. It records the digest of the layout it followed
(``early.json``); the conversion stage, after the inspector passed the complete file and
``qemu-img map`` described it, adopts ``early.raw`` only when qemu's layout has the same
digest, the staged file is the one followed (device, inode, size, modification time) and the
hash algorithm is still the configured one: then ``early.raw`` holds exactly the bytes the
one-pass conversion would write. Otherwise, or when the follower gave up (a layout it does not
follow, a shortage of space, a failed stage), the files are removed and the stage converts as
usual. No qemu process runs on the partial file; the follower only reads bytes of a file
imageport writes, at offsets it checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from imageport.config import Settings
from imageport.errors import NotStreamable, PipelineError
from imageport.pipeline.data.hashing import MultiHasher
from imageport.pipeline.data.mapped import LayoutDigest, Run, coalesce, write_raw
from imageport.pipeline.data.qcow2_stream import guest_runs

log = structlog.get_logger(__name__)

OUTPUT_NAME = "early.raw"  # beside the staged file
RECORD_NAME = "early.json"
WAIT_TICK = 0.5  # seconds between progress reports of a job waiting for its follower
#: The nice value of a follower's threads when it follows an API upload: it then runs on the
#: CPU the upload leaves idle, and the API's other requests come first. A worker's stage step
#: follows at normal priority: nothing there is more urgent than the import itself.
UPLOAD_NICE = 19


@dataclass(frozen=True)
class EarlyResult:
    """What the follower produced: the raw output's digests and the layout it followed."""

    layout: str
    staged: str  # which staged file: device, inode, size and modification time
    size: int
    md5: str
    algo: str
    value: str


class _Stopped(Exception):
    """The staging failed or was replaced: the follower stops (never leaves this module)."""


class EarlyConversion:
    """Follows one staged qcow2 as it is written and converts it to raw on its own thread."""

    def __init__(
        self, staged: Path, *, algo: str, chunk_size: int, max_virtual: int, nice: int = 0
    ) -> None:
        self.staged = staged
        self._nice = nice
        self.output = staged.with_name(OUTPUT_NAME)
        self.record = staged.with_name(RECORD_NAME)
        # Written under a name of its own: a follower replaced a moment after it started
        # can never write into its successor's output.
        self.partial = staged.with_name(f".early.{uuid.uuid4().hex}.partial")
        self._algo, self._chunk, self._max_virtual = algo, chunk_size, max_virtual
        self._cond = threading.Condition()
        self._ready = 0  # bytes [0, ready) of the staged file are final
        self._final: int | None = None  # the staged size, once staging is complete
        self._stopped = False
        self._result: EarlyResult | None = None
        self.done = 0  # guest bytes converted so far
        self._thread = threading.Thread(target=self._run, name="early-convert", daemon=True)

    def begin(self) -> None:
        """Start the follower thread."""
        self._thread.start()

    def advance(self, upto: int) -> None:
        """Bytes ``[0, upto)`` of the staged file are written and will not change."""
        with self._cond:
            if upto > self._ready:
                self._ready = upto
                self._cond.notify_all()

    def complete(self, size: int) -> None:
        """Staging succeeded: the staged file is ``size`` bytes and final."""
        with self._cond:
            self._final = size
            self._ready = max(self._ready, size)
            self._cond.notify_all()

    def abandon(self) -> None:
        """Staging failed or was replaced: stop and remove the output (on the follower thread)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def result(self) -> EarlyResult | None:
        """Wait for the follower; what it produced, or None when it gave up."""
        self._thread.join()
        return self._result

    def finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; whether the follower is done."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _wait(self, upto: int) -> None:
        """Return once bytes ``[0, upto)`` are staged; raise if they never will be."""
        with self._cond:
            while self._ready < upto:
                if self._stopped:
                    raise _Stopped
                if self._final is not None:
                    raise NotStreamable("the layout points past the end of the file")
                self._cond.wait()
            if self._stopped:
                raise _Stopped

    def _lower_priority(self) -> None:
        """Give the calling thread the follower's nice value (Linux: nice is per thread)."""
        if self._nice:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)

    def _check_stop(self, done: int) -> None:
        self.done = done
        with self._cond:
            if self._stopped:
                raise _Stopped

    def _run(self) -> None:
        try:
            self._lower_priority()
            self._result = _REGISTRY.publish(self, self._convert())
        except (_Stopped, PipelineError, OSError) as exc:
            # Not a failure of the import: the conversion stage converts as usual.
            if not isinstance(exc, _Stopped):
                log.info("early_conversion_skipped", staged=str(self.staged), reason=str(exc))
            self.partial.unlink(missing_ok=True)
        finally:
            _REGISTRY.remove(self)

    def _convert(self) -> EarlyResult:
        layout = LayoutDigest()
        with self.staged.open("rb", buffering=0) as handle:
            fd = handle.fileno()

            def read_at(offset: int, length: int) -> bytes:
                self._wait(offset + length)
                data = os.pread(fd, length, offset)
                # Final but short: trailing zeros the stage writer left as a hole, which the
                # file's length covers only once staging truncates it to its size.
                return data.ljust(length, b"\0")

            def runs() -> Iterator[Run]:
                followed = guest_runs(read_at, self._max_virtual)
                for run in coalesce(followed, max_data=self._chunk):
                    layout.add(run)
                    yield run

            with MultiHasher(self._algo, thread_init=self._lower_priority) as hasher:
                digests = write_raw(
                    self.staged,
                    runs(),
                    self.partial,
                    hasher,
                    self._chunk,
                    self._check_stop,
                    ready=self._wait,
                    thread_init=self._lower_priority,
                )
        with self._cond:
            while self._final is None and not self._stopped:
                self._cond.wait()  # a result stands only for a staging that succeeded
            if self._stopped or self._final is None:
                raise _Stopped
        return EarlyResult(
            layout=layout.hexdigest(),
            staged=identity(self.staged),
            size=digests.size,
            md5=digests.md5,
            algo=digests.algo,
            value=digests.value,
        )


class _Registry:
    """The followers running in this process, by staged path.

    Process-wide on purpose: a follower belongs to a file, and the request that started it
    (an upload) is over long before the job that uses it (the import) begins.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, EarlyConversion] = {}

    def add(self, follower: EarlyConversion) -> None:
        """Register ``follower``; one already following the same path is abandoned."""
        with self._lock:
            old = self._running.pop(str(follower.staged), None)
            self._running[str(follower.staged)] = follower
        if old is not None:
            old.abandon()

    def get(self, staged: Path) -> EarlyConversion | None:
        with self._lock:
            return self._running.get(str(staged))

    def pop(self, staged: Path) -> EarlyConversion | None:
        with self._lock:
            return self._running.pop(str(staged), None)

    def publish(self, follower: EarlyConversion, result: EarlyResult) -> EarlyResult:
        """Write ``follower``'s record unless it was replaced or stopped meanwhile.

        Under the lock: once :meth:`add` or :meth:`pop` replaced a follower, it can no longer
        leave a record for a staged file it did not follow to the end.
        """
        with self._lock:
            if self._running.get(str(follower.staged)) is not follower:
                raise _Stopped
            follower.partial.replace(follower.output)
            follower.record.write_text(json.dumps(asdict(result)))
            return result

    def remove(self, follower: EarlyConversion) -> None:
        with self._lock:
            if self._running.get(str(follower.staged)) is follower:
                del self._running[str(follower.staged)]


_REGISTRY = _Registry()


def start(
    staged: Path,
    *,
    disk_format: str | None,
    target_format: str | None,
    expected_size: int | None,
    algo: str,
    chunk_size: int,
    max_virtual: int,
    nice: int = 0,
) -> EarlyConversion | None:
    """Start following ``staged`` (already created) when an early conversion can pay off.

    Only a qcow2 declared as such and converted to raw is followed, and only when the staging
    file system has room for the output beside the source (twice the expected size): the
    follower must never take the space the staging itself needs.
    """
    if disk_format != "qcow2" or target_format != "raw" or not expected_size:
        return None
    if shutil.disk_usage(staged.parent).free < 2 * expected_size:
        return None
    follower = EarlyConversion(
        staged, algo=algo, chunk_size=chunk_size, max_virtual=max_virtual, nice=nice
    )
    _REGISTRY.add(follower)  # first: a follower it replaces can no longer leave a record
    discard(staged)
    follower.begin()
    return follower


class Unfollowed:
    """Stands in for a follower when none runs: the stage writer tells nobody."""

    def advance(self, upto: int) -> None:
        """Nothing follows the file."""

    def complete(self, size: int) -> None:
        """Nothing follows the file."""


@contextlib.contextmanager
def following(
    staged: Path,
    *,
    disk_format: str | None,
    target_format: str | None,
    expected_size: int | None,
    settings: Settings,
    nice: int = 0,
) -> Iterator[EarlyConversion | Unfollowed]:
    """:func:`start` a follower for the staging of ``staged``; stop it if the staging fails.

    The stage writer calls ``advance`` as the file fills and ``complete`` once it is final,
    on a follower or on an :class:`Unfollowed` when no early conversion pays off.
    """
    follower = start(
        staged,
        disk_format=disk_format if settings.early_conversion else None,
        target_format=target_format,
        expected_size=expected_size,
        algo=settings.hash_algo,
        chunk_size=settings.chunk_size,
        max_virtual=settings.max_virtual_size,
        nice=nice,
    )
    if follower is None:
        yield Unfollowed()
        return
    try:
        yield follower
    except BaseException:
        stop(staged)
        raise


def stop(staged: Path) -> None:
    """Abandon the follower of ``staged``, if one runs (the staging failed or is replaced).

    Once this returns, that follower leaves no record behind.
    """
    follower = _REGISTRY.pop(staged)
    if follower is not None:
        follower.abandon()


def identity(staged: Path) -> str:
    """Which file ``staged`` is: a record made for another file (or version) never matches."""
    st = staged.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


Tick = Callable[[int], None]


def wait(staged: Path, tick: Tick | None = None) -> None:
    """Wait for the follower of ``staged``, if one runs (before its files are used or moved).

    ``tick`` is called with the follower's progress (guest bytes) every half second: a job
    waiting here still reports progress, and its cancel or shutdown (raised by ``tick``)
    stops the follower too.
    """
    follower = _REGISTRY.get(staged)
    if follower is None:
        return
    try:
        while not follower.finished(WAIT_TICK):
            if tick is not None:
                tick(follower.done)
    except BaseException:
        stop(staged)
        raise


def collect(staged: Path, tick: Tick | None = None) -> tuple[EarlyResult, Path] | None:
    """The early output of ``staged`` and where it is, once its follower is done; or None."""
    wait(staged, tick)
    record = staged.with_name(RECORD_NAME)
    output = staged.with_name(OUTPUT_NAME)
    try:
        fields = json.loads(record.read_text())
        result = EarlyResult(**fields)
    except (OSError, ValueError, TypeError):
        discard(staged)
        return None
    if not output.is_file():
        discard(staged)
        return None
    return result, output


def move(staged: Path, to: Path, tick: Tick | None = None) -> None:
    """Move the early files of ``staged`` beside ``to`` (an upload adopted by its import)."""
    wait(staged, tick)
    for name in (RECORD_NAME, OUTPUT_NAME):
        with contextlib.suppress(FileNotFoundError):
            staged.with_name(name).replace(to.with_name(name))


def discard(staged: Path) -> None:
    """Remove the early files of ``staged`` (the record first: no record, no adoption)."""
    for name in (RECORD_NAME, OUTPUT_NAME):
        with contextlib.suppress(FileNotFoundError):
            staged.with_name(name).unlink()

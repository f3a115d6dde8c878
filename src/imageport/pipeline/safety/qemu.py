"""The one place that starts qemu-img: always ``-f``, JSON output, limits, timeout, own group.

Every call runs ``[unshare --net --] prlimit --as=… --cpu=… -- qemu-img …`` (no shell,
``LC_ALL=C``) in a new process group, so a timeout or a cancel kills qemu-img and anything it
started; the network namespace is used wherever it can be created (:func:`network_sandbox`).
File names are always paths the pipeline created itself. subprocess errors never leave this
module: they become :class:`~imageport.errors.ConversionFailed` or
:class:`~imageport.errors.QemuTimeout`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageport import cpus
from imageport.errors import ConversionFailed, QemuOutputTooLarge, QemuTimeout

#: qemu-img's names for formats whose Glance disk_format name differs.
QEMU_FORMAT_NAMES = {"vhd": "vpc", "iso": "raw"}
CONVERT_ADDRESS_SPACE = 4 * 1024**3  # bytes; convert with -m 16 needs far less than this
#: Bytes of ``qemu-img map`` JSON read at most (about 80,000 extents, ~10 MiB parsed).
MAP_OUTPUT_LIMIT = 8 * 1024**2
_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_EXIT_WAIT = 0.01  # seconds to wait for an exit once output or EOF arrived
_POLL_INTERVAL = 0.2  # seconds between two checks of a running convert


def qemu_format(disk_format: str) -> str:
    """The qemu-img driver name for an Image API disk_format."""
    return QEMU_FORMAT_NAMES.get(disk_format, disk_format)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img process."""

    address_space: int  # bytes
    cpu_seconds: int
    timeout: float  # wall-clock seconds
    #: Bytes of stdout kept at most; past it qemu-img is killed (QemuOutputTooLarge).
    max_output: int = 16 * 1024**2


@dataclass(frozen=True)
class RunResult:
    """What a finished qemu-img process returned."""

    returncode: int
    stdout: bytes
    stderr: bytes


#: ``qemu-img info --output=json`` as parsed: qemu's own JSON document, read at this boundary
#: by the checks that need its fields (``format``, ``virtual-size``, ``format-specific``…).
QemuInfo = dict[str, Any]

#: Called with the progress percentage while a long call runs. To stop the call, it raises
#: (the job's progress raises JobInterrupted on cancel or shutdown): qemu-img's process group
#: is killed before the exception leaves :func:`run_limited`.
ProgressHook = Callable[[float], None]
Runner = Callable[[Sequence[str], Limits, ProgressHook | None], RunResult]


def run_limited(args: Sequence[str], limits: Limits, progress: ProgressHook | None) -> RunResult:
    """Run ``args`` under prlimit in a new process group with a wall-clock timeout.

    Raises:
        QemuTimeout: the timeout passed; the process group was killed.
        QemuOutputTooLarge: stdout passed ``limits.max_output``; the process group was killed.
        BaseException: whatever the progress hook raised, after the process group was killed.
    """
    argv = [
        *network_sandbox(),
        _which("prlimit"),
        f"--as={limits.address_space}",
        f"--cpu={limits.cpu_seconds}",
        "--",
        *args,
    ]
    env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with cpus.anywhere():  # a pinned worker's qemu-img may still use every idle core
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            process_group=0,  # its own group: a kill reaches everything qemu-img started
        )
    deadline = time.monotonic() + limits.timeout
    out = bytearray()
    err = bytearray()
    os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
    os.set_blocking(proc.stderr.fileno(), False)  # type: ignore[union-attr]
    try:
        while True:
            _drain(proc, out, err)
            if proc.poll() is not None:
                _drain(proc, out, err)
                _check_output_size(out, limits)
                break
            # A hostile image can make qemu-img print without end (a map of millions of
            # extents): our memory must not follow it.
            _check_output_size(out, limits)
            if time.monotonic() > deadline:
                _kill_group(proc)
                raise QemuTimeout(
                    f"qemu-img did not finish within {limits.timeout:.0f}s and was stopped; "
                    "it will be retried (raise qemu_timeout_seconds for very large images)"
                )
            if progress is not None:
                match = None
                for match in _PROGRESS_RE.finditer(out):  # noqa: B007 - keep the last one
                    pass
                # A stop (cancel, shutdown) raises here; the finally clause kills the group.
                progress(float(match.group(1)) if match else 0.0)
                if len(out) > 4096:
                    del out[:-64]  # progress output grows forever; keep only the tail
            _wait_for_output(proc, _POLL_INTERVAL)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    return RunResult(proc.returncode, bytes(out), bytes(err))


def _check_output_size(out: bytearray, limits: Limits) -> None:
    if len(out) > limits.max_output:
        raise QemuOutputTooLarge(
            f"qemu-img printed more than {limits.max_output} bytes and was stopped"
        )


def _wait_for_output(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Sleep until qemu-img writes something or exits, at most ``timeout`` seconds.

    Waking on output (or on EOF, when it exits) instead of sleeping a fixed interval keeps a
    short ``qemu-img info`` at its own few milliseconds instead of a whole poll interval.
    """
    streams = [s for s in (proc.stdout, proc.stderr) if s is not None and not s.closed]
    ready, _, _ = select.select(streams, [], [], timeout) if streams else ([], [], [])
    if ready or not streams:
        # Output or EOF: give the process a moment to exit, so a closed pipe does not spin.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_EXIT_WAIT)


#: Ways to start qemu-img without network access, tried in order (see network_sandbox).
_SANDBOXES = (
    ("unshare", "--net", "--"),  # root (or CAP_SYS_ADMIN): a new, empty network namespace
    ("unshare", "--user", "--map-root-user", "--net", "--"),  # unprivileged user namespaces
)


@functools.cache
def _which(command: str) -> str:
    """The absolute path of ``command`` (looked up once: every exec would search PATH again)."""
    return shutil.which(command) or command


@functools.cache
def network_sandbox() -> tuple[str, ...]:
    """The command prefix that runs qemu-img in an empty network namespace, or ``()``.

    Probed once per process by running ``true`` under each candidate; where neither works
    (a container without the capability, user namespaces disabled) qemu-img runs without it,
    silently: the Python checks, ``-f``, the cut backing chain and the absence of
    qemu-block-extra remain the real defences, the namespace only makes a missed case harmless.
    """
    for candidate in _SANDBOXES:
        prefix = (_which(candidate[0]), *candidate[1:])
        try:
            probe = subprocess.run(  # noqa: PLW1510 - the return code is the answer
                [*prefix, "true"], capture_output=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _drain(proc: subprocess.Popen[bytes], out: bytearray, err: bytearray) -> None:
    for stream, buffer in ((proc.stdout, out), (proc.stderr, err)):
        data = stream.read() if stream is not None else None  # non-blocking: None if empty
        if data:
            buffer.extend(data)
    if len(err) > 65536:
        del err[: len(err) - 65536]  # a chatty qemu-img must not grow our memory


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class QemuImg:
    """qemu-img info and convert, with the limits from settings and an injected runner."""

    def __init__(
        self,
        *,
        binary: str = "qemu-img",
        info_limits: Limits,
        convert_timeout: float,
        runner: Runner = run_limited,
    ) -> None:
        self._binary = _which(binary)
        self._info_limits = info_limits
        self._convert_limits = Limits(
            address_space=CONVERT_ADDRESS_SPACE,
            # CPU time is bounded by the wall clock: at most both cores for the whole timeout.
            cpu_seconds=int(convert_timeout * 2) + 1,
            timeout=convert_timeout,
        )
        self._runner = runner

    def info(self, path: Path, disk_format: str | None) -> QemuInfo:
        """``qemu-img info -f FMT --output=json PATH``; ``disk_format=None`` is qemu's probe.

        The probe (no ``-f``) is only ever used as a second opinion on an image our own
        inspector already classified; its answer never chooses how the image is opened.
        """
        args = [self._binary, "info", "--output=json"]
        if disk_format is not None:
            args += ["-f", qemu_format(disk_format)]
        result = self._runner([*args, str(path)], self._info_limits, None)
        if result.returncode != 0:
            raise ConversionFailed(
                f"qemu-img cannot open the image as {disk_format or 'any format'}: "
                f"{_first_line(result.stderr)}",
                code="qemu_refused",
            )
        try:
            info: QemuInfo = json.loads(result.stdout)
        except ValueError as exc:
            raise ConversionFailed(
                f"qemu-img info printed no JSON: {result.stdout[:200]!r}", code="qemu_refused"
            ) from exc
        return info

    def map(self, path: Path, disk_format: str) -> list[dict[str, Any]] | None:
        """``qemu-img map -f FMT --output=json``: where each guest range's bytes lie.

        Returns None when the map is longer than :data:`MAP_OUTPUT_LIMIT` (a badly fragmented
        or hostile image): the caller then lets ``qemu-img convert`` do the reading.

        Raises:
            ConversionFailed: qemu-img cannot open the image or printed no JSON list.
        """
        args = [self._binary, "map", "--output=json", "-f", qemu_format(disk_format)]
        limits = dataclasses.replace(self._info_limits, max_output=MAP_OUTPUT_LIMIT)
        try:
            result = self._runner([*args, source_name(path, disk_format)], limits, None)
        except QemuOutputTooLarge:
            return None
        if result.returncode != 0:
            raise ConversionFailed(
                f"qemu-img cannot map the image as {disk_format}: {_first_line(result.stderr)}",
                code="qemu_refused",
            )
        try:
            extents = json.loads(result.stdout)
        except ValueError:
            extents = None
        if not isinstance(extents, list):
            raise ConversionFailed(
                f"qemu-img map printed no JSON list: {result.stdout[:200]!r}", code="qemu_refused"
            )
        return extents

    def convert(
        self,
        src: Path,
        src_format: str,
        dst: Path,
        dst_format: str,
        progress: ProgressHook | None = None,
    ) -> None:
        """Convert ``src`` to ``dst``: explicit input format, no cache, 16 coroutines, unordered.

        ``-t none -m 16 -W`` is the fastest steady setting measured (DESIGN.md); qemu-img keeps
        zero runs as holes in a raw output by default.
        """
        args = [
            self._binary,
            "convert",
            "-p",
            "-f",
            qemu_format(src_format),
            "-O",
            qemu_format(dst_format),
            "-t",
            "none",
            "-m",
            "16",
            "-W",
            source_name(src, src_format),
            str(dst),
        ]
        result = self._runner(args, self._convert_limits, progress)
        if result.returncode != 0:
            raise ConversionFailed(
                f"qemu-img convert {src_format} to {dst_format} failed: "
                f"{_first_line(result.stderr)}",
                code="conversion_failed",
            )


def source_name(path: Path, disk_format: str) -> str:
    """The name qemu-img opens a convert source by; for qcow2 with the backing chain cut.

    ``json:{"driver": "qcow2", "backing": null, ...}`` makes qemu-img open the image as if it
    had no backing file at all, should one ever get past the inspector (verified on qemu 7.2:
    the output holds zeros, not the backing file's data). ``-f qcow2`` is still passed and
    wins over the JSON's driver (``-f raw`` with this name reads the file as raw), so the
    format never comes from the name. The path is always one the pipeline created; it is
    serialised by ``json.dumps``, never pasted into the string.
    """
    if disk_format != "qcow2":
        return str(path)
    graph = {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": str(path)}}
    return "json:" + json.dumps(graph)


def _first_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "no error message"

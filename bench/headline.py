#!/usr/bin/env python3
"""Headline benchmark: a qcow2 imported as raw, through the CLI and the API, vs the hash floor.

The source is a 4 GiB (virtual) qcow2 holding 1 GiB of random data, built once by
scripts/make_sample.sh under the work directory and reused (issue 17). Once per run, before the
rounds, ``qemu-img convert -f qcow2 -O raw`` makes the reference output; its MD5 and SHA-512
are what every import must end with. Each round then measures, in an order that rotates from
round to round (so no variant always runs first or after the same neighbour):

* ``hash_floor``: MD5 and SHA-512 of the reference output, MD5 on the calling thread and SHA-512
  on a helper thread, neither waiting for the other (SHA-512 steps queued, data read into a
  ring of three 8 MiB buffers); the holes
  (SEEK_DATA/SEEK_HOLE) are hashed from a reused buffer of zeros, never read. The one piece of
  work no import can avoid, so the yardstick of the two import paths;
* ``write_floor`` (a diagnostic, not a goal): the hash floor while a helper thread also writes
  the data ranges into a new file with O_DIRECT (read again from the page cache into an
  aligned buffer, holes left as holes) and fsyncs it: what hashing costs on this machine when
  the output must also reach the disk, as it must for any import that stores it;
* ``cli``: ``imageport import SRC --disk-format qcow2 --target-format raw --json`` in a fresh
  ``IMAGEPORT_DATA_DIR`` (embedded mode: SQLite, file store, in-process worker); wall time;
  it must end active with the floor's MD5 and SHA-512;
* ``api``: glance-direct over HTTP against ``imageport api`` on 127.0.0.1 (noauth, embedded
  defaults: with the default ``memory://`` broker the API process runs the import itself, no
  ``imageport worker`` is needed) in a fresh data dir with ``IMAGEPORT_TARGET_FORMAT=raw``:
  ``POST /v2/images``, ``PUT /v2/images/ID/stage`` with the file, ``POST
  /v2/images/ID/import`` (glance-direct), then ``GET /v2/images/ID`` every 0.1 s until
  active; stage, import (POST import to active) and end to end (POST images to active) times;
* ``api_no_early``: the same with ``IMAGEPORT_EARLY_CONVERSION=false``: nothing converts
  while the upload arrives, the conversion starts once the stage is complete. Reported beside
  the default (not a goal): the trade-off between ``PUT /stage`` and the end to end time;
* ``plain_write``: the same HTTP client sends the same file to a sink on 127.0.0.1 with the
  API's server stack (uvicorn, bench/upload_sink.py) whose app only writes each body chunk to
  a file: what ``PUT /stage`` is compared with.

The HTTP client of both PUTs is ``curl -T`` when curl is installed (it was the faster and
steadier of the two here: ~4.0 s vs ~5.9 s median for 1 GiB to the sink), else an httpx
client streaming the file in 1 MiB chunks (``--client`` picks one); the JSON names it.

Ratios (per round, then medians): ``cli_ratio`` = cli / hash_floor and ``api_ratio`` = api end
to end / hash_floor (goal <= 1.3 each), ``stage_vs_plain`` = stage / plain_write seconds (goal
<= 1.0); ``write_floor_ratio`` = write_floor / hash_floor, ``cli_vs_write_floor`` and
``api_vs_write_floor`` the same two paths against write_floor (diagnostics). Peak RSS: of the
imageport process of the CLI (VmHWM, polled while it runs) and of the API process (its VmHWM
reset through /proc/PID/clear_refs before the stage and again before the import, so stage and
import peaks are told apart: in embedded mode the API process is the worker); qemu-img and any
other child is sampled separately. Goal: worker peak < 200 MiB.

Nothing is dropped from the page cache: the source and the reference output are read once
before round 1, so every variant starts from a warm source. Each variant writes new files in a
fresh temporary directory on the work directory's file system; they are removed and the file
systems synced (untimed) after each variant, so no variant pays for another's writeback.
``--old-floor`` adds the previous headline's floor (copy_file_range into staging, hash it,
``qemu-img convert -t none -m 16 -W``, hash the output) as one more variant.

One JSON document goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import mmap
import os
import platform
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Self

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
MAKE_SAMPLE = REPO / "scripts" / "make_sample.sh"
SINK = Path(__file__).resolve().parent / "upload_sink.py"
CHUNK = 8 << 20  # hashing buffer, as imageport's chunk_size
UPLOAD_CHUNK = 1 << 20  # bytes per request-body chunk the httpx client sends
COPY_CHUNK = 1 << 30
MIB = 1 << 20
SAMPLE_SECONDS = 0.1  # RSS sampling and status polling period
IMPORT_TIMEOUT = 900.0
GOAL_RATIO = 1.3
GOAL_STAGE_VS_PLAIN = 1.0
GOAL_WORKER_RSS_MIB = 200
CONVERT = ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-m", "16", "-W"]
VARIANTS = ("hash_floor", "write_floor", "cli", "api", "plain_write", "api_no_early")


def log(msg: str) -> None:
    print(f"headline: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--keep", action="store_true", help="keep temporary dirs (and server logs)")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "build" / "bench",
        help="where the sample and the temporary dirs live (default build/bench)",
    )
    p.add_argument(
        "--imageport-cmd",
        default=str(REPO / ".venv" / "bin" / "imageport"),
        help="command that runs imageport (shell-quoted; default .venv/bin/imageport)",
    )
    p.add_argument(
        "--only",
        default=",".join(VARIANTS),
        help=f"comma-separated variants to run (default all: {','.join(VARIANTS)})",
    )
    p.add_argument(
        "--client",
        choices=["httpx", "curl"],
        default=None,
        help="HTTP client for PUT /stage and plain_write: curl -T (the default when curl is "
        "installed: the faster of the two here) or httpx streaming the file in 1 MiB chunks",
    )
    p.add_argument("--old-floor", action="store_true", help="also run the previous floor")
    p.add_argument("--virtual-size", default="4G", help="sample virtual size (default 4G)")
    p.add_argument("--data-mib", type=int, default=1024, help="sample data MiB (default 1024)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.variants = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--only: choose among {', '.join(VARIANTS)}")
    if args.client is None:
        args.client = "curl" if shutil.which("curl") else "httpx"
    if args.client == "curl" and shutil.which("curl") is None:
        p.error("--client curl: curl not found")
    if args.old_floor:
        args.variants.append("old_floor")
    return args


# --- source and reference output ------------------------------------------------------------


def qemu_json(*args: str) -> object:
    out = subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def make_source(work_dir: Path, virtual_size: str, data_mib: int) -> tuple[Path, dict[str, int]]:
    src = work_dir / f"source-{virtual_size}-{data_mib}M.qcow2"
    subprocess.run(
        [str(MAKE_SAMPLE), str(src), virtual_size, str(data_mib)],
        check=True,
        stdout=sys.stderr,
    )
    info = qemu_json("info", "-f", "qcow2", "--output=json", str(src))
    runs = qemu_json("map", "-f", "qcow2", "--output=json", str(src))
    assert isinstance(info, dict)
    assert isinstance(runs, list)
    return src, {
        "virtual_size": int(info["virtual-size"]),
        "data_bytes": sum(int(e["length"]) for e in runs if e["data"]),
        "file_bytes": src.stat().st_size,
    }


def extents(fd: int, size: int) -> list[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of a file, from SEEK_DATA/SEEK_HOLE."""
    runs: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            data = size
        if data > pos:
            runs.append((pos, data - pos, False))
        if data >= size:
            break
        end = os.lseek(fd, data, os.SEEK_HOLE)
        runs.append((data, end - data, True))
        pos = end
    return runs


def warm(path: Path) -> int:
    """Read the data extents of path once (page cache); returns the bytes read."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    done = 0
    with path.open("rb", buffering=0) as f:
        fd = f.fileno()
        for offset, length, is_data in extents(fd, os.fstat(fd).st_size):
            if not is_data:
                continue
            f.seek(offset)
            left = length
            while left and (n := f.readinto(view[: min(left, CHUNK)])):
                left -= n
                done += n
    return done


def make_reference(src: Path, out: Path) -> dict[str, int]:
    """The output every import must reproduce: qemu-img convert -O raw of the source."""
    subprocess.run([*CONVERT, str(src), str(out)], check=True)
    with out.open("rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        data = sum(length for _, length, is_data in extents(fd, size) if is_data)
    warm(out)
    return {"size": size, "data_bytes": data}


# --- hash floor -----------------------------------------------------------------------------


class Feeder:
    """MD5 on the calling thread, SHA-512 queued on the pool's thread: neither waits."""

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha512 = hashlib.sha512()
        self._pool = pool
        self._free = [memoryview(bytearray(CHUNK)) for _ in range(3)]
        self._queued: collections.deque[
            tuple[concurrent.futures.Future[None], memoryview | None]
        ] = collections.deque()

    def buffer(self) -> memoryview:
        """A free buffer of the ring (waiting for SHA-512 to be done with the oldest)."""
        while not self._free:
            self._settle_oldest()
        return self._free.pop()

    def feed(self, chunk: memoryview, buffer: memoryview | None) -> None:
        """Hash ``chunk``; ``buffer`` (from :meth:`buffer`) is free again once SHA-512 is."""
        self._queued.append((self._pool.submit(self.sha512.update, chunk), buffer))
        self.md5.update(chunk)
        while len(self._queued) > 64 or (self._queued and self._queued[0][0].done()):
            self._settle_oldest()

    def digests(self) -> tuple[str, str]:
        while self._queued:
            self._settle_oldest()
        return self.md5.hexdigest(), self.sha512.hexdigest()

    def _settle_oldest(self) -> None:
        future, buffer = self._queued.popleft()
        future.result()
        if buffer is not None:
            self._free.append(buffer)


def hash_file(
    path: Path,
    pool: concurrent.futures.ThreadPoolExecutor,
    *,
    sparse: bool = True,
    on_data: Callable[[int, int], None] | None = None,
) -> tuple[str, str]:
    """MD5 and SHA-512 of ``path`` as imageport's MultiHasher is fed (see :class:`Feeder`).

    Data is read into a ring of three buffers, so the slower hash always has its next chunk.
    With sparse, holes are not read: they are hashed from a reused buffer of zeros.
    ``on_data(offset, length)`` hears of each data chunk once it is read.
    """
    feeder = Feeder(pool)
    zeros = memoryview(bytes(CHUNK))
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        runs = extents(f.fileno(), size) if sparse else [(0, size, True)]
        for offset, length, is_data in runs:
            left = length
            if is_data:
                f.seek(offset)
            while left:
                n = min(left, CHUNK)
                if is_data:
                    buffer = feeder.buffer()
                    n = f.readinto(buffer[:n])
                    if not n:
                        raise OSError(f"{path} shrank while hashing")
                    if on_data is not None:
                        on_data(offset + length - left, n)
                    feeder.feed(buffer[:n], buffer)
                else:
                    feeder.feed(zeros[:n], None)
                left -= n
    return feeder.digests()


def run_hash_floor(ref: Path, pool: concurrent.futures.ThreadPoolExecutor, want: dict) -> dict:
    t0 = time.perf_counter()
    md5, sha512 = hash_file(ref, pool)
    seconds = time.perf_counter() - t0
    if md5 != want["md5"] or sha512 != want["sha512"]:
        raise SystemExit(f"headline: hash floor digests changed between rounds ({md5})")
    return {"seconds": seconds}


class DirectCopy:
    """Copies ranges of one file into a new one on a helper thread, with O_DIRECT.

    As imageport's converter writes its output: each range is read again from the page cache
    into an aligned buffer and written straight to the disk; what is not copied stays a hole.
    """

    def __init__(self, src: Path, dst: Path) -> None:
        self._src = os.open(src, os.O_RDONLY)
        self._fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._direct = os.open(dst, os.O_WRONLY | os.O_DIRECT)
        self._buffer = memoryview(mmap.mmap(-1, CHUNK))  # page-aligned, as O_DIRECT wants
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: collections.deque[concurrent.futures.Future[None]] = collections.deque()

    def copy(self, offset: int, length: int) -> None:
        """Queue bytes [offset, offset + length) (at most CHUNK) for copying."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._copy, offset, length))

    def _copy(self, offset: int, length: int) -> None:
        view = self._buffer[:length]
        if os.preadv(self._src, [view], offset) != length:
            raise OSError("the reference output shrank")
        aligned = offset % 4096 == 0 and length % 4096 == 0
        fd = self._direct if aligned else self._fd
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n

    def finish(self, size: int) -> None:
        """Wait for every copy, set the length, fsync, close."""
        try:
            while self._pending:
                self._pending.popleft().result()
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        finally:
            self._pool.shutdown()
            for fd in (self._direct, self._fd, self._src):
                os.close(fd)


def run_write_floor(
    ref: Path, tmp: Path, pool: concurrent.futures.ThreadPoolExecutor, want: dict
) -> dict:
    t0 = time.perf_counter()
    copy = DirectCopy(ref, tmp / "out.raw")
    try:
        md5, sha512 = hash_file(ref, pool, on_data=copy.copy)
    finally:
        copy.finish(want["size"])
    seconds = time.perf_counter() - t0
    if md5 != want["md5"] or sha512 != want["sha512"]:
        raise SystemExit(f"headline: write floor digests changed between rounds ({md5})")
    return {"seconds": seconds}


def run_old_floor(src: Path, tmp: Path, pool: concurrent.futures.ThreadPoolExecutor) -> dict:
    """The previous headline's floor: stage by copy, hash it, convert, hash the output."""
    staged, out = tmp / "staged", tmp / "out.raw"
    t0 = time.perf_counter()
    with src.open("rb") as fin, staged.open("wb") as fout:
        while os.copy_file_range(fin.fileno(), fout.fileno(), COPY_CHUNK):
            pass
    t1 = time.perf_counter()
    hash_file(staged, pool)
    t2 = time.perf_counter()
    subprocess.run([*CONVERT, str(staged), str(out)], check=True)
    t3 = time.perf_counter()
    hash_file(out, pool)
    t4 = time.perf_counter()
    phases = {"copy": t1 - t0, "hash_staged": t2 - t1, "convert": t3 - t2, "hash_output": t4 - t3}
    return {"seconds": t4 - t0, "phases": {k: round(v, 3) for k, v in phases.items()}}


# --- memory ---------------------------------------------------------------------------------


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of one process, in bytes; None once it is gone."""
    try:
        with Path(f"/proc/{pid}/status").open("rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def reset_hwm(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux clear_refs 5)."""
    try:
        with Path(f"/proc/{pid}/clear_refs").open("w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class RssWatch:
    """Samples a process's VmHWM and its descendants' peaks while a block runs.

    The process's own peak is its last VmHWM read (VmHWM never decreases); each descendant's
    peak is its last VmHWM read before it exited, keyed by its command name.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.children: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)
        self._proc = psutil.Process(pid)
        self._name = self._proc.name()

    def _sample(self) -> None:
        own = vm_hwm(self.pid)
        if own is not None:
            self.peak = max(self.peak, own)
        try:
            kids = self._proc.children(recursive=True)
        except psutil.Error:
            return
        for kid in kids:
            hwm = vm_hwm(kid.pid)
            try:
                name = kid.name()
            except psutil.Error:
                continue
            if hwm is None or name == self._name:  # gone, or forked and not yet exec'd
                continue
            self.children[name] = max(self.children.get(name, 0), hwm)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, object]:
        return {
            "peak_rss_mib": mib(self.peak),
            "children_peak_rss_mib": {k: mib(v) for k, v in sorted(self.children.items())},
        }


def mib(n: float) -> float:
    return round(n / MIB, 1)


# --- imageport: CLI -------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    # A deployed imageport runs from compiled bytecode (pip compiles at install); with this
    # set (as on some CI machines) every run would compile its ~90 modules again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def check_image(image: dict, want: dict, problems: list[str]) -> None:
    if image.get("status") != "active":
        problems.append(f"status {image.get('status')!r}, expected 'active'")
    if image.get("checksum") != want["md5"]:
        problems.append(f"checksum {image.get('checksum')!r} != floor MD5 {want['md5']}")
    if image.get("os_hash_algo") != "sha512" or image.get("os_hash_value") != want["sha512"]:
        problems.append(
            f"os_hash {image.get('os_hash_algo')}:{str(image.get('os_hash_value'))[:16]}… "
            "!= floor SHA-512"
        )
    if image.get("size") != want["size"] or image.get("virtual_size") != want["size"]:
        problems.append(
            f"size {image.get('size')} / virtual_size {image.get('virtual_size')} "
            f"!= the reference output's {want['size']}"
        )


def run_cli(cmd: list[str], src: Path, tmp: Path, want: dict) -> dict:
    env = clean_env(IMAGEPORT_DATA_DIR=str(tmp / "data"))
    argv = [*cmd, "import", str(src), "--disk-format", "qcow2", "--target-format", "raw"]
    argv.append("--json")
    stderr_path = tmp / "imageport.stderr"
    with stderr_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
        with RssWatch(proc.pid) as watch:
            stdout, _ = proc.communicate()
        seconds = time.perf_counter() - t0
    problems: list[str] = []
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}")
    try:
        image = json.loads(stdout)
    except ValueError:
        image = {}
        problems.append(f"stdout is not JSON: {stdout[:200]!r}")
    check_image(image, want, problems)
    if problems:
        tail = stderr_path.read_bytes()[-4000:].decode(errors="replace")
        log(f"imageport stderr (tail):\n{tail}")
        raise SystemExit(f"headline: imageport import failed: {'; '.join(problems)}")
    return {"seconds": seconds, **watch.report(), "stages_s": db_stages(tmp / "data")}


# --- HTTP: client, servers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(proc: subprocess.Popen[bytes], url: str, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    tail = log_path.read_bytes()[-4000:].decode(errors="replace")
    raise SystemExit(f"headline: {what} did not start; its log (tail):\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Uploader:
    """PUTs a file with one HTTP client: httpx streaming 1 MiB chunks, or ``curl -T``."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.size = path.stat().st_size

    def describe(self) -> str:
        if self.kind == "curl":
            version = subprocess.run(
                ["curl", "--version"], capture_output=True, text=True, check=False
            ).stdout.split(" ")[:2]
            return (
                f"{' '.join(version)} -T FILE (Content-Length, no Expect: 100-continue), "
                "one process per PUT"
            )
        return (
            f"httpx {httpx.__version__} Client, body streamed from the file in 1 MiB chunks "
            "with Content-Length"
        )

    def _chunks(self) -> Iterator[bytes]:
        with self.path.open("rb", buffering=0) as f:
            while piece := f.read(UPLOAD_CHUNK):
                yield piece

    def put(self, client: httpx.Client, url: str) -> tuple[float, int, str]:
        """(seconds, status code, body excerpt) of one PUT of the whole file."""
        if self.kind == "curl":
            argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-T", str(self.path)]
            argv += ["-H", "Expect:", "-H", "Content-Type: application/octet-stream", url]
            t0 = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, check=False)
            seconds = time.perf_counter() - t0
            body, _, code = out.stdout.decode(errors="replace").rpartition("\n")
            if out.returncode != 0:
                return seconds, 0, out.stderr.decode(errors="replace")[:500]
            return seconds, int(code or 0), body[:500]
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(self.size)}
        t0 = time.perf_counter()
        answer = client.put(url, content=self._chunks(), headers=headers)
        seconds = time.perf_counter() - t0
        return seconds, answer.status_code, answer.text[:500]


class Sink:
    """bench/upload_sink.py on 127.0.0.1, writing under a directory of its own."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sink-", dir=work_dir))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.dir / "sink.log"
        argv = [sys.executable, str(SINK), "--dir", str(self.dir / "bodies"), "--port", str(port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.proc, self.url, "upload sink", self.log)

    def close(self, keep: bool) -> None:
        stop(self.proc)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_plain_write(sink: Sink, uploader: Uploader, round_no: int) -> dict:
    body = sink.dir / "bodies" / f"round{round_no}"
    with httpx.Client(timeout=IMPORT_TIMEOUT) as client:
        seconds, code, text = uploader.put(client, f"{sink.url}/round{round_no}")
    if code != 204:
        raise SystemExit(f"headline: plain write answered {code}: {text}")
    written = body.stat().st_size
    body.unlink()
    if written != uploader.size:
        raise SystemExit(f"headline: the sink wrote {written} bytes of {uploader.size}")
    return {"seconds": seconds, "mib_per_s": round(uploader.size / MIB / seconds, 1)}


# --- imageport: API -------------------------------------------------------------------------


def image_get(client: httpx.Client, image_id: str) -> dict:
    answer = client.get(f"/v2/images/{image_id}")
    answer.raise_for_status()
    image = answer.json()
    assert isinstance(image, dict)
    return image


def run_api(
    cmd: list[str], uploader: Uploader, tmp: Path, want: dict, *, early: bool = True
) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(
        IMAGEPORT_DATA_DIR=str(tmp / "data"),
        IMAGEPORT_TARGET_FORMAT="raw",
        IMAGEPORT_AUTH_STRATEGY="noauth",
        IMAGEPORT_EARLY_CONVERSION="true" if early else "false",
    )
    log_path = tmp / "api.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(proc, url, "imageport api", log_path)
        return api_import(proc.pid, url, uploader, want, log_path, tmp / "data")
    finally:
        stop(proc)


def api_import(
    pid: int, url: str, uploader: Uploader, want: dict, log_path: Path, data_dir: Path
) -> dict:
    def fail(what: str) -> SystemExit:
        tail = log_path.read_bytes()[-4000:].decode(errors="replace")
        log(f"imageport api log (tail):\n{tail}")
        return SystemExit(f"headline: api import failed: {what}")

    baseline = psutil.Process(pid).memory_info().rss
    with httpx.Client(base_url=url, timeout=IMPORT_TIMEOUT) as client:
        t0 = time.perf_counter()
        answer = client.post(
            "/v2/images",
            json={"name": "headline", "disk_format": "qcow2", "container_format": "bare"},
        )
        if answer.status_code != 201:
            raise fail(f"POST /v2/images answered {answer.status_code}: {answer.text[:500]}")
        image_id = answer.json()["id"]
        reset_hwm(pid)
        with RssWatch(pid) as stage_watch:
            seconds, code, text = uploader.put(client, f"{url}/v2/images/{image_id}/stage")
        if code != 204:
            raise fail(f"PUT /stage answered {code}: {text}")
        reset_hwm(pid)
        with RssWatch(pid) as import_watch:
            t3 = time.perf_counter()
            answer = client.post(
                f"/v2/images/{image_id}/import", json={"method": {"name": "glance-direct"}}
            )
            if answer.status_code != 202:
                raise fail(f"POST /import answered {answer.status_code}: {answer.text[:500]}")
            image, polls = wait_active(client, image_id, fail)
            t4 = time.perf_counter()
        problems: list[str] = []
        check_image(image, want, problems)
        if problems:
            raise fail("; ".join(problems))
    stage = stage_watch.report()
    work = import_watch.report()
    return {
        "stage_s": seconds,
        "import_s": t4 - t3,
        "end_to_end_s": t4 - t0,
        "stage_mib_per_s": round(uploader.size / MIB / seconds, 1),
        "polls": polls,
        "baseline_rss_mib": mib(baseline),
        "stage_peak_rss_mib": stage["peak_rss_mib"],
        "import_peak_rss_mib": work["peak_rss_mib"],
        "import_children_peak_rss_mib": work["children_peak_rss_mib"],
        "stages_s": db_stages(data_dir),
    }


def wait_active(
    client: httpx.Client, image_id: str, fail: Callable[[str], SystemExit]
) -> tuple[dict, int]:
    """GET the image every SAMPLE_SECONDS until active: (its record, number of GETs)."""
    deadline = time.perf_counter() + IMPORT_TIMEOUT
    polls = 0
    while True:
        image = image_get(client, image_id)
        polls += 1
        status = image.get("status")
        if status == "active":
            return image, polls
        if status not in ("importing", "uploading", "queued") or (
            status == "queued"
            and (image.get("os_glance_failed_import") or "os_glance_import_task" not in image)
        ):
            raise fail(f"image went {status}: {json.dumps(image)[:1000]}")
        if time.perf_counter() > deadline:
            raise fail(f"still {status} after {IMPORT_TIMEOUT:.0f} s")
        time.sleep(SAMPLE_SECONDS)


def db_stages(data_dir: Path) -> dict[str, float] | None:
    """Seconds per stage run of the import, from the embedded SQLite database (read-only).

    Keys are ``stage`` (``stage#N`` for a retry); None when the records cannot be read.
    """
    path = data_dir / "imageport.db"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT stage, attempt, started_at, finished_at FROM stage_runs ORDER BY id"
            ).fetchall()
    except sqlite3.Error:
        return None
    out: dict[str, float] = {}
    for stage, attempt, started, finished in rows:
        if not started or not finished:
            continue
        name = stage if attempt == 1 else f"{stage}#{attempt}"
        seconds = datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        out[name] = round(seconds.total_seconds(), 3)
    return out or None


# --- main -----------------------------------------------------------------------------------


def qemu_img_version() -> str:
    out = subprocess.run(["qemu-img", "--version"], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()[0]


def med(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def settle() -> None:
    """Write back what the last variant left dirty (untimed), so the next does not pay for it."""
    os.sync()


def rnd(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    cmd = shlex.split(args.imageport_cmd)
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)

    log(f"source: {args.virtual_size} virtual, {args.data_mib} MiB data in {work_dir}")
    src, source = make_source(work_dir, args.virtual_size, args.data_mib)
    warm(src)
    ref_dir = Path(tempfile.mkdtemp(prefix="reference-", dir=work_dir))
    ref = ref_dir / "out.raw"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    uploader = Uploader(args.client, src)
    sink: Sink | None = None
    try:
        output = make_reference(src, ref)
        md5, sha512 = hash_file(ref, pool)
        # The floor's sparse hashing must give the bytes' MD5: checked once by md5sum, which
        # reads every byte, holes included.
        plain_md5 = subprocess.run(
            ["md5sum", str(ref)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        if plain_md5 != md5:
            raise SystemExit(f"headline: floor MD5 {md5} != md5sum's {plain_md5}")
        want = {"md5": md5, "sha512": sha512, "size": output["size"]}
        output.update(md5=md5, sha512=sha512, md5sum_agrees=True)
        log(f"reference output: {output}")
        if "plain_write" in args.variants:
            sink = Sink(work_dir)
        settle()
        ctx = Context(cmd, src, ref, want, pool, uploader, sink)
        rounds = run_rounds(args, ctx, work_dir)
    finally:
        pool.shutdown()
        if sink is not None:
            sink.close(args.keep)
        if not args.keep:
            shutil.rmtree(ref_dir, ignore_errors=True)

    result = summarize(args, rounds, source, output, uploader)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


@dataclass
class Context:
    """What every variant of every round runs with."""

    cmd: list[str]
    src: Path
    ref: Path
    want: dict
    pool: concurrent.futures.ThreadPoolExecutor
    uploader: Uploader
    sink: Sink | None


def run_variant(variant: str, round_no: int, tmp: Path, ctx: Context) -> dict:
    runs: dict[str, Callable[[], dict]] = {
        "hash_floor": lambda: run_hash_floor(ctx.ref, ctx.pool, ctx.want),
        "write_floor": lambda: run_write_floor(ctx.ref, tmp, ctx.pool, ctx.want),
        "cli": lambda: run_cli(ctx.cmd, ctx.src, tmp, ctx.want),
        "api": lambda: run_api(ctx.cmd, ctx.uploader, tmp, ctx.want),
        "api_no_early": lambda: run_api(ctx.cmd, ctx.uploader, tmp, ctx.want, early=False),
        "old_floor": lambda: run_old_floor(ctx.src, tmp, ctx.pool),
    }
    if variant == "plain_write":
        assert ctx.sink is not None
        return run_plain_write(ctx.sink, ctx.uploader, round_no)
    return runs[variant]()


def run_rounds(args: argparse.Namespace, ctx: Context, work_dir: Path) -> list[dict]:
    rounds = []
    variants: list[str] = args.variants
    for i in range(1, args.rounds + 1):
        shift = (i - 1) % len(variants)
        order = variants[shift:] + variants[:shift]
        row: dict[str, object] = {"order": order}
        for variant in order:
            tmp = Path(tempfile.mkdtemp(prefix=f"round{i}-{variant}-", dir=work_dir))
            try:
                row[variant] = rnd(run_variant(variant, i, tmp, ctx))
            finally:
                if not args.keep:
                    shutil.rmtree(tmp, ignore_errors=True)
                settle()
            log(f"round {i}: {variant} {row[variant]}")
        add_ratios(row)
        rounds.append(row)
    return rounds


def secs(row: dict, variant: str, key: str = "seconds") -> float | None:
    part = row.get(variant)
    return part.get(key) if isinstance(part, dict) else None


#: Ratios of one round: name, then numerator and denominator as (variant, key).
RATIOS = (
    ("cli_ratio", ("cli", "seconds"), ("hash_floor", "seconds")),
    ("api_ratio", ("api", "end_to_end_s"), ("hash_floor", "seconds")),
    ("stage_vs_plain", ("api", "stage_s"), ("plain_write", "seconds")),
    ("write_floor_ratio", ("write_floor", "seconds"), ("hash_floor", "seconds")),
    ("cli_vs_write_floor", ("cli", "seconds"), ("write_floor", "seconds")),
    ("api_vs_write_floor", ("api", "end_to_end_s"), ("write_floor", "seconds")),
    ("api_no_early_ratio", ("api_no_early", "end_to_end_s"), ("hash_floor", "seconds")),
    ("stage_vs_plain_no_early", ("api_no_early", "stage_s"), ("plain_write", "seconds")),
)


def add_ratios(row: dict) -> None:
    for name, (top, top_key), (bottom, bottom_key) in RATIOS:
        num, den = secs(row, top, top_key), secs(row, bottom, bottom_key)
        if num and den:
            row[name] = round(num / den, 3)


def summarize(
    args: argparse.Namespace, rounds: list[dict], source: dict, output: dict, uploader: Uploader
) -> dict:
    def col(variant: str, key: str = "seconds") -> list[float]:
        return [v for r in rounds if (v := secs(r, variant, key)) is not None]

    def ratio(key: str) -> list[float]:
        return [r[key] for r in rounds if key in r]

    medians = {
        "hash_floor_s": med(col("hash_floor")),
        "cli_s": med(col("cli")),
        "api_stage_s": med(col("api", "stage_s")),
        "api_import_s": med(col("api", "import_s")),
        "api_end_to_end_s": med(col("api", "end_to_end_s")),
        "plain_write_s": med(col("plain_write")),
        "api_stage_mib_per_s": med(col("api", "stage_mib_per_s")),
        "plain_write_mib_per_s": med(col("plain_write", "mib_per_s")),
        "cli_ratio": med(ratio("cli_ratio")),
        "api_ratio": med(ratio("api_ratio")),
        "stage_vs_plain": med(ratio("stage_vs_plain")),
        "api_no_early_stage_s": med(col("api_no_early", "stage_s")),
        "api_no_early_end_to_end_s": med(col("api_no_early", "end_to_end_s")),
        "api_no_early_ratio": med(ratio("api_no_early_ratio")),
        "stage_vs_plain_no_early": med(ratio("stage_vs_plain_no_early")),
        "write_floor_s": med(col("write_floor")),
        "write_floor_ratio": med(ratio("write_floor_ratio")),
        "cli_vs_write_floor": med(ratio("cli_vs_write_floor")),
        "api_vs_write_floor": med(ratio("api_vs_write_floor")),
    }
    if "old_floor" in args.variants:
        medians["old_floor_s"] = med(col("old_floor"))
    cli_rss = col("cli", "peak_rss_mib")
    api_import_rss = col("api", "import_peak_rss_mib") + col("api_no_early", "import_peak_rss_mib")
    memory = {
        "cli_process_peak_rss_mib": max(cli_rss) if cli_rss else None,
        "api_process_peak_rss_mib_during_stage": max(
            col("api", "stage_peak_rss_mib"), default=None
        ),
        "api_process_peak_rss_mib_during_import": max(api_import_rss, default=None),
        "note": "embedded mode: the imageport process (CLI) and the API process (broker "
        "memory://) are the worker; children (qemu-img) are listed per round, not included",
    }
    worker_peak = max(cli_rss + api_import_rss, default=None)
    goals = {
        "cli_ratio": GOAL_RATIO,
        "api_ratio": GOAL_RATIO,
        "stage_vs_plain": GOAL_STAGE_VS_PLAIN,
        "worker_peak_rss_mib": GOAL_WORKER_RSS_MIB,
    }
    meets = {
        key: (value is not None and value <= goal)
        for key, goal, value in (
            ("cli_ratio", GOAL_RATIO, medians["cli_ratio"]),
            ("api_ratio", GOAL_RATIO, medians["api_ratio"]),
            ("stage_vs_plain", GOAL_STAGE_VS_PLAIN, medians["stage_vs_plain"]),
            ("worker_peak_rss_mib", GOAL_WORKER_RSS_MIB, worker_peak),
        )
    }
    return {
        "benchmark": "headline_import_qcow2_to_raw",
        "source": source,
        "output": output,
        "http_client": uploader.describe(),
        "rounds_n": args.rounds,
        "medians": medians,
        "memory": {**memory, "worker_peak_rss_mib": worker_peak},
        "goals": goals,
        "meets_goals": meets,
        "rounds": rounds,
        "method": {
            "hash_floor": "MD5 (calling thread) and SHA-512 (helper thread) over the same "
            "reused 8 MiB buffers of the reference `qemu-img convert -O raw` output; holes "
            "(SEEK_DATA/SEEK_HOLE) hashed from a zero buffer, never read",
            "write_floor": "hash_floor while a helper thread copies each data chunk into a new "
            "file with O_DIRECT (holes left), then fsync: the floor plus writing the output "
            "(a diagnostic, not a goal)",
            "api": "imageport api, noauth, embedded defaults (SQLite, memory:// broker: the "
            "API process runs the import), IMAGEPORT_TARGET_FORMAT=raw; stage_s = PUT /stage, "
            "import_s = POST /import until GET shows active (polled every 0.1 s), "
            "end_to_end_s = POST /v2/images until active",
            "plain_write": "same client, same file, PUT to bench/upload_sink.py (uvicorn, app "
            "writes each body chunk to a file)",
            "cache": "nothing dropped; source and reference output read once before round 1; "
            "each variant writes new files in a fresh temp dir, removed and synced untimed "
            "after it; variant order rotates by round",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "qemu_img": qemu_img_version(),
        },
    }


if __name__ == "__main__":
    sys.exit(main())

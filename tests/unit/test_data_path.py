"""Unit tests of the data-path helpers: hashing, zero runs, extents, requests, stores."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from imageport.errors import InvalidRequest, QemuTimeout
from imageport.pipeline.data import extents, mapped
from imageport.pipeline.data.extents import data_runs, is_zero, read_extents
from imageport.pipeline.data.hashing import MultiHasher, parse_hash_spec, same_digest
from imageport.pipeline.data.mapped import Run
from imageport.pipeline.data.scan import coalesce
from imageport.pipeline.data.writer import BackgroundWriter
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.safety.qemu import Limits, run_limited
from imageport.stores import FileStore, MemoryStore


def test_multihasher_matches_hashlib_for_small_and_large_buffers():
    data = os.urandom(3 * 1024 * 1024 + 17)
    with MultiHasher("sha512") as hasher:
        hasher.update(memoryview(data)[:100])
        hasher.update(memoryview(data)[100:])
        digests = hasher.digests()
    assert digests.md5 == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert digests.value == hashlib.sha512(data).hexdigest()
    assert digests.size == len(data)


def test_fed_buffers_mixed_with_updates_and_holes_hash_in_order():
    pieces = [os.urandom(1 << 20), os.urandom(300_000), os.urandom(5)]
    with MultiHasher("sha512") as hasher:
        hasher.feed(memoryview(pieces[0]))
        hasher.update_zeros(20 << 20)  # queued behind the fed buffer, not waited for
        hasher.update(pieces[1])
        hasher.update_zeros(20 << 20)
        hasher.update(pieces[2])  # small: hashed inline, after the queued zeros
        hasher.feed(pieces[2])
        digests = hasher.digests()
    data = pieces[0] + bytes(20 << 20) + pieces[1] + bytes(20 << 20) + pieces[2] + pieces[2]
    assert (digests.md5, digests.value, digests.size) == (
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
        hashlib.sha512(data).hexdigest(),
        len(data),
    )


def test_a_fed_buffer_is_free_once_both_hash_threads_took_it():
    original = os.urandom(4 << 20)
    data = bytearray(original)
    with MultiHasher("sha512") as hasher:
        hasher.feed(memoryview(data)).result(timeout=30)
        data[:] = bytes(len(data))  # reused at once, as the conversion's ring does
        digests = hasher.digests()
    assert digests.md5 == hashlib.md5(original, usedforsecurity=False).hexdigest()
    assert digests.value == hashlib.sha512(original).hexdigest()


def test_a_failed_hash_step_fails_the_fed_future_and_the_digests():
    with MultiHasher("sha512") as hasher:
        done = hasher.feed(memoryview(bytearray(1 << 20)))
        done.result(timeout=30)
        # A str is not a buffer: both threads' steps raise, so do the future and digests().
        failed = hasher.feed("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            failed.result(timeout=30)
        with pytest.raises(TypeError):
            hasher.digests()


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_write_raw_writes_the_guest_direct_or_buffered(where, tmp_path):
    # tmpfs refuses O_DIRECT: every range is written buffered there; on disk the aligned ranges
    # go direct and the unaligned ones (the 512-byte tail) buffered. Same bytes either way.
    if where == "tmpfs" and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    folder = tmp_path if where == "disk" else Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        source = folder / "image"
        blocks = os.urandom(3 << 20)
        source.write_bytes(blocks + bytes(1 << 20) + os.urandom(4096 + 512))
        runs = [
            Run(0, 1 << 20, 2 << 20),  # data from the middle of the file
            Run(1 << 20, 4 << 20, None),  # a hole
            Run(5 << 20, 4096 + 512, 4 << 20),  # unaligned length: its tail is written buffered
            Run((5 << 20) + 4608, 1 << 20, 0),
        ]
        target = folder / "out.raw"
        with MultiHasher("sha256") as hasher:
            digests = mapped.write_raw(source, runs, target, hasher, 256 * 1024, lambda _: None)
        raw = source.read_bytes()
        want = raw[2 << 20 : 3 << 20] + bytes(4 << 20) + raw[4 << 20 :] + raw[: 1 << 20]
        assert target.read_bytes() == want
        assert digests.value == hashlib.sha256(want).hexdigest()
    finally:
        if where == "tmpfs":
            shutil.rmtree(folder)


def test_write_raw_reads_aligned_ranges_with_o_direct_and_a_growing_files_tail_as_zeros(
    tmp_path,
):
    # Aligned ranges are read around the page cache (O_DIRECT, where the file system has it),
    # an unaligned one through it; a range past the end of a file still being staged (its
    # trailing hole) reads as zeros once ``ready`` said it is final.
    source = tmp_path / "image"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    runs = [
        Run(0, 1 << 20, 1 << 20),
        Run(1 << 20, 1 << 20, 4608),
        Run(2 << 20, 2 << 20, 2 << 20),
    ]
    reads = []
    real_preadv = os.preadv

    def spy(fd, buffers, offset, *args):
        reads.append((offset, bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return real_preadv(fd, buffers, offset, *args)

    target = tmp_path / "out.raw"
    direct = extents.open_direct(source, os.O_RDONLY)
    if direct is not None:
        os.close(direct)
    mp = pytest.MonkeyPatch()
    mp.setattr(mapped.os, "preadv", spy)
    try:
        with MultiHasher("sha256") as hasher:
            digests = mapped.write_raw(
                source, runs, target, hasher, 1 << 20, lambda _: None, ready=lambda _end: None
            )
    finally:
        mp.undo()
    want = data[1 << 20 : 2 << 20] + data[4608 : 4608 + (1 << 20)] + data[2 << 20 :]
    want += bytes(1 << 20)
    assert target.read_bytes().ljust(4 << 20, b"\0") == want
    assert digests.value == hashlib.sha256(want).hexdigest()
    on = direct is not None
    assert reads == [(1 << 20, on), (4608, False), (2 << 20, on), (3 << 20, on)]


def test_background_writer_tells_how_far_the_file_is_written_zero_buffers_included(tmp_path):
    # Chunks are gathered into buffers; after each buffer is written (an all-zero one is not
    # written, only told) the reader hears how far the file is, in order.
    chunks = [bytes(4096), bytes(4096), os.urandom(4096), os.urandom(4096), bytes(4096)]
    told = []
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = BackgroundWriter(fd, path=target, done=told.append, size=8192)
        for i, chunk in enumerate(chunks):
            writer.write(memoryview(chunk), i * 4096)
        writer.finish()
        writer.close()
    finally:
        os.close(fd)
    assert told == [8192, 16384, 20480]
    assert target.read_bytes().ljust(5 * 4096, b"\0") == b"".join(chunks)
    assert target.stat().st_blocks * 512 <= 3 * 4096  # the zero blocks are holes


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_background_writer_copies_chunks_and_keeps_two_buffers_in_flight(where, tmp_path):
    # A chunk may change once write() returns: what it held is written. A third buffer waits
    # for the first write. An unaligned first offset (a resumed download) and an unaligned
    # end are written through the page cache, the blocks between them direct (on tmpfs,
    # which refuses O_DIRECT, everything through the page cache).
    if where == "tmpfs" and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    folder = tmp_path if where == "disk" else Path(tempfile.mkdtemp(dir="/dev/shm"))
    on_tmpfs = where == "tmpfs"  # a folder of our own there, removed after
    target = folder / "out"
    target.write_bytes(b"x" * 100)
    fd = os.open(target, os.O_WRONLY, 0o600)
    release = threading.Event()
    try:
        writer = BackgroundWriter(fd, path=target, done=lambda _end: release.wait(10), size=8192)
        reused = bytearray(os.urandom(8192))
        want = bytes(reused)
        writer.write(memoryview(reused), 100)  # fills the first buffer (4,096 - 100 bytes)
        reused[:] = os.urandom(8192)
        want += bytes(reused)
        third = threading.Thread(target=writer.write, args=(memoryview(reused), 8292))
        third.start()
        third.join(0.3)
        assert third.is_alive()  # two buffers being written: the third waits for one
        release.set()
        third.join(10)
        writer.write(memoryview(b"tail"), 16484)
        writer.finish()
        writer.close()
        assert target.read_bytes() == b"x" * 100 + want + b"tail"
    finally:
        os.close(fd)
        if on_tmpfs:
            shutil.rmtree(folder)


def test_coalesce_joins_reads_into_chunks_of_their_own():
    # Reads of bytes are joined into chunks of 1 MiB or more, each a bytes object of its own;
    # a read that is a view of a reused buffer is copied before the source reuses it.
    reused = bytearray(64 * 1024)

    def reads():
        for i in range(40):
            if i % 2:
                yield memoryview(os.urandom(64 * 1024))
            else:
                reused[:] = os.urandom(64 * 1024)
                yield memoryview(reused)

    sent = []
    chunks = []
    for chunk in coalesce(piece for piece in _remember(reads(), sent)):
        assert isinstance(chunk.obj, bytes)
        chunks.append(bytes(chunk))
    assert b"".join(chunks) == b"".join(sent)
    assert [len(c) for c in chunks] == [1024 * 1024, 1024 * 1024, 512 * 1024]
    big = os.urandom(2 * 1024 * 1024)
    (only,) = coalesce(iter([memoryview(big)]))
    assert only.obj is big  # one large read: no copy


def _remember(reads, sent):
    for piece in reads:
        sent.append(bytes(piece))
        yield piece


def test_hash_specs_are_checked():
    assert parse_hash_spec("SHA256:" + "A" * 64) == ("sha256", "a" * 64)
    for bad in ("sha512", "md4:00", "sha512:xyz", "sha256:" + "0" * 63):
        with pytest.raises(InvalidRequest):
            parse_hash_spec(bad)
    assert same_digest("ABC", "abc")
    assert not same_digest("abd", "abc")


def test_zero_detection_and_data_runs():
    buf = bytearray(1024 * 1024)
    assert is_zero(memoryview(buf))
    buf[-1] = 1
    assert not is_zero(memoryview(buf))
    buf[70_000] = 1
    assert list(data_runs(memoryview(buf))) == [(65536, 131072), (983040, 1048576)]


def test_read_extents_reports_holes_without_reading_them(tmp_path):
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(4 * 1024 * 1024)
        f.write(b"x" * 4096)
    pieces = list(read_extents(path, bytearray(1024 * 1024)))
    assert sum(len(p) for p in pieces) == 8 * 1024 * 1024
    assert sum(len(p) for p in pieces if p.data is None) >= 7 * 1024 * 1024
    assert any(p.data is not None and b"x" in bytes(p.data) for p in pieces)


def test_request_validation_gives_invalid_request():
    with pytest.raises(InvalidRequest, match="unknown disk format"):
        ImportRequest.with_hash(None, method="local-file", source="/x", disk_format="floppy")
    with pytest.raises(InvalidRequest, match="MD5"):
        ImportRequest.with_hash(
            None, method="local-file", source="/x", disk_format="raw", checksum="zz"
        )
    req = ImportRequest.with_hash(
        "sha256:" + "0" * 64, method="local-file", source="/x", disk_format="qcow2"
    )
    assert (req.os_hash_algo, req.final_format) == ("sha256", "qcow2")


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore("m")
    return FileStore("f", tmp_path / "store")


def test_store_contract_write_commit_read_delete(store):
    key = str(uuid.uuid4())
    writer = store.begin_write(key, size=3 * 4096)
    writer.write(memoryview(b"a" * 4096))
    writer.write_hole(4096)
    writer.write(memoryview(b"b" * 4096))
    obj = writer.commit()
    assert obj.size == 3 * 4096
    assert store.exists(obj.url)
    data = b"".join(store.read(obj.url))
    assert data == b"a" * 4096 + bytes(4096) + b"b" * 4096
    assert b"".join(store.read(obj.url, offset=4095, length=2)) == b"a\0"
    store.delete(obj.url)
    assert not store.exists(obj.url)
    store.delete(obj.url)  # deleting twice is fine


def test_store_abort_leaves_nothing(store, tmp_path):
    key = str(uuid.uuid4())
    writer = store.begin_write(key)
    writer.write(memoryview(b"x" * 100))
    writer.abort()
    writer.abort()
    if isinstance(store, FileStore):
        assert list(store.root.iterdir()) == []
    else:
        assert store.objects == {}


def test_store_refuses_keys_that_are_not_ids(store):
    for key in ("../etc/passwd", "a/b", "", "x" * 36):
        with pytest.raises(InvalidRequest):
            store.begin_write(key)


def test_file_store_refuses_urls_outside_it(tmp_path):
    store = FileStore("f", tmp_path / "store")
    with pytest.raises(InvalidRequest):
        store.exists("file:///etc/passwd")
    with pytest.raises(InvalidRequest):
        store.exists(f"file://{tmp_path}/store/../x")


def test_run_limited_kills_the_whole_group_on_timeout():
    started = time.monotonic()
    with pytest.raises(QemuTimeout):
        run_limited(
            ["sh", "-c", "sleep 30 & sleep 30"],
            Limits(address_space=1 << 30, cpu_seconds=5, timeout=0.5),
            None,
        )
    assert time.monotonic() - started < 5


def test_run_limited_applies_the_address_space_limit():
    result = run_limited(
        ["python3", "-c", "b = bytearray(600 * 1024 * 1024)"],
        Limits(address_space=256 * 1024 * 1024, cpu_seconds=5, timeout=30),
        None,
    )
    assert result.returncode != 0
    assert b"MemoryError" in result.stderr

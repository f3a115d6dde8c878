"""S3Writer and fan-out logic with injected fakes (no network): bounded memory, abort paths."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import tracemalloc
import uuid

import pytest

from imageport.errors import StoreUnavailable
from imageport.pipeline.data.extents import Piece
from imageport.pipeline.data.fanout import fan_out
from imageport.stores import MemoryStore, S3Store
from imageport.stores.partfile import PartBody, PartFile, md5_of

PART = 5 * 1024 * 1024
SEND_BLOCK = 16 * 1024  # what urllib3 reads from a file body per send


def _send(body, *, keep: bool = True) -> tuple[bytes, bytes]:
    """Read ``body`` as botocore and urllib3 do (length, hash pass, rewind, small blocks).

    Returns the MD5 of what was sent and, if ``keep``, the bytes (else b"").
    """
    assert len(body) > 0
    payload = hashlib.sha256()  # botocore's SigV4 payload hash over plain HTTP
    for block in iter(lambda: body.read(1024 * 1024), b""):
        payload.update(block)
    body.seek(0)
    sent, kept = hashlib.md5(usedforsecurity=False), bytearray()
    for block in iter(lambda: body.read(SEND_BLOCK), b""):
        sent.update(block)
        if keep:
            kept += block
    return sent.digest(), bytes(kept)


class FakeS3:
    """Just enough of an S3 client: slow part uploads, tracked concurrency and part slots.

    Bodies are read as botocore and urllib3 read them (:func:`_send`), and each Content-MD5 is
    checked against the bytes sent, as S3 checks it.
    """

    def __init__(self, *, fail_part: int | None = None, keep: bool = True) -> None:
        self.fail_part = fail_part
        self.keep = keep  # keep the bytes of parts (off: only their MD5s, for memory tests)
        self.in_flight = 0
        self.max_in_flight = 0
        self.slots: set[int] = set()  # where in the part file parts were read from
        self.part_file_size = 0
        self.parts: dict[int, bytes] = {}
        self.md5s: dict[int, bytes] = {}
        self.size = 0
        self.aborted = False
        self.lock = threading.Lock()

    def create_multipart_upload(self, **_):
        return {"UploadId": "u1"}

    def upload_part(self, *, PartNumber, Body, ContentMD5, **_):  # noqa: N803 - boto3's names
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.slots.add(Body._start)
            self.part_file_size = max(self.part_file_size, os.fstat(Body._fd).st_size)
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
        if PartNumber == self.fail_part:
            raise StoreUnavailable("part refused")  # stands in for a mapped botocore error
        return {"ETag": self._receive(PartNumber, Body, ContentMD5)}

    def put_object(self, *, Body, ContentMD5, **_):  # noqa: N803 - boto3's names
        return {"ETag": self._receive(1, Body, ContentMD5)}

    def _receive(self, number: int, body, content_md5: str) -> str:
        if isinstance(body, bytes):
            digest, data = hashlib.md5(body, usedforsecurity=False).digest(), body
        else:
            digest, data = _send(body, keep=self.keep)
        assert base64.b64decode(content_md5) == digest, "Content-MD5 is not the body's"
        with self.lock:
            if self.keep:
                self.parts[number] = data
            self.md5s[number] = digest
            self.size += len(body)
        return f'"{digest.hex()}"'

    def complete_multipart_upload(self, *, MultipartUpload, **_):  # noqa: N803
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == sorted(self.md5s) == list(range(1, len(numbers) + 1))
        whole = hashlib.md5(b"".join(self.md5s[n] for n in numbers), usedforsecurity=False)
        return {"ETag": f'"{whole.hexdigest()}-{len(numbers)}"'}

    def head_object(self, **_):
        return {"ContentLength": self.size}

    def abort_multipart_upload(self, **_):
        self.aborted = True


def test_parts_upload_in_parallel_with_bounded_buffers():
    client = FakeS3()
    store = S3Store("s3", client=client, bucket="b", part_size=PART, max_concurrency=3)
    data = os.urandom(1024 * 1024)
    writer = store.begin_write(str(uuid.uuid4()))
    for _ in range(20 * 5 + 1):  # 20 full parts and a short last one
        writer.write(memoryview(data))
    obj = writer.commit()

    assert obj.size == (20 * 5 + 1) * 1024 * 1024
    assert b"".join(client.parts[n] for n in sorted(client.parts)) == data * (20 * 5 + 1)
    assert client.max_in_flight == 3
    # Part slots are reused: max_concurrency in flight + the one filling, in one small file.
    assert len(client.slots) == 3 + 1
    assert client.part_file_size <= (3 + 1) * PART
    assert writer._file._fd is None  # closed, so the unlinked file is gone


def test_part_buffers_stay_out_of_memory():
    """Python allocations stay far below one part while 16 MiB parts go through, 3 at once."""
    part = 16 * 1024 * 1024
    client = FakeS3(keep=False)
    store = S3Store("s3", client=client, bucket="b", part_size=part, max_concurrency=3)
    chunk = memoryview(os.urandom(1024 * 1024))
    writer = store.begin_write(str(uuid.uuid4()))
    tracemalloc.start()
    try:
        for _ in range(6 * 16):
            writer.write(chunk)
        writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(client.md5s) == 6
    # Per upload thread: a 1 MiB read of the SigV4 hash pass, md5_of's 256 KiB buffer. Parts
    # kept in memory would be (max_concurrency + 1) x 16 MiB = 64 MiB.
    assert peak < 8 * 1024 * 1024


def test_a_small_object_is_one_put_and_an_empty_one_has_no_part_file(tmp_path):
    client = FakeS3()
    store = S3Store("s3", client=client, bucket="b", part_size=PART, part_dir=tmp_path / "p")
    writer = store.begin_write(str(uuid.uuid4()))
    writer.write(memoryview(b"abc"))
    writer.write_hole(5)
    assert writer.commit().size == 8
    assert client.parts == {1: b"abc" + bytes(5)}
    assert list((tmp_path / "p").iterdir()) == []  # the part file never had a name

    empty = FakeS3()
    writer = S3Store("s3", client=empty, bucket="b", part_dir=tmp_path / "q").begin_write(
        str(uuid.uuid4())
    )
    assert writer.commit().size == 0
    assert empty.parts == {1: b""}
    assert not (tmp_path / "q").exists()


def test_a_failed_part_aborts_the_upload():
    client = FakeS3(fail_part=2)
    store = S3Store("s3", client=client, bucket="b", part_size=PART, max_concurrency=2)
    writer = store.begin_write(str(uuid.uuid4()))

    def upload():
        for _ in range(6):
            writer.write(memoryview(bytes(PART)))
        writer.commit()

    with pytest.raises(StoreUnavailable):
        upload()
    writer.abort()
    assert client.aborted
    assert writer._file._fd is None


def test_an_unusable_part_directory_is_store_unavailable(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    store = S3Store("s3", client=FakeS3(), bucket="b", part_dir=tmp_path / "file" / "sub")
    writer = store.begin_write(str(uuid.uuid4()))
    with pytest.raises(StoreUnavailable, match="part file"):
        writer.write(memoryview(b"abc"))
    writer.abort()


def test_a_part_body_rereads_the_same_bytes_after_a_rewind():
    parts = PartFile(None, 1024, 2)
    try:
        slot = parts.take()
        parts.write(slot, 0, memoryview(b"x" * 100))
        other = parts.take()
        parts.write(other, 0, memoryview(bytes(range(200))))
        body = parts.body(other, 150)
        assert md5_of(body) == hashlib.md5(bytes(range(150)), usedforsecurity=False).digest()
        assert body.tell() == 0  # md5_of rewinds for the upload
        assert body.read(10) == bytes(range(10))
        assert body.seek(0, os.SEEK_END) == 150
        assert body.read() == b""
        body.seek(0)  # what botocore does before a retry
        assert _send(body)[1] == bytes(range(150))
        assert isinstance(body, PartBody)
        assert len(body) == 150
    finally:
        parts.close()
        parts.close()  # twice is fine


class _BrokenWriter:
    local_path = None

    def write(self, data):  # noqa: ARG002 - the writer protocol's signature
        raise StoreUnavailable("disk gone")

    def write_hole(self, length):
        pass

    def commit(self):
        raise AssertionError("never committed")

    def abort(self):
        self.aborted = True


def test_fan_out_drops_a_failing_store_and_feeds_the_others():
    good = MemoryStore("good")
    key = str(uuid.uuid4())
    broken = _BrokenWriter()
    data = bytes(range(256)) * 4096
    result = fan_out(
        [Piece(data=memoryview(data)), Piece(hole=100), Piece(data=memoryview(data))],
        {"good": good.begin_write(key), "bad": broken},
        chunk_size=64 * 1024,
        hash_algo="sha256",
        total=None,
        progress=lambda _d, _t: True,
    )
    expected = data + bytes(100) + data
    assert [o.store_id for o in result.stored] == ["good"]
    assert set(result.failed) == {"bad"}
    assert broken.aborted
    assert good.objects[result.stored[0].url] == expected
    assert result.digests.md5 == hashlib.md5(expected, usedforsecurity=False).hexdigest()
    assert result.digests.value == hashlib.sha256(expected).hexdigest()


def test_fan_out_aborts_every_writer_when_the_read_fails():
    store = MemoryStore("m")
    key = str(uuid.uuid4())

    def pieces():
        yield Piece(data=memoryview(b"abc"))
        raise OSError("source vanished")

    with pytest.raises(OSError):
        fan_out(pieces(), {"m": store.begin_write(key)}, chunk_size=65536, hash_algo=None,
                total=None, progress=lambda _d, _t: True)  # fmt: skip
    assert store.objects == {}

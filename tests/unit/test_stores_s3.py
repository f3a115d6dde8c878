"""S3Writer and fan-out logic with injected fakes (no network): bounded memory, abort paths."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import pytest

from imageport.errors import StoreUnavailable
from imageport.pipeline.data.extents import Piece
from imageport.pipeline.data.fanout import fan_out
from imageport.stores import MemoryStore, S3Store

PART = 5 * 1024 * 1024


class FakeS3:
    """Just enough of an S3 client: slow part uploads, tracked concurrency and buffers."""

    def __init__(self, *, fail_part: int | None = None) -> None:
        self.fail_part = fail_part
        self.in_flight = 0
        self.max_in_flight = 0
        self.buffers: set[int] = set()
        self.parts: dict[int, bytes] = {}
        self.aborted = False
        self.lock = threading.Lock()

    def create_multipart_upload(self, **_):
        return {"UploadId": "u1"}

    def upload_part(self, *, PartNumber, Body, **_):  # noqa: N803 - boto3's names
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.buffers.add(id(Body))
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
        if PartNumber == self.fail_part:
            raise StoreUnavailable("part refused")  # stands in for a mapped botocore error
        self.parts[PartNumber] = bytes(Body)
        return {"ETag": f'"{hashlib.md5(Body, usedforsecurity=False).hexdigest()}"'}

    def complete_multipart_upload(self, **_):
        whole = b"".join(hashlib.md5(self.parts[n], usedforsecurity=False).digest()
                         for n in sorted(self.parts))  # fmt: skip
        return {
            "ETag": f'"{hashlib.md5(whole, usedforsecurity=False).hexdigest()}-{len(self.parts)}"'
        }

    def head_object(self, **_):
        return {"ContentLength": sum(len(p) for p in self.parts.values())}

    def abort_multipart_upload(self, **_):
        self.aborted = True


def test_parts_upload_in_parallel_with_bounded_buffers():
    client = FakeS3()
    store = S3Store("s3", client=client, bucket="b", part_size=PART, max_concurrency=3)
    chunk = memoryview(bytes(1024 * 1024))
    writer = store.begin_write(str(uuid.uuid4()))
    for _ in range(20 * 5 + 1):  # 20 full parts and a short last one
        writer.write(chunk)
    obj = writer.commit()

    assert obj.size == (20 * 5 + 1) * 1024 * 1024
    assert client.max_in_flight == 3
    # Part buffers are reused: max_concurrency in flight + the one filling (+ the short tail).
    assert len(client.buffers) <= 3 + 1 + 1


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

"""One contract suite for every store: memory, file, s3 (moto server over HTTP), http (read-only).

The S3 tests talk to moto in server mode on 127.0.0.1 through a real boto3 client; nothing in
boto3 is patched. The http store reads files served by ``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from botocore.exceptions import ConnectionClosedError
from s3_support import bucket_keys, md5, open_uploads, s3_client

from imageport.errors import ConfigurationError, InvalidRequest, SourceNotFound
from imageport.stores import FileStore, HttpStore, MemoryStore, S3Store

MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part S3 accepts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def http_root(tmp_path_factory):
    """A directory served over HTTP on 127.0.0.1; yields (root, base URL)."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a ranged read that stops early closes the connection mid-response


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@dataclass
class Harness:
    """A store under test, how to put an object in it, and the URL a key would have."""

    store: object
    put: Callable[[str, bytes], str]
    url_for: Callable[[str], str]
    writable: bool


def _writable(store, url_for) -> Harness:
    return Harness(store, lambda key, data: store.add(key, [data]).url, url_for, writable=True)


def _http(root_and_base) -> Harness:
    root, base = root_and_base
    client = httpx.Client(trust_env=False)
    store = HttpStore("web", client=client)

    def put(key, data):
        (root / key).write_bytes(data)
        return f"{base}/{key}"

    return Harness(store, put, lambda key: f"{base}/{key}", writable=False)


def _make(kind, request, tmp_path) -> Harness:
    if kind == "memory":
        store = MemoryStore("mem")
        return _writable(store, lambda key: f"memory://mem/{key}")
    if kind == "file":
        store = FileStore("files", tmp_path / "files")
        return _writable(store, lambda key: (store.root / key).as_uri())
    if kind == "s3":
        endpoint, name = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("bucket")
        store = S3Store(
            "s3", client=s3_client(endpoint), bucket=name, prefix="img/", part_size=PART,
            max_concurrency=2,
        )  # fmt: skip
        return _writable(store, lambda key: store.url_of(store.object_key(key)))
    return _http(request.getfixturevalue("http_root"))


@pytest.fixture(params=["memory", "file", "s3", "http"])
def harness(request, tmp_path):
    """Each store kind, behind the same harness: the read contract."""
    return _make(request.param, request, tmp_path)


@pytest.fixture(params=["memory", "file", "s3"])
def writable(request, tmp_path):
    """Each writable store kind: the write contract."""
    return _make(request.param, request, tmp_path)


def new_key() -> str:
    return str(uuid.uuid4())


def payload(size: int, seed: int = 7) -> bytes:
    return __import__("random").Random(seed).randbytes(size)


# Reads: every store


def test_read_whole_object(harness):
    data = payload(3 * MIB + 17)
    url = harness.put(new_key(), data)
    assert b"".join(harness.store.read(url)) == data


@pytest.mark.parametrize(("offset", "length"), [(0, 10), (5, 1000), (MIB + 3, None), (7, 0)])
def test_ranged_read(harness, offset, length):
    data = payload(2 * MIB)
    url = harness.put(new_key(), data)
    end = None if length is None else offset + length
    assert b"".join(harness.store.read(url, offset=offset, length=length)) == data[offset:end]


def test_exists(harness):
    key = new_key()
    assert not harness.store.exists(harness.url_for(key))
    url = harness.put(key, b"abc")
    assert harness.store.exists(url)


def test_read_missing_object_is_source_not_found(harness):
    with pytest.raises(SourceNotFound):
        b"".join(harness.store.read(harness.url_for(new_key())))


def test_url_of_another_store_is_refused(harness):
    with pytest.raises(InvalidRequest):
        harness.store.exists("gopher://elsewhere/x")


# Writes: memory, file, s3


def test_add_stream_of_unknown_size_is_stored_whole(writable):
    data = payload(2 * PART + 123)
    chunks = (data[i : i + MIB] for i in range(0, len(data), MIB))  # a generator: no size
    obj = writable.store.add(new_key(), chunks)
    assert obj.size == len(data)
    assert b"".join(writable.store.read(obj.url)) == data


def test_url_for_names_where_a_key_is_stored(writable):
    key = f"{new_key()}.source"  # staging objects carry a suffix after the id
    assert not writable.store.exists(writable.store.url_for(key))
    obj = writable.store.add(key, [b"staged"])
    assert writable.store.url_for(key) == obj.url
    assert writable.store.exists(obj.url)


def test_add_with_known_size(writable):
    data = payload(MIB)
    obj = writable.store.add(new_key(), [data], size=len(data))
    assert (obj.size, obj.store_id) == (len(data), writable.store.store_id)
    assert md5(b"".join(writable.store.read(obj.url))) == md5(data)


def test_holes_read_back_as_zeros(writable):
    writer = writable.store.begin_write(new_key())
    writer.write(memoryview(b"head"))
    writer.write_hole(PART + 5)
    writer.write(memoryview(b"tail"))
    obj = writer.commit()
    assert b"".join(writable.store.read(obj.url)) == b"head" + bytes(PART + 5) + b"tail"


def test_abort_leaves_nothing(writable):
    key = new_key()
    writer = writable.store.begin_write(key)
    writer.write(memoryview(payload(2 * PART + 1)))  # at least one part is uploaded
    writer.abort()
    writer.abort()  # twice is fine
    assert not writable.store.exists(writable.url_for(key))


def test_delete_is_idempotent(writable):
    obj = writable.store.add(new_key(), [b"x" * 10])
    writable.store.delete(obj.url)
    writable.store.delete(obj.url)
    assert not writable.store.exists(obj.url)


def test_keys_must_be_image_ids(writable):
    with pytest.raises(InvalidRequest):
        writable.store.begin_write("../../etc/passwd")


def test_read_only_store_refuses_writes(tmp_path, moto_endpoint, bucket):
    stores = [
        MemoryStore("m", read_only=True),
        FileStore("f", tmp_path / "ro", read_only=True),
        S3Store("s", client=s3_client(moto_endpoint), bucket=bucket, read_only=True),
        HttpStore("h", client=httpx.Client()),
    ]
    for store in stores:
        with pytest.raises(InvalidRequest):
            store.begin_write(new_key())


# S3 specifics


def test_s3_abort_closes_the_multipart_upload(moto_endpoint, bucket):
    store = S3Store("s3", client=s3_client(moto_endpoint), bucket=bucket, part_size=PART)
    writer = store.begin_write(new_key())
    writer.write(memoryview(payload(3 * PART)))
    assert open_uploads(moto_endpoint, bucket)
    writer.abort()
    assert open_uploads(moto_endpoint, bucket) == []
    assert bucket_keys(moto_endpoint, bucket) == []


def test_s3_discard_partial_aborts_a_forgotten_upload(moto_endpoint, bucket):
    store = S3Store("s3", client=s3_client(moto_endpoint), bucket=bucket, prefix="p/")
    key = new_key()
    store.client.create_multipart_upload(Bucket=bucket, Key=store.object_key(key))
    other = store.client.create_multipart_upload(Bucket=bucket, Key=store.object_key(new_key()))
    store.discard_partial(key)
    assert [u["UploadId"] for u in open_uploads(moto_endpoint, bucket)] == [other["UploadId"]]


def test_s3_multipart_object_has_the_md5_etag_and_url(moto_endpoint, bucket):
    store = S3Store(
        "s3", client=s3_client(moto_endpoint), bucket=bucket, prefix="imageport/", part_size=PART
    )
    key, data = new_key(), payload(3 * PART + 1)
    obj = store.add(key, [data])
    assert obj.url == f"s3://{bucket}/imageport/{key}"
    got = store.client.get_object(Bucket=bucket, Key=f"imageport/{key}")["Body"].read()
    assert md5(got) == md5(data)
    assert open_uploads(moto_endpoint, bucket) == []


def test_s3_a_part_botocore_retries_is_sent_whole_again(moto_endpoint, bucket, tmp_path):
    """Parts wait in a file: botocore rewinds a part's body and sends it again in full."""
    client = s3_client(moto_endpoint, attempts=3)
    cut: list[bytes] = []
    lock = threading.Lock()  # parts are sent from several threads at once

    def drop_the_first_part_midway(request, **_):
        with lock:
            first = not cut
            if first:
                cut.append(request.body.read(1000))  # what a dropped connection had sent
        if first:
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.UploadPart", drop_the_first_part_midway)
    store = S3Store("s3", client=client, bucket=bucket, part_size=PART, part_dir=tmp_path)
    key, data = new_key(), payload(2 * PART + 5)
    obj = store.add(key, [data])
    assert len(cut) == 1
    assert cut[0] in [data[start : start + 1000] for start in range(0, len(data), PART)]
    assert b"".join(store.read(obj.url)) == data
    assert list(tmp_path.iterdir()) == []  # the part file never had a name


def test_s3_missing_bucket_is_a_configuration_error(moto_endpoint):
    store = S3Store("s3", client=s3_client(moto_endpoint), bucket="no-such-bucket")
    with pytest.raises(ConfigurationError):
        store.add(new_key(), [b"abc"])


def test_s3_unreachable_endpoint_is_store_unavailable():
    from imageport.errors import StoreUnavailable  # noqa: PLC0415

    store = S3Store(
        "s3", client=s3_client(f"http://127.0.0.1:{free_port()}", attempts=1), bucket="b"
    )
    with pytest.raises(StoreUnavailable):
        store.exists(store.url_of(store.object_key(new_key())))

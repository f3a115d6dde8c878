"""S3Store: images as objects in one S3 bucket, uploaded in parallel parts with bounded memory.

The boto3 client is injected (built once per process in :func:`imageport.stores.build_stores`,
or by a test against a moto server). Every botocore and OS error is translated in one place,
:func:`mapped`, into the store errors of :mod:`imageport.errors`.

A write fills one part at a time; a full part is uploaded by a thread of the writer's pool while
the next one fills, and at most ``max_concurrency`` parts are in flight. The parts are kept in a
temporary file (:class:`~imageport.stores.partfile.PartFile`, ``max_concurrency + 1`` slots),
not in memory, so a writer's RSS does not grow with the part size or the concurrency. Each part
carries its Content-MD5 (S3 checks it), and the assembled object is checked after the upload:
its size with ``head_object`` and its ETag against the MD5 of the part MD5s. Any failure, and
:meth:`S3Writer.abort`, aborts the multipart upload.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from imageport.config import DEFAULT_S3_CONCURRENCY, DEFAULT_S3_PART_SIZE
from imageport.errors import (
    ConfigurationError,
    InvalidRequest,
    PipelineError,
    SourceNotFound,
    StoreUnavailable,
)
from imageport.stores.base import StoredObject, add_stream, check_key
from imageport.stores.partfile import PartFile, md5_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger(__name__)

DEFAULT_READ_CHUNK = 8 * 1024 * 1024  # bytes per chunk of a ranged read
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
_ZEROS = bytes(1024 * 1024)  # one shared buffer of zeros, written for holes (S3 has none)
#: An ETag S3 computed from MD5s: the object's MD5, or the MD5 of the part MD5s plus "-N".
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_BAD_CONFIG = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Translate botocore and OS errors raised inside the block into store errors.

    Raises:
        SourceNotFound: the object does not exist.
        ConfigurationError: the bucket is missing or the credentials are refused.
        StoreUnavailable: anything else (network, 5xx, throttling, bad digest in transit).
    """
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            raise SourceNotFound(f"{what}: no such object") from exc
        if code in _BAD_CONFIG:
            raise ConfigurationError(f"{what}: {code}; check the bucket and credentials") from exc
        raise StoreUnavailable(f"{what}: S3 answered {code or 'an error'}") from exc
    except (BotoCoreError, OSError) as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


class S3Store:
    """A store in one bucket; object keys are ``prefix + image id``, never user input."""

    kind = "s3"

    def __init__(
        self,
        store_id: str,
        *,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        part_size: int = DEFAULT_S3_PART_SIZE,
        max_concurrency: int = DEFAULT_S3_CONCURRENCY,
        read_only: bool = False,
        part_dir: Path | None = None,
    ) -> None:
        self.store_id = store_id
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.read_only = read_only
        #: Where writers keep their part files (the system's temporary directory if None).
        self.part_dir = part_dir

    def object_key(self, key: str) -> str:
        """The S3 key of image ``key``."""
        return self.prefix + check_key(key)

    def url_of(self, object_key: str) -> str:
        """The location URL of an S3 key in this bucket."""
        return f"s3://{self.bucket}/{object_key}"

    def url_for(self, key: str) -> str:
        """The ``s3://`` URL of image ``key``."""
        return self.url_of(self.object_key(key))

    def key_of(self, url: str) -> str:
        """The S3 key behind a location URL of this store; refuses any other URL."""
        parts = urlsplit(url)
        object_key = parts.path.lstrip("/")
        if (
            parts.scheme != "s3"
            or parts.netloc != self.bucket
            or not object_key.startswith(self.prefix)
        ):
            raise InvalidRequest(f"{url} is not a location of store {self.store_id}")
        check_key(object_key.removeprefix(self.prefix))
        return object_key

    def begin_write(self, key: str, *, size: int | None = None) -> S3Writer:
        """Start a (lazily created) multipart upload of ``key``."""
        if self.read_only:
            raise InvalidRequest(f"store {self.store_id} is read-only")
        part_size = self.part_size
        if size is not None:
            # Grow parts for huge images: S3 refuses more than MAX_PARTS parts.
            part_size = max(part_size, -(-size // MAX_PARTS))
        return S3Writer(self, self.object_key(key), part_size)

    def add(
        self, key: str, chunks: Iterable[bytes | memoryview], *, size: int | None = None
    ) -> StoredObject:
        """Upload ``chunks`` as ``key``; see :class:`S3Writer`."""
        return add_stream(self, key, chunks, size=size)

    def read(self, url: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream the object (a ranged GET when ``offset`` or ``length`` is given)."""
        object_key = self.key_of(url)
        if length == 0:
            return
        extra: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{end}"
        with mapped(f"read {url}"):
            body = self.client.get_object(Bucket=self.bucket, Key=object_key, **extra)["Body"]
            try:
                yield from body.iter_chunks(DEFAULT_READ_CHUNK)
            finally:
                body.close()

    def exists(self, url: str) -> bool:
        """Whether the object exists (HEAD)."""
        try:
            with mapped(f"head {url}"):
                self.client.head_object(Bucket=self.bucket, Key=self.key_of(url))
        except SourceNotFound:
            return False
        return True

    def delete(self, url: str) -> None:
        """Delete the object; S3 does not mind if it is already gone."""
        with mapped(f"delete {url}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key_of(url))

    def free_bytes(self) -> int | None:
        """Unknown: a bucket has no free-space figure."""
        return None

    def discard_partial(self, key: str) -> None:
        """Abort every multipart upload of ``key`` still open (e.g. after a crash).

        Best effort, never raises: it runs while a failure is being handled, and an upload it
        cannot reach now is aborted by the next attempt (or the bucket's lifecycle rule).
        """
        object_key = self.object_key(key)
        try:
            with mapped(f"list uploads of {self.url_of(object_key)}"):
                pages = self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=object_key
                )
                for page in pages:
                    for upload in page.get("Uploads", []):
                        if upload.get("Key") == object_key and "UploadId" in upload:
                            self.client.abort_multipart_upload(
                                Bucket=self.bucket, Key=object_key, UploadId=upload["UploadId"]
                            )
        except PipelineError as exc:
            log.warning("open uploads not aborted", url=self.url_of(object_key), error=str(exc))


class S3Writer:
    """One object being uploaded: a single PUT if it fits one part, else a multipart upload."""

    def __init__(self, store: S3Store, object_key: str, part_size: int) -> None:
        self._store = store
        self._key = object_key
        self._url = store.url_of(object_key)
        self._part_size = part_size
        #: Part buffers: one filling, ``max_concurrency`` uploading; taking a slot blocks
        #: while every other one is in flight, so the writer waits instead of buffering more.
        self._file = PartFile(store.part_dir, part_size, store.max_concurrency + 1)
        self._slot: int | None = None  # the slot being filled, taken on the first byte
        self._filled = 0
        self._size = 0
        self._pool: ThreadPoolExecutor | None = None
        self._upload_id: str | None = None
        self._parts: list[Future[tuple[int, str, bytes]]] = []
        self._done = False

    @property
    def local_path(self) -> None:
        """S3 objects have no local file."""
        return

    def write(self, data: memoryview) -> None:
        """Append ``data``; blocks while ``max_concurrency`` parts are uploading."""
        view = data.cast("B") if data.format != "B" else data
        while view:
            if self._slot is None:
                self._slot = self._file.take()
            n = min(len(view), self._part_size - self._filled)
            with mapped(f"buffer a part of {self._url}"):
                self._file.write(self._slot, self._filled, view[:n])
            self._filled += n
            view = view[n:]
            if self._filled == self._part_size:
                self._send_part()
        self._size += len(data)

    def write_hole(self, length: int) -> None:
        """Append ``length`` zero bytes (S3 objects are never sparse)."""
        zeros = memoryview(_ZEROS)
        while length > 0:
            n = min(length, len(zeros))
            self.write(zeros[:n])
            length -= n

    def commit(self) -> StoredObject:
        """Finish the upload, then check the stored size and ETag.

        Raises:
            StoreUnavailable: an upload failed or the stored object is not what was sent.
        """
        try:
            if self._upload_id is None:
                etag, expected = self._put_whole()
            else:
                if self._filled:
                    self._send_part()
                etag, expected = self._complete()
            self._done = True
            self._verify(etag, expected)
        except BaseException:
            self.abort()
            raise
        finally:
            self._shutdown()
        return StoredObject(
            store_id=self._store.store_id, url=self._url, size=self._size, metadata={}
        )

    def abort(self) -> None:
        """Stop the part uploads and abort the multipart upload; safe to call twice."""
        if self._done:
            return
        self._done = True
        self._shutdown()
        if self._upload_id is not None:
            try:
                with mapped(f"abort upload of {self._url}"):
                    self._store.client.abort_multipart_upload(
                        Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
                    )
            except PipelineError as exc:
                # Not raised: the caller is already handling a failure. discard_partial at the
                # next attempt (or when the import fails) lists and aborts it again.
                log.warning("multipart abort failed", url=self._url, error=str(exc))

    def _send_part(self) -> None:
        self._raise_failed_part()
        if self._upload_id is None:
            with mapped(f"start upload of {self._url}"):
                self._upload_id = self._store.client.create_multipart_upload(
                    Bucket=self._store.bucket, Key=self._key
                )["UploadId"]
            self._pool = ThreadPoolExecutor(
                self._store.max_concurrency, thread_name_prefix=f"s3-{self._store.store_id}"
            )
        assert self._pool is not None  # noqa: S101 - created with the upload above
        assert self._slot is not None  # noqa: S101 - a part is sent once it has bytes
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(self._upload_part, number, self._slot, self._filled))
        self._slot, self._filled = None, 0  # the next write takes a slot, or waits for one

    def _upload_part(self, number: int, slot: int, length: int) -> tuple[int, str, bytes]:
        try:
            body = self._file.body(slot, length)
            with mapped(f"upload part {number} of {self._url}"):
                digest = md5_of(body)
                response = self._store.client.upload_part(
                    Bucket=self._store.bucket,
                    Key=self._key,
                    UploadId=self._upload_id or "",
                    PartNumber=number,
                    # A seekable file over the slot: botocore hashes and rewinds it as a file.
                    Body=body,  # type: ignore[arg-type] # the stubs do not know the protocol
                    ContentMD5=base64.b64encode(digest).decode(),
                )
            return number, response["ETag"], digest
        finally:
            self._file.give(slot)

    def _raise_failed_part(self) -> None:
        for part in self._parts:
            if part.done() and part.exception() is not None:
                part.result()  # re-raises the part's (already mapped) store error

    def _put_whole(self) -> tuple[str, str]:
        if self._slot is None:  # nothing was written: an empty object, and no part file
            body, digest = None, hashlib.md5(b"", usedforsecurity=False).digest()
        else:
            body = self._file.body(self._slot, self._filled)
            digest = md5_of(body)
        with mapped(f"upload {self._url}"):
            response = self._store.client.put_object(
                Bucket=self._store.bucket,
                Key=self._key,
                Body=b"" if body is None else body,  # type: ignore[arg-type] # as in _upload_part
                ContentMD5=base64.b64encode(digest).decode(),
            )
        return response["ETag"], digest.hex()

    def _complete(self) -> tuple[str, str]:
        results = [part.result() for part in self._parts]
        combined = hashlib.md5(b"".join(d for _, _, d in results), usedforsecurity=False)
        with mapped(f"complete upload of {self._url}"):
            response = self._store.client.complete_multipart_upload(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id or "",
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e, _ in results]},
            )
        return response.get("ETag", ""), f"{combined.hexdigest()}-{len(results)}"

    def _verify(self, etag: str, expected: str) -> None:
        with mapped(f"check {self._url}"):
            head = self._store.client.head_object(Bucket=self._store.bucket, Key=self._key)
        etag = etag.strip('"')
        wrong_size = head["ContentLength"] != self._size
        # Servers that do not derive ETags from MD5s (e.g. SSE-KMS) are checked by size only;
        # each part's Content-MD5 was still checked by the server on the way in.
        wrong_etag = bool(_MD5_ETAG.fullmatch(etag)) and etag != expected
        if wrong_size or wrong_etag:
            with mapped(f"delete {self._url}"):
                self._store.client.delete_object(Bucket=self._store.bucket, Key=self._key)
            raise StoreUnavailable(
                f"{self._url} was stored wrong ({head['ContentLength']} bytes, ETag {etag}; "
                f"sent {self._size} bytes, ETag {expected}); the copy was deleted, retry"
            )

    def _shutdown(self) -> None:
        if self._pool is not None:
            # Parts not started are dropped; the ones in flight finish before the abort.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._file.close()  # after the pool: no upload reads a part any more

"""Issue 5 acceptance: one import to two file stores and an S3 store (moto over real HTTP).

The S3 failures go through :class:`CuttingProxy`, an HTTP proxy on 127.0.0.1 in front of moto
that drops part uploads mid-body once a byte budget is spent, while moto itself stays up so
its open multipart uploads can be listed directly afterwards.
"""

# Fixtures imported from test_stores are re-bound as test arguments (F811), and
# http.server wants do_PUT-style handler names (N815).
# ruff: noqa: N815

from __future__ import annotations

import http.client
import http.server
import threading

import pytest
from s3_support import bucket_keys, md5, open_uploads, s3_client

from imageport.config import Settings
from imageport.pipeline import runner
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import copying
from imageport.records import repository, serialize
from images import MIB, file_digests, leftover_files, make_raw, stored_path

PART = 5 * MIB


class CuttingProxy(http.server.ThreadingHTTPServer):
    """Forwards S3 requests to moto; after ``budget`` uploaded bytes, cuts every part upload."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.budget: int | None = None  # None: never cut
        self.uploaded = 0
        self.cuts = 0
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        pass  # cut connections are the point

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and Expect: 100-continue, as botocore uses them
    server: CuttingProxy

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._forward()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_GET

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.command == "PUT" and "partNumber=" in self.path and self._over_budget(length):
            self.rfile.read(length // 2)  # the upload breaks off mid-body
            self.server.cuts += 1
            self.close_connection = True
            self.connection.close()
            return
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # HEAD answers carry the object's length, not the (empty) body's.
        size = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", size or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    def _over_budget(self, length: int) -> bool:
        with self.server.lock:
            if self.server.budget is None:
                return False
            self.server.uploaded += length
            return self.server.uploaded > self.server.budget


@pytest.fixture
def proxy(moto_endpoint):
    server = CuttingProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def multi_services(tmp_path, database_url, bucket, proxy):
    """Stores ``local`` and ``files2`` (file) and ``s3`` (moto behind the proxy)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        progress_interval_seconds=0.01,
        max_attempts=1,
        default_store="local",
        s3_part_size=PART,
        s3_max_concurrency=2,
        stores={
            "local": {"kind": "file", "path": tmp_path / "data" / "images"},
            "files2": {"kind": "file", "path": tmp_path / "files2"},
            "s3": {
                "kind": "s3",
                "bucket": bucket,
                "endpoint_url": proxy.url,
                "region": "us-east-1",
                "access_key": "testing",
                "secret_key": "testing",
                "prefix": "imageport/",
            },
        },
    )
    services = Services.from_settings(settings)
    services.db.upgrade()
    yield services
    services.close()


@pytest.fixture
def counted_reads(monkeypatch):
    """Count the reads of final bytes by the copy stage (calls and data bytes)."""
    counts = {"calls": 0, "bytes": 0}
    real = copying.read_extents

    def counting(path, buffer):
        counts["calls"] += 1
        for piece in real(path, buffer):
            if piece.data is not None:
                counts["bytes"] += len(piece.data)
            yield piece

    monkeypatch.setattr(copying, "read_extents", counting)
    return counts


def _import(services, src, *, must_succeed=True):
    request = ImportRequest(
        method="local-file",
        source=str(src),
        disk_format="raw",
        stores=("local", "files2", "s3"),
        all_stores_must_succeed=must_succeed,
    )
    submitted = submit_import(services, request, name="multi")
    outcome = runner.run_import(services, submitted.task_id)
    with services.db.session() as session:
        image = serialize.image_to_dict(
            repository.get_image(session, submitted.image_id), admin=True
        )
    return outcome, image


def _s3_object_md5(endpoint, bucket, url):
    key = url.removeprefix(f"s3://{bucket}/")
    return md5(s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read())


def test_one_import_to_three_stores_reads_the_source_once(
    multi_services, tmp_path, moto_endpoint, bucket, counted_reads
):
    src = make_raw(tmp_path / "disk.raw", virtual=24 * MIB, data=6 * MIB)
    source_md5, _ = file_digests(src)
    outcome, image = _import(multi_services, src)

    assert outcome.status == "success", image
    assert image["status"] == "active"
    assert image["checksum"] == source_md5
    by_store = {loc["metadata"]["store"]: loc["url"] for loc in image["locations"]}
    assert set(by_store) == {"local", "files2", "s3"}
    assert by_store["s3"] == f"s3://{bucket}/imageport/{image['id']}"
    for store_id in ("local", "files2"):
        assert file_digests(stored_path(by_store[store_id]))[0] == image["checksum"]
    assert _s3_object_md5(moto_endpoint, bucket, by_store["s3"]) == image["checksum"]
    # One read after staging, of the data extents only (the holes are never read).
    assert counted_reads["calls"] == 1
    assert counted_reads["bytes"] == 6 * MIB
    assert open_uploads(moto_endpoint, bucket) == []
    assert image["os_glance_importing_to_stores"] == ""
    assert image["os_glance_failed_import"] == ""


def test_s3_cut_mid_copy_all_or_nothing_leaves_nothing(
    multi_services, tmp_path, moto_endpoint, bucket, proxy
):
    src = make_raw(tmp_path / "disk.raw", virtual=24 * MIB, data=6 * MIB)
    proxy.budget = 2 * PART  # the third part breaks off
    outcome, image = _import(multi_services, src)

    assert outcome.status == "failure"
    assert proxy.cuts > 0
    assert image["status"] == "queued"
    assert "s3" in image["os_glance_failed_import"].split(",")
    assert image["locations"] == []
    assert leftover_files(tmp_path / "data" / "images") == []
    assert leftover_files(tmp_path / "files2") == []
    assert bucket_keys(moto_endpoint, bucket) == []
    assert open_uploads(moto_endpoint, bucket) == []
    assert leftover_files(multi_services.settings.resolved_staging_dir) == []


def test_s3_cut_mid_copy_with_allow_failure_keeps_the_others(
    multi_services, tmp_path, moto_endpoint, bucket, proxy
):
    src = make_raw(tmp_path / "disk.raw", virtual=24 * MIB, data=6 * MIB)
    proxy.budget = 2 * PART
    outcome, image = _import(multi_services, src, must_succeed=False)

    assert outcome.status == "success"
    assert image["status"] == "active"
    assert image["os_glance_failed_import"] == "s3"
    stores = sorted(loc["metadata"]["store"] for loc in image["locations"])
    assert stores == ["files2", "local"]
    for loc in image["locations"]:
        assert file_digests(stored_path(loc["url"]))[0] == image["checksum"]
    assert bucket_keys(moto_endpoint, bucket) == []
    assert open_uploads(moto_endpoint, bucket) == []

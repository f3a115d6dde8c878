"""The staged pipeline end to end on real SQLite/PostgreSQL, real qemu-img, real files."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import pytest

from imageport.errors import IllegalTransition
from imageport.pipeline import runner
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import STAGE_NAMES
from imageport.records import ImageStatus, StageStatus, TaskStatus, repository, serialize
from images import MIB, file_digests, leftover_files, make_qcow2, make_raw, qemu_info, stored_path


def _import(services, source, **fields):
    fields.setdefault("method", "local-file")
    request = ImportRequest.with_hash(fields.pop("hash_spec", None), source=str(source), **fields)
    submitted = submit_import(services, request, name="test")
    outcome = runner.run_import(services, submitted.task_id)
    return submitted, outcome


def _image(services, image_id):
    with services.db.session() as session:
        return serialize.image_to_dict(repository.get_image(session, image_id), admin=True)


def _task(services, task_id):
    with services.db.session() as session:
        task = repository.get_task(session, task_id)
        return serialize.task_to_dict(task, repository.stage_runs(session, task_id))


def _assert_nothing_left(settings):
    assert leftover_files(settings.resolved_staging_dir) == []
    assert leftover_files(settings.resolved_scratch_dir) == []
    assert leftover_files(settings.data_dir / "images") == []


def test_qcow2_converted_to_raw_has_every_field_right(services, settings, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=32 * MIB, data=6 * MIB)
    submitted, outcome = _import(services, src, disk_format="qcow2", target_format="raw")

    assert outcome.status == TaskStatus.SUCCESS
    image = _image(services, submitted.image_id)
    assert image["status"] == "active"
    assert image["disk_format"] == "raw"
    assert image["container_format"] == "bare"
    [location] = image["locations"]
    stored = stored_path(location["url"])
    md5, sha512 = file_digests(stored)
    assert image["checksum"] == md5
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == sha512
    assert image["size"] == stored.stat().st_size
    assert image["virtual_size"] == qemu_info(src, "qcow2")["virtual-size"]
    assert image["virtual_size"] == qemu_info(stored, "raw")["virtual-size"]
    assert stored.stat().st_blocks * 512 < 16 * MIB  # zero runs stayed holes
    assert "os_glance_import_task" not in image  # removed when the import ends, as in Glance
    assert image["os_glance_importing_to_stores"] == ""
    task = _task(services, submitted.task_id)
    assert task["status"] == "success"
    assert [s["stage"] for s in task["stages"]] == list(STAGE_NAMES)
    assert {s["status"] for s in task["stages"]} == {"done"}
    assert task["stages"][0]["bytes_done"] == src.stat().st_size
    _assert_nothing_left_but_store(settings)


def _assert_nothing_left_but_store(settings):
    assert leftover_files(settings.resolved_staging_dir) == []
    assert leftover_files(settings.resolved_scratch_dir) == []


def test_raw_without_conversion_is_stored_sparse_and_skips_convert(services, settings, tmp_path):
    src = make_raw(tmp_path / "disk.raw", virtual=24 * MIB, data=3 * MIB)
    md5, sha512 = file_digests(src)
    submitted, outcome = _import(
        services, src, disk_format="raw", checksum=md5, hash_spec=f"sha512:{sha512}"
    )

    assert outcome.status == TaskStatus.SUCCESS
    image = _image(services, submitted.image_id)
    assert (image["checksum"], image["os_hash_value"]) == (md5, sha512)
    assert image["size"] == image["virtual_size"] == 24 * MIB
    stored = stored_path(image["locations"][0]["url"])
    assert file_digests(stored) == (md5, sha512)
    assert stored.stat().st_blocks * 512 <= 4 * MIB
    stages = {s["stage"]: s["status"] for s in _task(services, submitted.task_id)["stages"]}
    assert stages["convert"] == "skipped"


@pytest.mark.parametrize("which", ["checksum", "hash"])
def test_hash_mismatch_fails_permanently_and_leaves_nothing(services, settings, tmp_path, which):
    src = make_qcow2(tmp_path / "disk.qcow2")
    wrong = {"checksum": "0" * 32} if which == "checksum" else {"hash_spec": "sha512:" + "a" * 128}
    submitted, outcome = _import(services, src, disk_format="qcow2", target_format="raw", **wrong)

    assert outcome.status == TaskStatus.FAILURE
    assert outcome.retry_in is None
    image = _image(services, submitted.image_id)
    assert image["status"] == "queued"
    assert image["checksum"] is None
    assert image["locations"] == []
    task = _task(services, submitted.task_id)
    assert task["status"] == "failure"
    assert task["error_code"] == "checksum_mismatch"
    assert "verify" in task["message"]
    assert [s["stage"] for s in task["stages"]] == ["stage", "verify"]
    assert task["stages"][-1]["status"] == "failed"
    _assert_nothing_left(settings)


def test_format_mismatch_is_refused_before_qemu_img_converts(services, settings, tmp_path):
    src = make_qcow2(tmp_path / "disk.raw")
    submitted, outcome = _import(services, src, disk_format="raw")

    assert outcome.status == TaskStatus.FAILURE
    task = _task(services, submitted.task_id)
    assert task["error_code"] == "format_mismatch"
    assert task["stages"][-1]["stage"] == "inspect"
    assert _image(services, submitted.image_id)["status"] == "queued"
    _assert_nothing_left(settings)


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        if self.path != "/disk.qcow2":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_web_download_from_a_real_http_server(services, tmp_path, http_server):
    src = make_qcow2(tmp_path / "disk.qcow2")
    _ImageHandler.body = src.read_bytes()
    md5, _ = file_digests(src)
    submitted, outcome = _import(
        services,
        f"{http_server}/disk.qcow2",
        method="web-download",
        disk_format="qcow2",
        checksum=md5,
    )

    assert outcome.status == TaskStatus.SUCCESS
    image = _image(services, submitted.image_id)
    assert image["checksum"] == md5  # stored as qcow2, unchanged
    assert image["disk_format"] == "qcow2"


def test_web_download_404_is_permanent(services, settings, http_server):
    submitted, outcome = _import(
        services, f"{http_server}/missing.qcow2", method="web-download", disk_format="qcow2"
    )
    assert outcome.status == TaskStatus.FAILURE
    assert _task(services, submitted.task_id)["error_code"] == "source_not_found"
    _assert_nothing_left(settings)


def _closed_port():
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_fails_with_source_unavailable(services, settings):
    url = f"http://127.0.0.1:{_closed_port()}/disk.qcow2"
    submitted, outcome = _import(services, url, method="web-download", disk_format="qcow2")

    assert outcome.status == TaskStatus.FAILURE
    task = _task(services, submitted.task_id)
    assert task["error_code"] == "source_unavailable"
    assert "cannot reach" in task["message"]
    assert _image(services, submitted.image_id)["status"] == "queued"
    _assert_nothing_left(settings)


def test_unreachable_url_is_retried_while_attempts_remain(tmp_path, database_url):
    from imageport.config import Settings  # noqa: PLC0415
    from imageport.pipeline.context import Services  # noqa: PLC0415

    conf = Settings(
        data_dir=tmp_path / "d",
        database_url=database_url,
        max_attempts=2,
        web_download_allowed_networks=("127.0.0.0/8",),  # the closed port is on loopback
        web_download_ports=(80, 443, *range(1024, 65536)),
    )
    svc = Services.from_settings(conf)
    svc.db.upgrade()
    try:
        url = f"http://127.0.0.1:{_closed_port()}/disk.qcow2"
        submitted, first = _import(svc, url, method="web-download", disk_format="qcow2")
        assert first.status == TaskStatus.PENDING
        assert first.retry_in is not None
        assert first.retry_in > 0
        assert _image(svc, submitted.image_id)["status"] == "importing"
        second = runner.run_import(svc, submitted.task_id)
        assert second.status == TaskStatus.FAILURE
        task = _task(svc, submitted.task_id)
        assert task["attempts"] == 2
        assert [s["attempt"] for s in task["stages"]] == [1, 2]
    finally:
        svc.close()


class _Crash(BaseException):
    """Stands in for the worker process dying: no handler in the pipeline catches it."""


def test_interrupted_import_resumes_from_the_last_finished_stage(services, settings, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=32 * MIB, data=6 * MIB)
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(services, request)
    real_convert, real_map = services.qemu.convert, services.qemu.map

    def crash(*args, **kwargs):
        raise _Crash

    # qcow2 to raw is written from qemu-img's map; other conversions by qemu-img convert.
    services.qemu.convert = services.qemu.map = crash
    with pytest.raises(_Crash):
        runner.run_import(services, submitted.task_id)
    # The "process" died in convert: the image is still importing, the task processing.
    assert _image(services, submitted.image_id)["status"] == "importing"
    staged = settings.resolved_staging_dir / submitted.task_id / "source"
    assert staged.is_file()

    services.qemu.convert, services.qemu.map = real_convert, real_map
    outcome = runner.run_import(services, submitted.task_id)

    assert outcome.status == TaskStatus.SUCCESS
    runs = _task(services, submitted.task_id)["stages"]
    attempts = {}
    for run in runs:
        attempts.setdefault(run["stage"], []).append((run["attempt"], run["status"]))
    assert attempts["stage"] == [(1, "done")]  # staged data reused, not fetched again
    assert attempts["verify"] == [(1, "done")]
    assert attempts["inspect"] == [(1, "done")]
    assert attempts["convert"] == [(1, "running"), (2, "done")]
    image = _image(services, submitted.image_id)
    assert image["status"] == "active"
    md5, _ = file_digests(stored_path(image["locations"][0]["url"]))
    assert image["checksum"] == md5


def test_resume_restages_when_staged_data_is_gone(services, settings, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    request = ImportRequest(method="local-file", source=str(src), disk_format="qcow2")
    submitted = submit_import(services, request)

    def crash(*args, **kwargs):
        raise _Crash

    real_info = services.qemu.info
    services.qemu.info = crash
    with pytest.raises(_Crash):
        runner.run_import(services, submitted.task_id)
    (settings.resolved_staging_dir / submitted.task_id / "source").unlink()
    services.qemu.info = real_info

    assert runner.run_import(services, submitted.task_id).status == TaskStatus.SUCCESS
    stages = [(r["stage"], r["attempt"]) for r in _task(services, submitted.task_id)["stages"]]
    assert ("stage", 2) in stages


def test_finished_task_delivered_again_does_nothing(services, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    submitted, outcome = _import(services, src, disk_format="qcow2")
    assert outcome.status == TaskStatus.SUCCESS
    before = _task(services, submitted.task_id)["stages"]

    again = runner.run_import(services, submitted.task_id)

    assert again.status == TaskStatus.SUCCESS
    assert _task(services, submitted.task_id)["stages"] == before


def test_illegal_transition_is_refused_and_writes_nothing(services, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    submitted, _ = _import(services, src, disk_format="qcow2")
    with pytest.raises(IllegalTransition), services.db.session() as session:
        repository.set_image_status(
            session,
            submitted.image_id,
            expected=ImageStatus.ACTIVE,
            new=ImageStatus.UPLOADING,
            checksum="0" * 32,
        )
    image = _image(services, submitted.image_id)
    assert image["status"] == "active"
    assert image["checksum"] != "0" * 32
    with services.db.session() as session:
        run = repository.latest_stage_runs(session, submitted.task_id)["activate"]
        assert run.status == StageStatus.DONE


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_upload_is_stored_decompressed_and_bare(services, tmp_path, compression):
    import gzip  # noqa: PLC0415

    import zstandard  # noqa: PLC0415

    disk = make_qcow2(tmp_path / "disk.qcow2", virtual=16 * MIB, data=2 * MIB)
    raw = disk.read_bytes()
    packed = gzip.compress(raw) if compression == "gzip" else zstandard.compress(raw)
    src = tmp_path / "disk.qcow2.packed"
    src.write_bytes(packed)
    import hashlib  # noqa: PLC0415

    md5_of_upload = hashlib.md5(packed, usedforsecurity=False).hexdigest()
    submitted, outcome = _import(
        services, src, disk_format="qcow2", container_format="compressed", checksum=md5_of_upload
    )

    assert outcome.status == TaskStatus.SUCCESS
    image = _image(services, submitted.image_id)
    assert image["container_format"] == "bare"
    stored = stored_path(image["locations"][0]["url"])
    assert stored.read_bytes() == raw  # the decompressed disk, unchanged
    assert image["checksum"] == file_digests(stored)[0]
    assert image["size"] == len(raw)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    honour_range = True
    requests: ClassVar[list[str | None]] = []

    def do_GET(self):
        wanted = self.headers.get("Range")
        type(self).requests.append(wanted)
        start = 0
        if wanted and self.honour_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
            )
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:])

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes_with_range(services, tmp_path, honour_range):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=64 * MIB, data=24 * MIB)
    _RangeHandler.body = src.read_bytes()
    _RangeHandler.honour_range = honour_range
    _RangeHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/disk.qcow2"
        request = ImportRequest(method="web-download", source=url, disk_format="qcow2")
        submitted = submit_import(services, request)
        staged = services.settings.resolved_staging_dir / submitted.task_id / "source"
        import imageport.pipeline.data.extents as extents_module  # noqa: PLC0415

        real_pwrite = extents_module.pwrite_all
        written = {"bytes": 0}

        def crashing_pwrite(fd, data, offset, **kwargs):
            real_pwrite(fd, data, offset, **kwargs)
            written["bytes"] += len(data)
            if written["bytes"] >= 8 * MIB:
                raise _Crash

        # The stage step writes through extents.pwrite_all (looked up at call time).
        extents_module.pwrite_all = crashing_pwrite
        try:
            with pytest.raises(_Crash):
                runner.run_import(services, submitted.task_id)
        finally:
            extents_module.pwrite_all = real_pwrite
        assert 0 < staged.stat().st_size < len(_RangeHandler.body)

        assert runner.run_import(services, submitted.task_id).status == TaskStatus.SUCCESS
    finally:
        server.shutdown()
        server.server_close()
    image = _image(services, submitted.image_id)
    assert image["checksum"] == file_digests(src)[0]
    assert _RangeHandler.requests[0] is None
    assert _RangeHandler.requests[1] is not None  # the second attempt asked for the rest
    with services.db.session() as session:
        output = repository.latest_stage_runs(session, submitted.task_id)["stage"].output
    assert (output["resumed_from"] > 0) == honour_range

"""Issue 5, staging anywhere: a job resumed on another host finds its staged data.

Two "hosts" are two Services with their own data directories (so their own local staging and
scratch), one database, one shared file store, and one S3 staging bucket on moto over real
HTTP. Host A dies mid-job (an exception no handler catches, as a kill -9 would leave it); once
its lease has expired host B takes the job over.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from api_support import OCTETS, api_client, api_server, wait_status
from s3_support import bucket_keys, open_uploads

from imageport.config import Settings
from imageport.pipeline import runner
from imageport.pipeline.context import Services
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import copying
from imageport.records import TaskStatus, repository, serialize
from imageport.workers.sweeper import sweep_local
from images import MIB, file_digests, leftover_files, make_qcow2, stored_path

LEASE = 1.0  # seconds: host B may take over this long after host A stopped


class _Crash(BaseException):
    """Stands in for the worker process dying: no handler in the pipeline catches it."""


@pytest.fixture
def hosts(tmp_path, database_url, moto_endpoint, bucket):
    """Two hosts sharing the database, a file store and S3 staging; yields (a, b)."""
    opened = []
    for name in ("a", "b"):
        settings = Settings(
            data_dir=tmp_path / name,
            database_url=database_url,
            progress_interval_seconds=0.01,
            max_attempts=3,
            lease_ttl_seconds=LEASE,
            stores={"local": {"kind": "file", "path": tmp_path / "images"}},
            staging_url=f"s3://{bucket}/staging",
            staging_endpoint_url=moto_endpoint,
            staging_region="us-east-1",
            staging_access_key="testing",
            staging_secret_key="testing",
        )
        services = Services.from_settings(settings)
        services.db.upgrade()
        opened.append(services)
    yield tuple(opened)
    for services in opened:
        services.close()


def _runs(services, task_id):
    with services.db.session() as session:
        runs = repository.stage_runs(session, task_id)
        return [(r.stage, r.attempt, r.status) for r in runs]


def _image(services, image_id):
    with services.db.session() as session:
        return serialize.image_to_dict(repository.get_image(session, image_id), admin=True)


def _crash(*args, **kwargs):
    raise _Crash


def _die_in(where, services, monkeypatch):
    if where == "convert":
        # qcow2 to raw is written from qemu-img's map; other conversions by qemu-img convert.
        monkeypatch.setattr(services.qemu, "map", _crash)
        monkeypatch.setattr(services.qemu, "convert", _crash)
    else:
        monkeypatch.setattr(copying.Copying, "run", _crash)


@pytest.mark.parametrize("where", ["convert", "copy"])
def test_job_taken_over_on_another_host_resumes_from_remote_staging(
    hosts, tmp_path, moto_endpoint, bucket, monkeypatch, where
):
    a, b = hosts
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=32 * MIB, data=6 * MIB)
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(a, request)
    task_id = submitted.task_id
    with monkeypatch.context() as patch:
        _die_in(where, a, patch)
        with pytest.raises(_Crash):
            runner.run_import(a, task_id, owner="host-a")
    # What host A recorded is in the bucket as well as in its own staging directory.
    keys = bucket_keys(moto_endpoint, bucket)
    assert f"staging/{task_id}.source" in keys
    assert (f"staging/{task_id}.converted" in keys) == (where == "copy")
    assert (a.settings.resolved_staging_dir / task_id / "source").is_file()
    assert not (b.settings.resolved_staging_dir / task_id).exists()

    time.sleep(LEASE + 0.2)  # host A is gone; its lease runs out
    outcome = runner.run_import(b, task_id, owner="host-b")

    assert outcome.status == TaskStatus.SUCCESS
    runs = _runs(b, task_id)
    # Nothing host A finished ran again on host B: the staged bytes came from the bucket.
    assert [r for r in runs if r[0] == "stage"] == [("stage", 1, "done")]
    if where == "copy":
        assert [r for r in runs if r[0] == "convert"] == [("convert", 1, "done")]
    else:
        assert ("convert", 2, "done") in runs
    image = _image(b, submitted.image_id)
    assert image["status"] == "active"
    assert image["virtual_size"] == 32 * MIB
    md5, _ = file_digests(stored_path(image["locations"][0]["url"]))
    assert image["checksum"] == md5
    # The job ended: the bucket and host B hold nothing of it; host A's sweep cleans its own.
    assert bucket_keys(moto_endpoint, bucket) == []
    assert open_uploads(moto_endpoint, bucket) == []
    assert leftover_files(b.settings.resolved_staging_dir) == []
    assert leftover_files(b.settings.resolved_scratch_dir) == []
    assert leftover_files(a.settings.resolved_staging_dir) != []
    swept = sweep_local(a)
    assert str(a.settings.resolved_staging_dir / task_id) in swept
    assert leftover_files(a.settings.resolved_staging_dir) == []
    assert leftover_files(a.settings.resolved_scratch_dir) == []


def test_staged_data_lost_everywhere_is_staged_again(
    hosts, tmp_path, moto_endpoint, bucket, monkeypatch
):
    a, b = hosts
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=16 * MIB, data=2 * MIB)
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(a, request)
    with monkeypatch.context() as patch:
        _die_in("convert", a, patch)
        with pytest.raises(_Crash):
            runner.run_import(a, submitted.task_id, owner="host-a")
    # An operator's lifecycle rule removed the staged object; host A is gone too.
    a.staging.discard_job(submitted.task_id)
    time.sleep(LEASE + 0.2)

    assert runner.run_import(b, submitted.task_id, owner="host-b").status == TaskStatus.SUCCESS
    assert ("stage", 2, "done") in _runs(b, submitted.task_id)
    assert _image(b, submitted.image_id)["status"] == "active"
    assert bucket_keys(moto_endpoint, bucket) == []


def test_failed_import_leaves_nothing_in_remote_staging(hosts, tmp_path, moto_endpoint, bucket):
    a, _ = hosts
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=16 * MIB, data=2 * MIB)
    request = ImportRequest.with_hash(
        "sha512:" + "0" * 128,
        method="local-file",
        source=str(src),
        disk_format="qcow2",
    )
    submitted = submit_import(a, request)

    assert runner.run_import(a, submitted.task_id).status == TaskStatus.FAILURE
    assert bucket_keys(moto_endpoint, bucket) == []
    assert leftover_files(a.settings.resolved_staging_dir) == []


def test_upload_received_by_one_api_host_is_imported_by_another(
    tmp_path, database_url, moto_endpoint, bucket
):
    """glance-direct across hosts: PUT /stage on host A, the import runs on host B."""
    data = os.urandom(3 * MIB) + bytes(4 * MIB) + os.urandom(MIB)
    common = {
        "database_url": database_url,
        "stores": {"local": {"kind": "file", "path": str(tmp_path / "images")}},
        "staging_url": f"s3://{bucket}/staging/",
        "staging_endpoint_url": moto_endpoint,
        "staging_region": "us-east-1",
        "staging_access_key": "testing",
        "staging_secret_key": "testing",
    }
    with (
        api_server(tmp_path / "a", **common) as host_a,
        api_server(tmp_path / "b", **common) as host_b,
        api_client(host_a.url, timeout=60) as api_a,
        api_client(host_b.url, timeout=60) as api_b,
    ):
        assert api_a.get("/readyz").json()["checks"]["staging"] == "ok"  # the bucket answers
        image = api_a.post(
            "/v2/images", json={"disk_format": "raw", "container_format": "bare"}
        ).json()
        api_a.put(
            f"/v2/images/{image['id']}/stage", content=data, headers=OCTETS
        ).raise_for_status()
        assert f"staging/{image['id']}.upload" in bucket_keys(moto_endpoint, bucket)

        api_b.post(
            f"/v2/images/{image['id']}/import", json={"method": {"name": "glance-direct"}}
        ).raise_for_status()
        active = wait_status(api_b, image["id"], "active")

        assert active["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert api_a.get(f"/v2/images/{image['id']}/file").content == data
    assert bucket_keys(moto_endpoint, bucket) == []
    assert leftover_files(tmp_path / "b" / "staging") == []
    # Host A still holds its copy of the upload until its sweep sees the import is over.
    settings_a = Settings(data_dir=tmp_path / "a", **common)
    services_a = Services.from_settings(settings_a)
    try:
        assert leftover_files(settings_a.resolved_staging_dir) != []
        sweep_local(services_a)
        assert leftover_files(settings_a.resolved_staging_dir) == []
    finally:
        services_a.close()

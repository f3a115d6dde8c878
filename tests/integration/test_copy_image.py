"""copy-image: an active image copied to more stores from an existing location, as a task."""

# Fixtures imported from test_stores/test_multistore are re-bound as test arguments (F811).
# ruff: noqa: F811

from __future__ import annotations

import pytest
from s3_support import bucket_keys, md5, open_uploads, s3_client
from test_multistore import PART, multi_services, proxy  # noqa: F401 - shared fixtures

from imageport.errors import InvalidRequest
from imageport.pipeline import runner
from imageport.pipeline.methods.copy_image import submit_copy
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import repository, serialize
from images import MIB, file_digests, make_raw, stored_path


def _image(services, image_id):
    with services.db.session() as session:
        return serialize.image_to_dict(repository.get_image(session, image_id), admin=True)


@pytest.fixture
def active_image(multi_services, tmp_path):
    """An image imported to the default store only."""
    src = make_raw(tmp_path / "disk.raw", virtual=16 * MIB, data=6 * MIB)
    request = ImportRequest(method="local-file", source=str(src), disk_format="raw")
    submitted = submit_import(multi_services, request, name="to-copy")
    assert runner.run_import(multi_services, submitted.task_id).status == "success"
    return submitted.image_id


def _copy(services, image_id, stores, **options):
    submitted = submit_copy(services, image_id, stores, **options)
    return runner.run_import(services, submitted.task_id), _image(services, image_id)


def test_copy_to_a_file_store_and_s3(multi_services, active_image, moto_endpoint, bucket):
    outcome, image = _copy(multi_services, active_image, ["files2", "s3"])

    assert outcome.status == "success"
    assert image["status"] == "active"
    by_store = {loc["metadata"]["store"]: loc["url"] for loc in image["locations"]}
    assert set(by_store) == {"local", "files2", "s3"}
    assert file_digests(stored_path(by_store["files2"]))[0] == image["checksum"]
    key = by_store["s3"].removeprefix(f"s3://{bucket}/")
    body = s3_client(moto_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    assert md5(body) == image["checksum"]
    assert image["os_glance_importing_to_stores"] == ""
    assert image["os_glance_failed_import"] == ""
    assert open_uploads(moto_endpoint, bucket) == []


def test_all_stores_copies_where_the_image_is_missing(multi_services, active_image):
    outcome, image = _copy(multi_services, active_image, None, all_stores=True)

    assert outcome.status == "success"
    assert sorted(loc["metadata"]["store"] for loc in image["locations"]) == [
        "files2",
        "local",
        "s3",
    ]


def test_failed_copy_keeps_the_image_active_and_lists_the_store(
    multi_services, active_image, proxy, moto_endpoint, bucket
):
    proxy.budget = PART  # the second part breaks off
    outcome, image = _copy(multi_services, active_image, ["s3"])

    assert outcome.status == "failure"
    assert image["status"] == "active"
    assert [loc["metadata"]["store"] for loc in image["locations"]] == ["local"]
    assert image["os_glance_failed_import"] == "s3"
    assert bucket_keys(moto_endpoint, bucket) == []
    assert open_uploads(moto_endpoint, bucket) == []


def test_best_effort_copy_keeps_what_worked(multi_services, active_image, proxy):
    proxy.budget = PART
    outcome, image = _copy(
        multi_services, active_image, ["files2", "s3"], all_stores_must_succeed=False
    )

    assert outcome.status == "success"
    assert image["status"] == "active"
    assert sorted(loc["metadata"]["store"] for loc in image["locations"]) == ["files2", "local"]
    assert image["os_glance_failed_import"] == "s3"


def test_corrupt_source_location_is_refused(multi_services, active_image):
    [location] = _image(multi_services, active_image)["locations"]
    path = stored_path(location["url"])
    with path.open("r+b") as f:
        f.write(b"rot")  # the stored bytes no longer match the recorded checksum
    outcome, image = _copy(multi_services, active_image, ["files2"])

    assert outcome.status == "failure"
    assert image["status"] == "active"
    assert [loc["metadata"]["store"] for loc in image["locations"]] == ["local"]
    with multi_services.db.session() as session:
        [task] = [t for t in repository.list_tasks(session) if t.error_code == "checksum_mismatch"]
    assert task.status == "failure"


@pytest.mark.parametrize(
    ("stores", "options"),
    [(["nowhere"], {}), (["local"], {}), ([], {})],
)
def test_bad_copy_requests_are_refused(multi_services, active_image, stores, options):
    with pytest.raises(InvalidRequest):
        submit_copy(multi_services, active_image, stores, **options)

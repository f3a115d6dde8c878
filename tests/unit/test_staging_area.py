"""The staging area's logic over a MemoryStore, and the staging_url setting."""

from __future__ import annotations

import os
import uuid

import pytest

from imageport.config import Settings
from imageport.errors import StagingLost
from imageport.pipeline.data.staging_area import StagingArea
from imageport.stores import MemoryStore

CHUNK = 64 * 1024


def _sparse_file(path, size=1024 * 1024):
    data = os.urandom(4096)
    with path.open("wb") as handle:
        handle.write(data)
        handle.seek(size - len(data))
        handle.write(data)
    return path


def test_local_staging_publishes_nothing_and_restores_only_local_files(tmp_path):
    area = StagingArea(tmp_path, None, chunk_size=CHUNK)
    path = _sparse_file(tmp_path / "source")
    name = f"{uuid.uuid4()}.source"

    assert area.publish(name, path) is None
    assert area.available(None, path, path.stat().st_size)
    path.unlink()
    assert not area.available(None, path, 1024 * 1024)
    with pytest.raises(StagingLost):
        area.restore(None, path, 1024 * 1024)


def test_remote_staging_round_trip_keeps_bytes_and_holes(tmp_path):
    remote = MemoryStore("staging")
    area = StagingArea(tmp_path, remote, chunk_size=CHUNK)
    original = _sparse_file(tmp_path / "original")
    name = f"{uuid.uuid4()}.source"
    ticks = []

    url = area.publish(name, original, lambda: ticks.append(1))

    assert url == remote.url_for(name)
    assert ticks
    restored = tmp_path / "elsewhere" / "source"
    assert area.available(url, restored, original.stat().st_size)  # remotely
    area.restore(url, restored, original.stat().st_size)
    assert restored.read_bytes() == original.read_bytes()
    # The zero run in the middle came back as a hole, not as written zeros.
    assert restored.stat().st_blocks * 512 < original.stat().st_size // 2
    assert not list(restored.parent.glob(".*part"))


def test_restore_of_a_damaged_or_missing_object_is_staging_lost(tmp_path):
    remote = MemoryStore("staging")
    area = StagingArea(tmp_path, remote, chunk_size=CHUNK)
    name = f"{uuid.uuid4()}.source"
    url = remote.add(name, [b"short"]).url
    target = tmp_path / "t" / "source"

    with pytest.raises(StagingLost, match="holds 5 bytes"):
        area.restore(url, target, 10)
    assert not target.exists()
    assert not list(target.parent.iterdir())  # the partial file is gone too
    area.discard(name)
    with pytest.raises(StagingLost, match="gone"):
        area.restore(url, target, 5)


def test_discard_job_removes_its_objects_and_the_adopted_upload(tmp_path):
    remote = MemoryStore("staging")
    area = StagingArea(tmp_path, remote, chunk_size=CHUNK)
    task, image = str(uuid.uuid4()), str(uuid.uuid4())
    for name in (f"{task}.source", f"{task}.converted", f"{image}.upload", f"{image}.scan"):
        remote.add(name, [b"x"])
    area.publish_bytes(f"{image}.scan", b"{}")
    assert area.fetch_bytes(f"{image}.scan") == b"{}"

    area.discard_job(task, upload_of=image)

    assert remote.objects == {}
    assert area.fetch_bytes(f"{image}.scan") is None


def test_staging_url_file_names_the_staging_directory(tmp_path):
    settings = Settings(data_dir=tmp_path, staging_url=f"file://{tmp_path}/shared")
    assert settings.resolved_staging_dir == tmp_path / "shared"
    assert settings.remote_staging is None


def test_staging_url_s3_borrows_a_store_of_the_same_bucket():
    settings = Settings(
        staging_url="s3://images/staging",
        stores={
            "s3": {
                "kind": "s3",
                "bucket": "images",
                "endpoint_url": "http://127.0.0.1:9000",
                "access_key": "k",
                "secret_key": "s",
                "prefix": "imageport/",
            }
        },
        default_store="s3",
    )
    remote = settings.remote_staging
    assert remote is not None
    assert (remote.bucket, remote.prefix) == ("images", "staging/")
    assert (remote.endpoint_url, remote.access_key, remote.secret_key) == (
        "http://127.0.0.1:9000",
        "k",
        "s",
    )
    own = Settings(staging_url="s3://other", staging_endpoint_url="http://h:1").remote_staging
    assert own is not None
    assert (own.bucket, own.prefix, own.endpoint_url, own.access_key) == (
        "other",
        "",
        "http://h:1",
        None,
    )


@pytest.mark.parametrize(
    "url", ["relative/path", "file://host/path", "s3://", "http://x/y", "s3://b/p?x=1"]
)
def test_bad_staging_url_is_refused(url):
    with pytest.raises(ValueError, match="staging_url"):
        Settings(staging_url=url)

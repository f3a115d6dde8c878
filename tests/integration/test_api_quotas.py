"""Glance's quotas over HTTP: the four unified limits per project, the per-image quotas, a
JSON patch written at once, and staged uploads that expire."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from api_support import CONFIRMED, OCTETS, api_client, api_server, wait_status

from imageport.config import Settings
from imageport.pipeline import Services
from imageport.workers.reaper import reap

MIB = 1024 * 1024
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
RAW = {"disk_format": "raw", "container_format": "bare"}
BIG = os.urandom(3 * MIB)  # 3 MiB: over the 2 MiB size and staging limits once stored
TINY = os.urandom(4096)

#: The limits of the module's server (settings, the same for every project).
LIMITS = {
    "image_size_total": 2,
    "image_stage_total": 2,
    "image_count_total": 3,
    "image_count_uploading": 1,
    "max_image_members": 2,
    "max_image_locations": 1,
}


def project(name: str) -> dict[str, str]:
    """Headers of a member of project ``name``, as a trusted proxy confirms them."""
    return {**CONFIRMED, "X-Project-Id": name, "X-Roles": "member,reader"}


def chunked(data: bytes):
    """A body without Content-Length: the size is unknown until the bytes are in."""
    for start in range(0, len(data), 256 * 1024):
        yield data[start : start + 256 * 1024]


def over(answer: httpx.Response, message: str) -> None:
    """A 413 over_quota with exactly ``message``."""
    assert answer.status_code == 413, answer.text
    assert answer.json() == {
        "code": "413 Request Entity Too Large",
        "title": "Request Entity Too Large",
        "message": message,
        "error_code": "over_quota",
    }


def over_limit(project_id: str, name: str, limit: int, usage: int, delta: int) -> str:
    return (
        f"Project {project_id} is over a limit for [Resource {name} is over limit of {limit} "
        f"due to current usage {usage} and delta {delta}]"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres_url):
    root = tmp_path_factory.mktemp("quotas")
    stores = {
        "local": {"kind": "file", "path": str(root / "local")},
        "other": {"kind": "file", "path": str(root / "other")},
    }
    with api_server(
        root / "data",
        auth_strategy="trusted-proxy",
        database_url=postgres_url,
        stores=stores,
        **LIMITS,
    ) as srv:
        yield srv


@pytest.fixture
def http(server):
    with api_client(server.url, timeout=60) as client:
        yield client


def _create(http, who, **fields):
    answer = http.post("/v2/images", json={**RAW, **fields}, headers=who)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_image_count_total(http):
    alice = project("count-a")
    ids = [_create(http, alice) for _ in range(3)]
    over(
        http.post("/v2/images", json=RAW, headers=alice),
        over_limit("count-a", "image_count_total", 3, 3, 1),
    )
    _create(http, project("count-b"))  # another project is not affected
    assert http.delete(f"/v2/images/{ids[0]}", headers=alice).status_code == 204
    _create(http, alice)  # a deleted image no longer counts


def test_image_stage_total(http):
    alice = project("stage-a")
    first, second = _create(http, alice), _create(http, alice)
    # A declared length is the least the upload adds: refused before any byte is read.
    over(
        http.put(f"/v2/images/{first}/stage", content=BIG, headers={**alice, **OCTETS}),
        over_limit("stage-a", "image_stage_total", 2, 0, 3),
    )
    assert http.get(f"/v2/images/{first}", headers=alice).json()["status"] == "queued"
    # Without one, Glance's check (current usage, delta 0) lets it in...
    assert http.put(
        f"/v2/images/{first}/stage", content=chunked(BIG), headers={**alice, **OCTETS}
    ).is_success
    staged = http.get(f"/v2/images/{first}", headers=alice).json()
    assert (staged["status"], staged["size"]) == ("uploading", len(BIG))
    # ... and then the project is over its staging limit.
    over(
        http.put(f"/v2/images/{second}/stage", content=TINY, headers={**alice, **OCTETS}),
        over_limit("stage-a", "image_stage_total", 2, 3, 0),
    )
    bob = project("stage-b")
    other = _create(http, bob)
    assert http.put(f"/v2/images/{other}/stage", content=TINY, headers={**bob, **OCTETS}).is_success
    # glance-direct adds the staged bytes to image_size_total.
    over(
        http.post(
            f"/v2/images/{first}/import",
            json={"method": {"name": "glance-direct"}},
            headers=alice,
        ),
        over_limit("stage-a", "image_size_total", 2, 0, 3),
    )
    # A deleted image's staged upload no longer counts.
    assert http.delete(f"/v2/images/{first}", headers=alice).status_code == 204
    assert http.put(
        f"/v2/images/{second}/stage", content=TINY, headers={**alice, **OCTETS}
    ).is_success


def test_image_size_total(http):
    alice = project("size-a")
    first, second = _create(http, alice), _create(http, alice)
    over(
        http.put(f"/v2/images/{first}/file", content=BIG, headers={**alice, **OCTETS}),
        over_limit("size-a", "image_size_total", 2, 0, 3),
    )
    assert http.get(f"/v2/images/{first}", headers=alice).json()["status"] == "queued"
    assert http.put(
        f"/v2/images/{first}/file", content=chunked(BIG), headers={**alice, **OCTETS}
    ).is_success
    assert http.get(f"/v2/images/{first}", headers=alice).json()["status"] == "active"
    over(
        http.put(f"/v2/images/{second}/file", content=TINY, headers={**alice, **OCTETS}),
        over_limit("size-a", "image_size_total", 2, 3, 0),
    )
    web = {"method": {"name": "web-download", "uri": "https://example.org/disk.raw"}}
    over(
        http.post(f"/v2/images/{second}/import", json=web, headers=alice),
        over_limit("size-a", "image_size_total", 2, 3, 0),
    )
    bob = project("size-b")
    other = _create(http, bob)
    assert http.put(f"/v2/images/{other}/file", content=TINY, headers={**bob, **OCTETS}).is_success
    assert http.get(f"/v2/images/{other}", headers=bob).json()["status"] == "active"


def test_image_count_uploading(http):
    alice = project("up-a")
    first, second = _create(http, alice), _create(http, alice)
    assert http.put(
        f"/v2/images/{first}/stage", content=TINY, headers={**alice, **OCTETS}
    ).is_success
    # As Glance: the image shows uploading first, then the count (which includes it) is checked.
    for verb in ("stage", "file"):
        over(
            http.put(f"/v2/images/{second}/{verb}", content=TINY, headers={**alice, **OCTETS}),
            over_limit("up-a", "image_count_uploading", 1, 2, 0),
        )
        assert http.get(f"/v2/images/{second}", headers=alice).json()["status"] == "queued"
    web = {"method": {"name": "web-download", "uri": "https://example.org/disk.raw"}}
    over(
        http.post(f"/v2/images/{second}/import", json=web, headers=alice),
        over_limit("up-a", "image_count_uploading", 1, 1, 1),
    )
    bob = project("up-b")
    other = _create(http, bob)
    assert http.put(f"/v2/images/{other}/stage", content=TINY, headers={**bob, **OCTETS}).is_success


def test_properties_limit_on_create_and_patch(http):
    alice = project("props-a")
    properties = {f"p{i}": "v" for i in range(129)}
    over(
        http.post("/v2/images", json=properties, headers=alice),
        "The limit has been exceeded on the number of allowed image properties. Attempted: "
        "129, Maximum: 128. Remove properties first, or ask the operator to raise "
        "max_image_properties.",
    )
    del properties["p128"]
    image_id = _create(http, alice, **properties)
    url = f"/v2/images/{image_id}"
    add = [{"op": "add", "path": "/extra", "value": "x"}]
    answer = http.patch(url, json=add, headers={**PATCH, **alice})
    assert answer.status_code == 413
    assert "Attempted: 129, Maximum: 128" in answer.json()["message"]
    assert "extra" not in http.get(url, headers=alice).json()  # nothing was written
    # Replacing, or removing one and adding another, stays within the quota.
    swap = [
        {"op": "replace", "path": "/p0", "value": "w"},
        {"op": "remove", "path": "/p1"},
        {"op": "add", "path": "/extra", "value": "x"},
    ]
    body = http.patch(url, json=swap, headers={**PATCH, **alice}).json()
    assert (body["p0"], body["extra"], "p1" in body) == ("w", "x", False)


def test_tags_limit(http):
    alice = project("tags-a")
    over(
        http.post("/v2/images", json={"tags": [f"t{i}" for i in range(129)]}, headers=alice),
        "The limit has been exceeded on the number of allowed image tags. Attempted: 129, "
        "Maximum: 128. Remove tags first, or ask the operator to raise max_image_tags.",
    )


def test_a_long_patch_is_written_at_once(http):
    alice = project("props-b")
    image_id = _create(http, alice, **{f"k{i}": "start" for i in range(100)}, tags=["a"])
    operations = [
        {"op": "replace", "path": f"/k{i}", "value": f"round {n}"}
        for n in range(30)
        for i in range(100)
    ]
    operations += [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "replace", "path": "/visibility", "value": "private"},
        {"op": "replace", "path": "/min_ram", "value": 512},
        {"op": "add", "path": "/tags", "value": ["b", "c"]},
        {"op": "remove", "path": "/k99"},
    ]
    started = time.monotonic()
    answer = http.patch(f"/v2/images/{image_id}", json=operations, headers={**PATCH, **alice})
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert elapsed < 3.0, f"a {len(operations)}-operation patch took {elapsed:.2f} s"
    body = http.get(f"/v2/images/{image_id}", headers=alice).json()
    assert body == answer.json()
    assert (body["name"], body["tags"], body["k0"], body["k98"]) == (
        "renamed",
        ["b", "c"],
        "round 29",
        "round 29",
    )
    assert "k99" not in body
    assert (body["visibility"], body["min_ram"]) == ("private", 512)


def test_members_limit(http):
    alice = project("share-a")
    first = _create(http, alice, visibility="shared")
    second = _create(http, alice, visibility="shared")
    for member in ("m1", "m2"):
        answer = http.post(f"/v2/images/{first}/members", json={"member": member}, headers=alice)
        assert answer.status_code == 200, answer.text
    over(
        http.post(f"/v2/images/{first}/members", json={"member": "m3"}, headers=alice),
        "The limit has been exceeded on the number of allowed image members for this image. "
        "Attempted: 3, Maximum: 2. Remove a member first, or ask the operator to raise "
        "max_image_members.",
    )
    # Per image: another image of the same owner is not affected.
    answer = http.post(f"/v2/images/{second}/members", json={"member": "m3"}, headers=alice)
    assert answer.status_code == 200


def test_locations_limit(http):
    alice = project("loc-a")
    image_id = _create(http, alice)
    url = f"/v2/images/{image_id}/import"
    web = {"name": "web-download", "uri": "https://example.org/disk.raw"}
    message = (
        "The limit has been exceeded on the number of allowed image locations. Attempted: 2, "
        "Maximum: 1. Import to fewer stores, or ask the operator to raise max_image_locations."
    )
    over(http.post(url, json={"method": web, "stores": ["local", "other"]}, headers=alice), message)
    over(http.post(url, json={"method": web, "all_stores": True}, headers=alice), message)
    assert http.get(f"/v2/images/{image_id}", headers=alice).json()["status"] == "queued"


def test_staged_uploads_expire(tmp_path):
    data_dir = tmp_path / "data"
    alice = project("ttl-a")
    with (
        api_server(data_dir, auth_strategy="trusted-proxy", image_stage_total=2) as srv,
        api_client(srv.url, timeout=60, headers=alice) as http,
    ):
        old, new = _create(http, alice), _create(http, alice)
        assert http.put(f"/v2/images/{old}/stage", content=chunked(BIG), headers=OCTETS).is_success
        over(
            http.put(f"/v2/images/{new}/stage", content=TINY, headers=OCTETS),
            over_limit("ttl-a", "image_stage_total", 2, 3, 0),
        )
        upload = data_dir.resolve() / "staging" / "uploads" / old
        assert upload.is_dir()
        time.sleep(1.5)
        report = _reap(data_dir, ttl_seconds=1.0)
        assert str(upload) in report["swept"]
        assert not upload.exists()
        expired = http.get(f"/v2/images/{old}").json()
        assert (expired["status"], expired["size"]) == ("queued", None)
        direct = {"method": {"name": "glance-direct"}}
        assert http.post(f"/v2/images/{old}/import", json=direct).status_code == 409
        # Expired, it no longer counts: the other image stages now, and a fresh upload is kept.
        assert http.put(f"/v2/images/{new}/stage", content=TINY, headers=OCTETS).is_success
        _reap(data_dir, ttl_seconds=60.0)
        assert http.get(f"/v2/images/{new}").json()["status"] == "uploading"
        assert http.post(f"/v2/images/{new}/import", json=direct).status_code == 202
        wait_status(http, new, "active")


def _reap(data_dir: Path, *, ttl_seconds: float) -> dict[str, list[str]]:
    """One reaper pass, as a worker on the API's host runs it, with the given staging TTL."""
    settings = Settings(data_dir=data_dir, staging_ttl_hours=ttl_seconds / 3600)
    services = Services.from_settings(settings)
    try:
        return reap(services, lambda _task_id: None).as_dict()
    finally:
        services.close()

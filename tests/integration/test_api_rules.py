"""Glance's rules over HTTP: status gates, error codes and shape, identity, ranges, PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from api_support import OCTETS, TRUSTED_ADMIN, api_client, api_server, wait_status

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
ALICE = {"X-Project-Id": "alice", "X-Roles": "member"}
BOB = {"X-Project-Id": "bob", "X-Roles": "member"}
DATA = os.urandom(1024 * 1024 + 7)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    with api_server(
        root / "data",
        auth_strategy="trusted-proxy",
        max_image_tags=3,
        max_image_bytes=4 * 1024 * 1024,
    ) as srv:
        yield srv


@pytest.fixture
def http(server):
    # An administrator by default; ALICE and BOB replace the project and the roles.
    with api_client(server.url, timeout=60, headers=TRUSTED_ADMIN) as client:
        yield client


def _active(http, **fields):
    image = http.post(
        "/v2/images", json={"disk_format": "raw", "container_format": "bare", **fields}
    ).json()
    http.put(f"/v2/images/{image['id']}/file", content=DATA, headers=OCTETS).raise_for_status()
    return image["id"]


def _imported(http):
    """An image made active by a glance-direct import (PUT /file makes no Glance task)."""
    image_id = http.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"})
    image_id = image_id.json()["id"]
    http.put(f"/v2/images/{image_id}/stage", content=DATA, headers=OCTETS).raise_for_status()
    body = {"method": {"name": "glance-direct"}}
    http.post(f"/v2/images/{image_id}/import", json=body).raise_for_status()
    wait_status(http, image_id, "active")
    return image_id


def test_discovery(http):
    root = http.get("/")
    assert root.status_code == 300
    current = [v["id"] for v in root.json()["versions"] if v["status"] == "CURRENT"]
    assert current == ["v2.17"]  # Glance 33 without an image cache
    assert http.get("/versions").json() == root.json()
    assert "glance-download" in http.get("/v2/info/import").json()["import-methods"]["value"]
    # Glance 33 writes the flag as the string "true" (glance/api/v2/discovery.py).
    assert http.get("/v2/info/stores").json()["stores"][0]["default"] == "true"
    assert http.get("/v2/info/stores/detail", headers=ALICE).status_code == 403
    assert http.get("/v2/schemas/image").json()["name"] == "image"
    assert http.get("/openapi.json").json()["paths"]
    assert http.get("/readyz").json()["status"] == "ok"


def test_client_id_and_conflicts(http):
    image_id = str(uuid.uuid4())
    assert http.post("/v2/images", json={"id": image_id}).status_code == 201
    again = http.post("/v2/images", json={"id": image_id})
    assert again.status_code == 409
    assert set(again.json()) == {"code", "title", "message", "error_code"}
    assert again.json()["code"] == "409 Conflict"
    assert http.post("/v2/images", json={"id": "nope"}).status_code == 400
    assert http.post("/v2/images", json={"status": "active"}).status_code == 403
    assert http.post("/v2/images", json={"disk_format": "floppy"}).status_code == 400
    assert http.post("/v2/images", json={"visibility": "public"}, headers=ALICE).status_code == 403
    assert http.post("/v2/images", json={"tags": ["a", "b", "c", "d"]}).status_code == 413


def test_patch_rules(http):
    image = http.post("/v2/images", json={"name": "p", "color": "red"}, headers=ALICE).json()
    url = f"/v2/images/{image['id']}"
    ok = http.patch(
        url,
        headers={**PATCH, **ALICE},
        json=[
            {"op": "replace", "path": "/name", "value": "q"},
            {"op": "add", "path": "/size_hint", "value": "big"},
            {"op": "remove", "path": "/color"},
            {"op": "add", "path": "/tags", "value": ["x", "y"]},
        ],
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert (body["name"], body["size_hint"], body["tags"]) == ("q", "big", ["x", "y"])
    assert "color" not in body
    assert (
        http.patch(
            url,
            headers={**PATCH, **ALICE},
            json=[{"op": "replace", "path": "/status", "value": "active"}],
        ).status_code
        == 403
    )
    assert (
        http.patch(
            url, headers={**PATCH, **ALICE}, json=[{"op": "remove", "path": "/color"}]
        ).status_code
        == 409
    )
    assert (
        http.patch(
            url, headers={**PATCH, **BOB}, json=[{"op": "replace", "path": "/name", "value": "z"}]
        ).status_code
        == 404
    )
    assert http.patch(url, headers=ALICE, json=[]).status_code == 415
    assert http.put(f"{url}/tags/{'t' * 256}", headers=ALICE).status_code == 400
    assert http.put(f"{url}/tags/z", headers=ALICE).status_code == 204
    assert http.put(f"{url}/tags/w", headers=ALICE).status_code == 413
    assert http.delete(f"{url}/tags/x", headers=ALICE).status_code == 204
    assert http.delete(f"{url}/tags/x", headers=ALICE).status_code == 404


def test_import_gates_and_protected_delete(http):
    image = http.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()
    url = f"/v2/images/{image['id']}"
    direct = {"method": {"name": "glance-direct"}}
    assert http.post(f"{url}/import", json=direct).status_code == 409  # not staged
    assert http.post(f"{url}/import", json={"method": {"name": "x"}}).status_code == 400
    assert http.post(f"{url}/import", json={"method": {"name": "web-download"}}).status_code == 400
    bad_store = {"method": {"name": "glance-direct"}, "stores": ["nowhere"]}
    assert http.post(f"{url}/import", json=bad_store).status_code == 409  # Glance's Conflict
    assert http.put(f"{url}/stage", content=DATA, headers=OCTETS).status_code == 204
    assert (
        http.put(f"{url}/stage", content=DATA, headers=OCTETS).status_code == 409
    )  # already uploading
    assert http.post(f"{url}/import", json=direct).status_code == 202
    wait_status(http, image["id"], "active")
    assert http.post(f"{url}/import", json=direct).status_code == 409
    http.patch(url, headers=PATCH, json=[{"op": "replace", "path": "/protected", "value": True}])
    assert http.delete(url).status_code == 403
    http.patch(url, headers=PATCH, json=[{"op": "replace", "path": "/protected", "value": False}])
    assert http.delete(url).status_code == 204
    assert http.get(url).status_code == 404


def test_upload_over_the_cap_is_413(http):
    image = http.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()
    big = http.put(
        f"/v2/images/{image['id']}/stage", content=b"\1" * (5 * 1024 * 1024), headers=OCTETS
    )
    assert big.status_code == 413
    assert big.json()["error_code"] == "upload_limit"
    assert http.get(f"/v2/images/{image['id']}").json()["status"] == "queued"


def test_put_file_shows_saving_until_active_and_queued_after_a_refusal(http, server):
    image = http.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()
    url = f"/v2/images/{image['id']}"
    seen = []

    def body():
        yield DATA[:65536]
        # Mid-upload, as another client sees it: Glance's "saving", not "uploading".
        with api_client(server.url, timeout=60, headers=TRUSTED_ADMIN) as other:
            seen.append(other.get(url).json()["status"])
        yield DATA[65536:]

    assert http.put(f"{url}/file", content=body(), headers=OCTETS).status_code == 204
    assert seen == ["saving"]
    active = http.get(url).json()
    assert active["status"] == "active"
    assert active["checksum"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    # A refused PUT /file puts the image back to queued, ready for another try.
    again = http.post("/v2/images", json={"disk_format": "raw", "container_format": "bare"})
    big = http.put(
        f"/v2/images/{again.json()['id']}/file", content=b"\1" * (5 * 1024 * 1024), headers=OCTETS
    )
    assert big.status_code == 413
    assert http.get(f"/v2/images/{again.json()['id']}").json()["status"] == "queued"


def test_download_ranges(http):
    image_id = _active(http)
    full = http.get(f"/v2/images/{image_id}/file")
    assert full.content == DATA
    assert full.headers["Content-MD5"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    part = http.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, DATA[10:20])
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    tail = http.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=-5"})
    assert tail.content == DATA[-5:]
    for bad in (f"bytes={len(DATA)}-", "lines=1-2", "bytes=5-1"):
        assert http.get(f"/v2/images/{image_id}/file", headers={"Range": bad}).status_code == 416
    # Glance refuses several ranges with 400 ("Requests with multiple ranges are not supported").
    several = http.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=0-1,4-5"})
    assert several.status_code == 400


def test_visibility_and_identity(http):
    private = http.post(
        "/v2/images", json={"name": "mine", "visibility": "private"}, headers=ALICE
    ).json()
    community = http.post(
        "/v2/images", json={"name": "comm", "visibility": "community"}, headers=ALICE
    ).json()
    assert private["owner"] == "alice"
    assert http.get(f"/v2/images/{private['id']}", headers=BOB).status_code == 404
    assert http.get(f"/v2/images/{community['id']}", headers=BOB).status_code == 200
    bob_default = [i["id"] for i in http.get("/v2/images", headers=BOB).json()["images"]]
    assert community["id"] not in bob_default
    bob_comm = http.get("/v2/images", params={"visibility": "community"}, headers=BOB).json()
    assert community["id"] in [i["id"] for i in bob_comm["images"]]
    assert http.delete(f"/v2/images/{community['id']}", headers=BOB).status_code == 403
    admin = http.get(
        "/v2/images", params={"owner": "alice", "limit": 1000}, headers={"X-Roles": "admin"}
    ).json()
    assert private["id"] in [i["id"] for i in admin["images"]]
    assert http.get("/v2/images", params={"protected": "yes"}).status_code == 400
    assert http.get("/v2/images", params={"sort": "bogus:asc"}).status_code == 400
    assert http.get("/v2/images", params={"created_at": "gte:notatime"}).status_code == 400
    since = http.get(
        "/v2/images", params={"created_at": "gte:2000-01-01T00:00:00Z", "limit": 1000}
    ).json()
    assert private["id"] in [i["id"] for i in since["images"]]
    future = http.get("/v2/images", params={"updated_at": "gt:2999-01-01T00:00:00"}).json()
    assert future["images"] == []


def test_tasks_expose_stage_progress(http):
    image_id = _imported(http)
    tasks = http.get(f"/v2/images/{image_id}/tasks").json()["tasks"]
    task = http.get(f"/v2/tasks/{tasks[0]['id']}").json()
    assert task["status"] == "success"
    assert {s["stage"] for s in task["stages"]} >= {"stage", "copy", "activate"}
    # Glance's tasks_api_access: the tasks API is for administrators.
    assert http.get(f"/v2/tasks/{tasks[0]['id']}", headers=BOB).status_code == 403


def test_static_token_and_postgresql(tmp_path, postgres_url):
    with (
        api_server(tmp_path / "data", api_token="s3cret", database_url=postgres_url) as srv,
        api_client(srv.url, timeout=60) as client,
    ):
        assert client.get("/v2/images").status_code == 401
        assert client.get("/healthz").status_code == 200
        token = {"X-Auth-Token": "s3cret"}
        client.headers.update(token)
        image = client.post(
            "/v2/images", json={"disk_format": "raw", "container_format": "bare"}
        ).json()
        client.put(
            f"/v2/images/{image['id']}/stage", content=DATA, headers=OCTETS
        ).raise_for_status()
        client.post(
            f"/v2/images/{image['id']}/import", json={"method": {"name": "glance-direct"}}
        ).raise_for_status()
        active = wait_status(client, image["id"], "active")
        assert active["checksum"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
        assert client.get(f"/v2/images/{image['id']}/file").content == DATA
        _assert_nul_refused(client, postgresql=True)


def _assert_nul_refused(client, *, postgresql=False):
    """A NUL character is a 400 with a stable code on every route, never a database crash."""
    for url in (
        "/v2/images/%00abc",
        "/v2/images?name=a%00b",
        "/v2/tasks?type=%00",
        "/v2/tasks/%00",
    ):
        answer = client.get(url)
        assert answer.status_code == 400, (url, answer.text)
        assert answer.json()["error_code"] == "invalid_request"
        assert "NUL" in answer.json()["message"]
    # In a JSON body it reaches the database, which refuses it: still the client's error.
    answer = client.post("/v2/images", json={"name": "a\u0000b", "disk_format": "raw"})
    if postgresql:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error_code"] == "invalid_value"
    else:
        assert answer.status_code == 201, answer.text  # SQLite stores it


def test_nul_characters_are_refused(http):
    _assert_nul_refused(http)


def test_image_list_pages_follow_a_multi_key_sort(http):
    tag = uuid.uuid4().hex
    names = ["b", "a", "b", None, "a", "c", "b"]  # ties and a NULL name: id must break them
    made = [
        http.post("/v2/images", json={"tags": [tag], **({"name": n} if n else {})}).json()
        for n in names
    ]
    for sort in ("name:asc,size:desc", "name:desc"):
        url, seen = f"/v2/images?tag={tag}&sort={sort}&limit=3", []
        while url:
            page = http.get(url).json()
            seen += page["images"]
            url = page.get("next")
        everything = http.get(f"/v2/images?tag={tag}&sort={sort}&limit=100").json()["images"]
        assert [i["id"] for i in seen] == [i["id"] for i in everything]
        assert sorted(i["id"] for i in seen) == sorted(i["id"] for i in made)
        order = {image["id"]: index for index, image in enumerate(made)}
        keyed = [(i["name"] or "", order[i["id"]]) for i in seen]
        # As in Glance, created_at (then id) breaks ties, descending in both sorts here (one
        # direction given: that one; several: descending): the newest first.
        by_age = sorted(keyed, key=lambda k: k[1], reverse=True)
        assert keyed == sorted(by_age, key=lambda k: k[0], reverse=sort == "name:desc")

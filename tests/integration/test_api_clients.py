"""The API driven by openstacksdk and python-glanceclient against a real `imageport api`."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest
from api_support import CONFIRMED, TRUSTED_ADMIN, api_client, api_server, file_server, wait_status
from glanceclient import Client as GlanceClient
from glanceclient import exc as glance_exc
from openstack import connection

pytestmark = [
    # openstacksdk and glanceclient warn about their own deprecations; not ours to fix.
    pytest.mark.filterwarnings("ignore::openstack.warnings.OpenStackWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # raw bytes; not a multiple of any chunk size


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    (root / "www").mkdir()
    (root / "www" / "disk.raw").write_bytes(PAYLOAD)
    with file_server(root / "www") as (www, port):
        stores = {
            "local": {"kind": "file", "path": str(root / "local")},
            "second": {"kind": "file", "path": str(root / "second")},
        }
        with api_server(
            root / "data",
            auth_strategy="trusted-proxy",
            stores=stores,
            web_download_allowed_networks=["127.0.0.0/8"],
            web_download_ports=[port],
        ) as server:
            yield server, www


@pytest.fixture
def conn(served):
    server, _ = served
    # Built from configuration, so the SDK discovers the version from the root as a real cloud
    # makes it do (a ready-made session skipped that and called /images unversioned).
    conn = connection.Connection(
        auth_type="none", auth={"endpoint": server.url}, image_api_version="2"
    )
    # The identity an authenticating proxy would add, on every request of the SDK.
    conn.session.additional_headers.update(TRUSTED_ADMIN)
    return conn


@pytest.fixture
def http(served):
    with api_client(served[0].url, timeout=60, headers=TRUSTED_ADMIN) as client:
        yield client


@pytest.fixture
def glance(served):
    # One role: glanceclient percent-encodes header values, so "admin,member" would arrive as
    # one unknown role (admin implies member and reader anyway).
    admin = {**CONFIRMED, "X-Project-Id": "admin-project", "X-Roles": "admin"}
    return GlanceClient("2", endpoint=served[0].url, token="unused", identity_headers=admin)


def test_sdk_glance_direct_then_download(conn, http):
    image = conn.image.create_image(
        name="sdk-direct",
        data=io.BytesIO(PAYLOAD),
        disk_format="raw",
        container_format="bare",
        use_import=True,
    )
    active = wait_status(http, image.id, "active")
    assert active["checksum"] == hashlib.md5(PAYLOAD, usedforsecurity=False).hexdigest()
    assert active["os_hash_value"] == hashlib.sha512(PAYLOAD).hexdigest()
    assert active["size"] == len(PAYLOAD)
    downloaded = conn.image.download_image(conn.image.get_image(image.id))
    assert downloaded.content == PAYLOAD
    stages = http.get(f"/v2/images/{image.id}/tasks").json()["tasks"][0]["stages"]
    assert [s["stage"] for s in stages][:3] == ["stage", "verify", "inspect"]
    # The stage step adopted the upload: same hashes, no second pass over the bytes.
    assert stages[0]["output"]["md5"] == active["checksum"]


def test_sdk_stage_and_import_methods(conn, http, served):
    _, www = served
    staged = conn.image.create_image(
        name="sdk-staged", disk_format="raw", container_format="bare", allow_duplicates=True
    )
    staged.data = io.BytesIO(PAYLOAD)
    conn.image.stage_image(staged)
    assert conn.image.get_image(staged.id).status == "uploading"
    conn.image.import_image(staged, method="glance-direct")
    wait_status(http, staged.id, "active")

    web = conn.image.create_image(
        name="sdk-web", disk_format="raw", container_format="bare", allow_duplicates=True
    )
    conn.image.import_image(web, method="web-download", uri=f"{www}/disk.raw")
    active = wait_status(http, web.id, "active")
    assert active["checksum"] == hashlib.md5(PAYLOAD, usedforsecurity=False).hexdigest()

    conn.image.import_image(conn.image.get_image(web.id), method="copy-image", stores=["second"])
    for _ in range(300):
        copied = http.get(f"/v2/images/{web.id}").json()
        if copied.get("stores") == "local,second":
            break
        time.sleep(0.1)
    assert copied["stores"] == "local,second"
    assert copied["status"] == "active"


def test_sdk_list_filters_and_paging(conn, http):
    ids = []
    for n in range(5):
        created = http.post(
            "/v2/images",
            json={
                "name": f"page-{n}",
                "tags": ["paging", f"n{n}"],
                "min_ram": n,
                "disk_format": "qcow2",
                "container_format": "bare",
            },
        ).json()
        ids.append(created["id"])
    listed = list(conn.image.images(tag=["paging"], sort_key="name", sort_dir="asc", limit=2))
    assert [i.name for i in listed] == [f"page-{n}" for n in range(5)]
    assert [i.name for i in conn.image.images(tag=["paging", "n3"])] == ["page-3"]
    page = http.get("/v2/images", params={"tag": "paging", "limit": 2, "sort": "name:desc"})
    body = page.json()
    assert [i["name"] for i in body["images"]] == ["page-4", "page-3"]
    assert "marker=" in body["next"]
    assert body["first"].startswith("/v2/images?")
    second = http.get(body["next"]).json()
    assert [i["name"] for i in second["images"]] == ["page-2", "page-1"]
    last = http.get(second["next"]).json()
    assert [i["name"] for i in last["images"]] == ["page-0"]
    assert "next" not in last
    assert conn.image.find_image("page-2").id == ids[2]


def test_glanceclient_upload_update_and_list(glance, http):
    image = glance.images.create(name="gc-1", disk_format="raw", container_format="bare")
    glance.images.upload(image["id"], io.BytesIO(PAYLOAD))  # PUT /file: answers once active
    shown = glance.images.get(image["id"])
    assert shown["status"] == "active"
    assert shown["checksum"] == hashlib.md5(PAYLOAD, usedforsecurity=False).hexdigest()
    assert b"".join(glance.images.data(image["id"])) == PAYLOAD
    glance.images.update(image["id"], min_ram=512, purpose="test", remove_props=[])
    updated = glance.images.get(image["id"])
    assert updated["min_ram"] == 512
    assert updated["purpose"] == "test"
    glance.image_tags.update(image["id"], "gold")
    assert "gold" in glance.images.get(image["id"])["tags"]
    names = [i["name"] for i in glance.images.list(filters={"tag": ["gold"]})]
    assert names == ["gc-1"]
    staged = glance.images.create(name="gc-2", disk_format="raw", container_format="bare")
    glance.images.stage(staged["id"], io.BytesIO(PAYLOAD))
    glance.images.image_import(staged["id"], method="glance-direct")
    wait_status(http, staged["id"], "active")
    ordered = [
        i["name"]
        for i in glance.images.list(
            sort_key="name", sort_dir="desc", filters={"name": "in:gc-1,gc-2"}
        )
    ]
    assert ordered == ["gc-2", "gc-1"]
    glance.images.delete(staged["id"])
    assert http.get(f"/v2/images/{staged['id']}").status_code == 404


def test_glanceclient_members(glance, served):
    owner = {"X-Project-Id": "alice", "X-Roles": "member"}
    guest = {"X-Project-Id": "bob", "X-Roles": "member"}
    with api_client(served[0].url, headers=TRUSTED_ADMIN) as client:
        image = client.post("/v2/images", json={"name": "shared-1"}, headers=owner).json()
        assert client.get(f"/v2/images/{image['id']}", headers=guest).status_code == 404
        member = glance.image_members.create(image["id"], "bob")
        assert member["status"] == "pending"
        assert client.get(f"/v2/images/{image['id']}", headers=guest).status_code == 200
        listed = client.get("/v2/images", headers=guest).json()["images"]
        assert image["id"] not in [i["id"] for i in listed]  # pending: not in the default list
        pending = client.get("/v2/images", params={"member_status": "pending"}, headers=guest)
        assert image["id"] in [i["id"] for i in pending.json()["images"]]
        answer = client.put(
            f"/v2/images/{image['id']}/members/bob", json={"status": "accepted"}, headers=owner
        )
        assert answer.status_code == 403  # only the member answers
        client.put(
            f"/v2/images/{image['id']}/members/bob", json={"status": "accepted"}, headers=guest
        ).raise_for_status()
        listed = client.get("/v2/images", headers=guest).json()["images"]
        assert image["id"] in [i["id"] for i in listed]
        assert [m["member_id"] for m in glance.image_members.list(image["id"])] == ["bob"]
        glance.image_members.delete(image["id"], "bob")
        assert client.get(f"/v2/images/{image['id']}", headers=guest).status_code == 404


def test_glanceclient_shows_the_message_of_an_error(glance):
    # glanceclient reads a JSON error as a mapping of objects; like Glance, the API answers its
    # Accept: */* with text, so glanceclient raises its own exception with our message.
    with pytest.raises(glance_exc.HTTPNotFound) as caught:
        glance.images.get("00000000-0000-4000-8000-000000000000")
    assert "no image found" in str(caught.value)

"""Glance 33 parity of the Image API (issue 14): each test pins an answer Glance gives.

The expected answers are Glance 33.0.0's, read from its source: glance/api/versions.py and
middleware/version_negotiation.py (discovery), api/v2/discovery.py (stores, usage),
api/v2/images.py and db/sqlalchemy/api.py (filters, sorting, markers, community images,
import checks), api/v2/image_data.py and common/wsgi.py (content types, stores, ranges,
InvalidImageData), api/v2/tasks.py (task bodies and list filters), async_/flows/
api_image_import.py (reserved properties) and the schemas of api/v2/*.py.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import httpx
import pytest
from api_support import (
    CONFIRMED,
    TRUSTED_ADMIN,
    api_client,
    api_server,
    file_server,
    wait_status,
)

from imageport.api.filters import split_in_values, split_operator

DATA = os.urandom(256 * 1024 + 7)
ALICE = {**CONFIRMED, "X-Project-Id": "alice", "X-User-Id": "alice-user", "X-Roles": "member"}
BOB = {**CONFIRMED, "X-Project-Id": "bob", "X-Roles": "member"}
RAW = {"disk_format": "raw", "container_format": "bare"}
OCTETS = {"Content-Type": "application/octet-stream"}
#: Glance 33's image schema: its base properties, then those of its schema-image.json.
IMAGE_PROPERTIES = {
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum",
    "os_hash_algo", "os_hash_value", "owner", "size", "virtual_size", "container_format",
    "disk_format", "created_at", "updated_at", "tags", "direct_url", "min_ram", "min_disk",
    "self", "file", "stores", "schema", "locations", "kernel_id", "ramdisk_id",
    "instance_uuid", "architecture", "os_distro", "os_version", "description",
    "cinder_encryption_key_id", "cinder_encryption_key_deletion_policy",
}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    (root / "www").mkdir()
    (root / "www" / "disk.raw").write_bytes(DATA)
    with file_server(root / "www") as (www, port):
        stores = {
            "local": {"kind": "file", "path": str(root / "local"), "description": "Fast disks"},
            "second": {"kind": "file", "path": str(root / "second")},
        }
        with api_server(
            root / "data",
            auth_strategy="trusted-proxy",
            stores=stores,
            image_count_total=100,
            web_download_allowed_networks=["127.0.0.0/8"],
            web_download_ports=[port],
        ) as server:
            yield server, www


@pytest.fixture
def http(served):
    with api_client(served[0].url, timeout=60, headers=TRUSTED_ADMIN) as client:
        yield client


def _image(http, headers=None, **fields):
    answer = http.post("/v2/images", json={**RAW, **fields}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _active(http, headers=None, **fields):
    image = _image(http, headers, **fields)
    answer = http.put(
        f"/v2/images/{image['id']}/file", content=DATA, headers={**(headers or {}), **OCTETS}
    )
    assert answer.status_code == 204, answer.text
    return image


def _ids(answer):
    assert answer.status_code == 200, answer.text
    return [image["id"] for image in answer.json()["images"]]


# Discovery


def test_versions_document_and_negotiation(served, http):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:  # no identity at all
        root = anonymous.get("/")
        assert root.status_code == 300
        versions = root.json()["versions"]
        # Glance 33's list without an image cache, in its order (2.14, 2.16, 2.18 need one).
        glance_order = [15, 13, 12, 11, 10, 9, 8, 17, 7, 6, 5, 4, 3, 2, 1, 0]
        assert [v["id"] for v in versions] == [f"v2.{m}" for m in glance_order]
        current = [v["id"] for v in versions if v["status"] == "CURRENT"]
        assert current == ["v2.17"]
        assert {v["status"] for v in versions} == {"CURRENT", "SUPPORTED"}
        assert {link["href"] for v in versions for link in v["links"]} == {f"{server.url}/v2/"}
        assert anonymous.get("/versions").status_code == 200
        assert anonymous.get("/versions").json() == root.json()
        unknown_paths = ("/v1/images", "/v3/images", "/va.1/images", "/v10", "/images", "/v2.18")
        for unknown in unknown_paths:
            answer = anonymous.get(unknown)
            assert (answer.status_code, answer.json()) == (300, root.json()), unknown
    assert http.get("/v2.5/images").status_code == 200  # a listed version is the v2 API
    assert http.get("/v2.17/schemas/image").json()["name"] == "image"
    # /v2 redirects to /v2/ as in Glance; /v2/ answers the document where Glance answers 404,
    # so that openstacksdk's discovery from an endpoint that ends in /v2 finds it.
    for endpoint in ("/v2", "/v2.5"):
        answer = anonymous_get(server.url, endpoint, follow_redirects=False)
        assert answer.status_code == 302, endpoint
        assert answer.headers["location"] == f"{server.url}/v2/"
    for endpoint in ("/v2", "/v2/", "/v2.17/"):
        answer = anonymous_get(server.url, endpoint, follow_redirects=True)
        assert (answer.status_code, answer.json()) == (200, root.json()), endpoint
    versioned = http.get("/images", headers={"Accept": "application/vnd.openstack.images-v2"})
    assert versioned.status_code == 200
    assert "images" in versioned.json()


def anonymous_get(base_url, path, *, follow_redirects=False):
    with httpx.Client(base_url=base_url, timeout=30, follow_redirects=follow_redirects) as anon:
        return anon.get(path)


def test_request_ids(http):
    answer = http.get("/v2/images")
    assert answer.headers["x-openstack-request-id"].startswith("req-")
    given = http.get("/v2/images", headers={"X-Openstack-Request-ID": "abc-123"})
    assert given.headers["x-openstack-request-id"] == "req-abc-123"
    too_long = http.get("/v2/images", headers={"X-Openstack-Request-ID": "x" * 65})
    assert too_long.status_code == 431


def test_usage_reports_the_callers_project(http):
    carol = {**CONFIRMED, "X-Project-Id": f"carol-{uuid.uuid4().hex[:6]}", "X-Roles": "member"}
    for _ in range(2):
        _image(http, carol)
    usage = http.get("/v2/info/usage", headers=carol).json()["usage"]
    assert set(usage) == {
        "image_size_total",
        "image_stage_total",
        "image_count_total",
        "image_count_uploading",
    }
    assert usage["image_count_total"] == {"limit": 100, "usage": 2}
    assert usage["image_size_total"] == {"limit": -1, "usage": 0}  # unlimited: -1
    assert usage["image_count_uploading"]["limit"] == -1


def test_stores_in_glances_shape(http):
    stores = http.get("/v2/info/stores").json()["stores"]
    assert stores == [
        {"id": "local", "description": "Fast disks", "default": "true"},
        {"id": "second"},
    ]
    detail = http.get("/v2/info/stores/detail").json()["stores"]
    assert [(s["id"], s["type"], s["weight"]) for s in detail] == [
        ("local", "file", 0),
        ("second", "file", 0),
    ]
    assert set(detail[0]["properties"]) == {"data_dir", "chunk_size", "thin_provisioning"}
    assert detail[0]["default"] == "true"


def test_schemas_are_glances(http):
    image = http.get("/v2/schemas/image").json()
    assert set(image["properties"]) == IMAGE_PROPERTIES
    assert image["additionalProperties"] == {"type": "string"}
    assert [link["rel"] for link in image["links"]] == ["self", "enclosure", "describedby"]
    assert image["properties"]["name"]["description"] == "Descriptive name for the image"
    assert image["properties"]["kernel_id"]["is_base"] is False
    images = http.get("/v2/schemas/images").json()
    assert images["properties"]["images"]["items"] == image
    assert set(images["properties"]) == {"images", "first", "next", "schema"}
    member = http.get("/v2/schemas/member").json()
    assert set(member) == {"name", "properties"}  # Glance serves the minimal form
    assert member["properties"]["status"]["enum"] == ["pending", "accepted", "rejected"]
    members = http.get("/v2/schemas/members").json()
    assert set(members["properties"]) == {"members", "schema"}
    task = http.get("/v2/schemas/task").json()
    assert {"user_id", "request_id", "image_id", "input", "result"} <= set(task["properties"])
    stub = http.get("/v2/schemas/tasks").json()["properties"]["tasks"]["items"]
    assert not {"input", "result", "message"} & set(stub["properties"])
    assert http.get("/v2/schemas/nothing").status_code == 404


def test_schema_properties_are_checked(http):
    assert http.post("/v2/images", json={"kernel_id": "not-a-uuid"}).status_code == 400
    policy = {"cinder_encryption_key_deletion_policy": "sometimes"}
    assert http.post("/v2/images", json=policy).status_code == 400
    fine = _image(http, kernel_id=str(uuid.uuid4()), os_distro="debian")
    assert fine["os_distro"] == "debian"


# Images


def test_created_image_location_is_absolute_and_hides_store_urls(served, http):
    created = http.post("/v2/images", json=RAW)
    assert created.headers["Location"] == f"{served[0].url}/v2/images/{created.json()['id']}"
    image = _active(http)
    shown = http.get(f"/v2/images/{image['id']}").json()
    # Glance's defaults (show_multiple_locations and show_image_direct_url off): not even an
    # administrator sees store URLs.
    assert "locations" not in shown
    assert "direct_url" not in shown
    assert shown["stores"] == "local"


def test_in_filters_and_operators(http):
    tag = uuid.uuid4().hex
    made = {name: _image(http, name=name, tags=[tag]) for name in ("a,b", "c", "d:e", "f")}
    names = {image["id"]: name for name, image in made.items()}

    def listed(**params):
        return sorted(names[i] for i in _ids(http.get("/v2/images", params={"tag": tag, **params})))

    assert listed(name='in:"a,b",c') == ["a,b", "c"]
    assert listed(name="eq:d:e") == ["d:e"]
    assert listed(id=f"in:{made['c']['id']},{made['f']['id']}") == ["c", "f"]
    assert listed(status="in:queued,active") == ["a,b", "c", "d:e", "f"]
    assert listed(status="bogus") == []  # Glance: no such image, not an error
    assert listed(disk_format="in:qcow2,raw") == ["a,b", "c", "d:e", "f"]
    for bad in (
        {"name": "d:e"},  # "d" is taken as an operator
        {"name": 'in:"a,b'},  # quote not closed
        {"name": 'in:x"a"'},  # no comma before the quote
        {"visibility": "bogus"},
        {"member_status": "bogus"},
        {"sort_key": "bogus"},
        {"sort_key": "min_ram"},  # not one of Glance's sort keys
        {"sort_dir": "up"},
        {"os_hidden": "maybe"},
        {"protected": "True"},
        {"size_min": "big"},
        {"created_at": "soon:2020-01-01T00:00:00Z"},
        {"changes-since": "2020-01-01T00:00:00Z"},
        {"limit": "-1"},
    ):
        answer = http.get("/v2/images", params={"tag": tag, **bad})
        assert answer.status_code == 400, (bad, answer.text)


def test_a_full_page_has_a_next_link(http):
    tag = uuid.uuid4().hex
    for n in range(2):
        _image(http, name=f"p{n}", tags=[tag])
    page = http.get("/v2/images", params={"tag": tag, "limit": 2}).json()
    assert "next" in page  # Glance links the page after a full one, even an empty one
    assert http.get(page["next"]).json()["images"] == []


def test_markers_as_glance_finds_them(http):
    private = _image(http, ALICE, visibility="private")
    missing = http.get("/v2/images", params={"marker": str(uuid.uuid4())}, headers=BOB)
    assert missing.status_code == 400
    hidden = http.get("/v2/images", params={"marker": private["id"]}, headers=BOB)
    assert hidden.status_code == 403  # Glance: Forbidden, the image exists but is not visible
    assert http.get("/v2/images", params={"marker": private["id"]}).status_code == 200


def test_community_images_only_of_the_callers_project_by_default(http):
    community = _image(http, ALICE, visibility="community")
    assert community["id"] not in _ids(http.get("/v2/images"))  # not even for an admin
    assert community["id"] in _ids(http.get("/v2/images", params={"visibility": "all"}))
    assert community["id"] in _ids(http.get("/v2/images", headers=ALICE))
    assert community["id"] not in _ids(http.get("/v2/images", params={"owner": "alice"}))
    assert community["id"] not in _ids(http.get("/v2/images", headers=BOB))
    assert community["id"] in _ids(
        http.get("/v2/images", params={"visibility": "community"}, headers=BOB)
    )


# Data


def test_upload_errors_answer_glances_statuses(http):
    image = _image(http)
    url = f"/v2/images/{image['id']}"
    text = {"Content-Type": "text/plain"}
    assert http.put(f"{url}/file", content=DATA, headers=text).status_code == 415
    assert http.put(f"{url}/stage", content=DATA, headers=text).status_code == 415
    unknown = http.put(
        f"{url}/file", content=DATA, headers={**OCTETS, "X-Image-Meta-Store": "nowhere"}
    )
    assert unknown.status_code == 400
    bad_size = http.put(
        f"{url}/file", content=DATA, headers={**OCTETS, "X-Openstack-Image-Size": "many"}
    )
    assert bad_size.status_code == 400
    assert http.get(url).json()["status"] == "queued"  # nothing was touched
    qcow2 = _image(http, disk_format="qcow2")
    mismatch = http.put(f"/v2/images/{qcow2['id']}/file", content=DATA, headers=OCTETS)
    assert mismatch.status_code == 415  # Glance's InvalidImageData
    assert http.get(f"/v2/images/{qcow2['id']}").json()["status"] == "queued"


def test_ranges_as_webob_reads_them(http):
    image = _active(http)
    url = f"/v2/images/{image['id']}/file"
    size = len(DATA)
    past_end = http.get(url, headers={"Range": f"bytes=10-{size + 100}"})
    assert (past_end.status_code, past_end.content) == (206, DATA[10:])
    assert past_end.headers["Content-Range"] == f"bytes 10-{size - 1}/{size}"
    # Glance sends the image's checksum with a part of the data too.
    assert past_end.headers["Content-MD5"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    whole = http.get(url, headers={"Range": f"bytes=-{size * 2}"})
    assert (whole.status_code, whole.content) == (206, DATA)
    assert http.get(url, headers={"Range": "bytes=0-1, 5-6"}).status_code == 400


def test_staged_size_shows_while_uploading(http):
    image = _image(http)
    http.put(f"/v2/images/{image['id']}/stage", content=DATA, headers=OCTETS).raise_for_status()
    staged = http.get(f"/v2/images/{image['id']}").json()
    assert (staged["status"], staged["size"]) == ("uploading", len(DATA))


# Imports


def test_import_checks_answer_glances_statuses(http):
    image = _image(http)
    url = f"/v2/images/{image['id']}/import"
    web = {"name": "web-download", "uri": "http://127.0.0.1:1/x"}
    assert http.post(url, json={"method": web, "stores": ["nowhere"]}).status_code == 409
    both = {"method": web, "stores": ["local"], "all_stores": True}
    assert http.post(url, json=both).status_code == 400
    header = {"X-Image-Meta-Store": "local"}
    assert (
        http.post(url, json={"method": web, "stores": ["local"]}, headers=header).status_code == 400
    )
    assert http.post(url, json={"method": {"name": "nothing"}}).status_code == 400
    assert http.post(url, json={}).status_code == 400
    formless = http.post("/v2/images", json={}).json()
    answer = http.post(f"/v2/images/{formless['id']}/import", json={"method": web})
    assert answer.status_code == 409  # Glance: "'container_format' needs to be set"


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("http://169.254.169.254:{port}/latest/meta-data", "url_address"),
        ("file:///etc/passwd", "url_scheme"),
        ("http://user:secret@127.0.0.1/disk.raw", "url_userinfo"),
        ("http://2130706433/disk.raw", "url_host"),
        ("http://127.0.0.1:22/disk.raw", "url_port"),
    ],
)
def test_refused_web_download_urls_are_400_at_the_call(served, http, uri, code):
    port = served[1].rsplit(":", 1)[1]  # the one port web-download may use here
    image = _image(http)
    body = {"method": {"name": "web-download", "uri": uri.format(port=port)}}
    answer = http.post(f"/v2/images/{image['id']}/import", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == code
    assert "does not pass filtering" in answer.json()["message"]
    assert http.get(f"/v2/images/{image['id']}/tasks").json()["tasks"] == []  # no task made
    assert http.get(f"/v2/images/{image['id']}").json()["status"] == "queued"


def test_import_ends_as_in_glance_and_the_task_reads_as_glances(served, http):
    _, www = served
    image = _image(http, ALICE)
    body = {"method": {"name": "web-download", "uri": f"{www}/disk.raw"}}
    started = http.post(f"/v2/images/{image['id']}/import", json=body, headers=ALICE)
    assert started.status_code == 202, started.text
    active = wait_status(http, image["id"], "active")
    # Glance drops its import lock when the task ends and keeps the (empty) store lists.
    assert "os_glance_import_task" not in active
    assert active["os_glance_importing_to_stores"] == ""
    assert active["os_glance_failed_import"] == ""
    [task] = http.get(f"/v2/images/{image['id']}/tasks").json()["tasks"]
    for _ in range(100):
        task = http.get(f"/v2/tasks/{task['id']}").json()
        if task["status"] == "success":
            break
        time.sleep(0.1)
    assert task["owner"] == "alice"  # the caller's project
    assert task["user_id"] == "alice-user"
    assert task["request_id"] == started.headers["x-openstack-request-id"]
    assert task["input"]["import_req"] == body
    assert task["input"]["backend"] == ["local"]
    assert task["type"] == "api_image_import"
    assert "expires_at" in task  # set once the task has ended
    assert {"error_code", "attempts", "stages"} <= set(task)  # imageport's extras stay


def test_copy_to_every_store_when_all_hold_it_is_a_no_op(http):
    image = _active(http)
    url = f"/v2/images/{image['id']}"
    copy = {"method": {"name": "copy-image"}, "all_stores": True}
    assert http.post(f"{url}/import", json=copy).status_code == 202
    for _ in range(300):
        if http.get(url).json().get("stores") == "local,second":
            break
        time.sleep(0.1)
    tasks = http.get(f"{url}/tasks").json()["tasks"]
    assert http.post(f"{url}/import", json=copy).status_code == 202  # nothing left to copy
    assert len(http.get(f"{url}/tasks").json()["tasks"]) == len(tasks)  # and no new task
    again = {"method": {"name": "copy-image"}, "stores": ["second"]}
    assert http.post(f"{url}/import", json=again).status_code == 400  # "already present"


def test_task_list_checks_its_filters(http):
    assert http.get("/v2/tasks", params={"status": "bogus"}).status_code == 400
    assert http.get("/v2/tasks", params={"type": "bogus"}).status_code == 400
    marker = http.get("/v2/tasks", params={"marker": "not-a-uuid"})
    assert (marker.status_code, marker.json()["message"]) == (400, "Invalid marker format")
    assert http.get("/v2/tasks", params={"status": "success"}).status_code == 200


def test_locations_and_direct_url_when_the_operator_shows_them(tmp_path):
    with (
        api_server(
            tmp_path / "data",
            auth_strategy="trusted-proxy",
            show_multiple_locations=True,
            show_image_direct_url=True,
        ) as server,
        api_client(server.url, timeout=60, headers=TRUSTED_ADMIN) as http,
    ):
        image = _active(http, visibility="public")
        admin = http.get(f"/v2/images/{image['id']}").json()
        assert [loc["metadata"]["store"] for loc in admin["locations"]] == ["local"]
        assert admin["direct_url"] == admin["locations"][0]["url"]
        other = http.get(f"/v2/images/{image['id']}", headers=BOB).json()
        assert other["locations"] == []  # Glance's get_image_location: administrators only
        assert "direct_url" not in other


def test_in_lists_split_as_glance_splits_them():
    assert split_in_values('a,"b,c",d') == ["a", "b,c", "d"]
    assert split_in_values('"say \\"hi\\"",x') == ['say \\"hi\\"', "x"]
    assert split_in_values("a,,b") == ["a", "", "b"]
    assert split_operator("in:a,b") == ("in", "a,b")
    assert split_operator("2015-08-27T09:49:58Z") == ("eq", "2015-08-27T09:49:58Z")
    assert split_operator("plain") == ("eq", "plain")

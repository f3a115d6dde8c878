"""Glance's policy over HTTP: every rule, for a reader, a member (own project and another
project) and an administrator, behind ``auth_strategy = trusted-proxy``; and a policy file."""

from __future__ import annotations

import os

import pytest
from api_support import CONFIRMED, OCTETS, TRUSTED_ADMIN, api_client, api_server, wait_status

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
ALICE = {"X-Project-Id": "alice", "X-Roles": "member"}
ALICE_READER = {"X-Project-Id": "alice", "X-Roles": "reader"}
BOB = {"X-Project-Id": "bob", "X-Roles": "member"}
BOB_READER = {"X-Project-Id": "bob", "X-Roles": "reader"}
NO_ROLES = {"X-Project-Id": "alice", "X-Roles": ""}
DATA = os.urandom(64 * 1024 + 3)
RAW = {"disk_format": "raw", "container_format": "bare"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    stores = {
        "local": {"kind": "file", "path": str(root / "local")},
        "second": {"kind": "file", "path": str(root / "second")},
    }
    with api_server(root / "data", auth_strategy="trusted-proxy", stores=stores) as srv:
        yield srv


@pytest.fixture
def http(server):
    # An administrator by default; the personas above replace the project and the roles.
    with api_client(server.url, timeout=60, headers=TRUSTED_ADMIN) as client:
        yield client


def _new(http, headers=ALICE, **fields):
    answer = http.post("/v2/images", json={**RAW, **fields}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _active(http, headers=ALICE, **fields):
    image_id = _new(http, headers, **fields)
    http.put(
        f"/v2/images/{image_id}/file", content=DATA, headers={**(headers or {}), **OCTETS}
    ).raise_for_status()
    return image_id


def _imported(http, headers=ALICE):
    """An image made active by a glance-direct import (PUT /file makes no Glance task)."""
    image_id = _new(http, headers)
    url = f"/v2/images/{image_id}"
    http.put(f"{url}/stage", content=DATA, headers={**headers, **OCTETS}).raise_for_status()
    body = {"method": {"name": "glance-direct"}}
    http.post(f"{url}/import", json=body, headers=headers).raise_for_status()
    wait_status(http, image_id, "active")
    return image_id


def _patch(http, image_id, headers, *ops):
    return http.patch(f"/v2/images/{image_id}", headers={**PATCH, **headers}, json=list(ops))


def _refused(answer, rule):
    """A 403 that names the policy rule."""
    assert answer.status_code == 403, answer.text
    assert answer.json()["error_code"] == "forbidden"
    assert f"policy does not allow {rule}" in answer.json()["message"], answer.text


def test_create(http):
    assert http.post("/v2/images", json={"name": "a"}, headers=ALICE).status_code == 201
    _refused(http.post("/v2/images", json={"name": "r"}, headers=ALICE_READER), "add_image")
    _refused(http.post("/v2/images", json={"name": "n"}, headers=NO_ROLES), "add_image")
    for_bob = http.post("/v2/images", json={"owner": "bob"}, headers=ALICE)
    assert for_bob.status_code == 403  # only an administrator names another owner
    made = http.post("/v2/images", json={"owner": "bob"})
    assert (made.status_code, made.json()["owner"]) == (201, "bob")


def test_show_and_list(http):
    private = _new(http, visibility="private")
    public = _new(http, TRUSTED_ADMIN, visibility="public")
    assert http.get(f"/v2/images/{private}", headers=ALICE_READER).status_code == 200
    assert http.get(f"/v2/images/{private}", headers=BOB).status_code == 404
    assert http.get(f"/v2/images/{private}", headers=NO_ROLES).status_code == 404  # get_image
    assert http.get(f"/v2/images/{public}", headers=BOB_READER).status_code == 200
    listed = http.get("/v2/images", params={"limit": 1000}, headers=ALICE_READER)
    assert private in [i["id"] for i in listed.json()["images"]]
    bobs = http.get("/v2/images", params={"limit": 1000}, headers=BOB_READER).json()["images"]
    assert private not in [i["id"] for i in bobs]
    _refused(http.get("/v2/images", headers=NO_ROLES), "get_images")
    # Image rules are project-scoped, as in Glance: a system-scoped token is refused.
    system = {"X-Project-Id": "", "X-Roles": "admin", "X-System-Scope": "all"}
    _refused(http.get("/v2/images", headers=system), "get_images")


def test_patch_visibility_properties_and_locations(http):
    image_id = _new(http, name="p")
    name = {"op": "replace", "path": "/name", "value": "q"}
    assert _patch(http, image_id, ALICE, name).status_code == 200
    _refused(_patch(http, image_id, ALICE_READER, name), "modify_image")
    assert _patch(http, image_id, BOB, name).status_code == 404  # bob cannot see it
    public = {"op": "replace", "path": "/visibility", "value": "public"}
    _refused(_patch(http, image_id, ALICE, public), "publicize_image")
    message = _patch(http, image_id, ALICE, public).json()["message"]
    assert message.endswith("making an image public is for administrators")
    _refused(http.post("/v2/images", json={"visibility": "public"}, headers=ALICE), "publicize")
    community = {"op": "replace", "path": "/visibility", "value": "community"}
    assert _patch(http, image_id, ALICE, community).json()["visibility"] == "community"
    _refused(_patch(http, image_id, BOB, name), "modify_image")  # community: visible to bob
    assert _patch(http, image_id, TRUSTED_ADMIN, public).json()["visibility"] == "public"
    assert http.post("/v2/images", json={"visibility": "community"}, headers=ALICE).is_success
    # Glance's reserved namespace and the locations stay out of members' reach.
    reserved = {"op": "add", "path": "/os_glance_import_task", "value": "x"}
    assert _patch(http, image_id, ALICE, reserved).status_code == 403
    assert http.post("/v2/images", json={"os_glance_x": "1"}, headers=ALICE).status_code == 403
    location = {"op": "add", "path": "/locations/-", "value": {"url": "http://x/y"}}
    assert _patch(http, image_id, ALICE, location).status_code == 403
    _refused(
        _patch(http, image_id, ALICE, {"op": "remove", "path": "/locations/0"}),
        "delete_image_location",
    )


def test_delete(http):
    private, community = _new(http), _new(http, visibility="community")
    _refused(http.delete(f"/v2/images/{private}", headers=ALICE_READER), "delete_image")
    assert http.delete(f"/v2/images/{private}", headers=BOB).status_code == 404
    _refused(http.delete(f"/v2/images/{community}", headers=BOB), "delete_image")
    assert http.delete(f"/v2/images/{private}", headers=ALICE).status_code == 204
    assert http.delete(f"/v2/images/{community}").status_code == 204  # the administrator


def test_upload_stage_and_import(http):
    image_id = _new(http)
    url = f"/v2/images/{image_id}"
    _refused(
        http.put(f"{url}/file", content=DATA, headers={**ALICE_READER, **OCTETS}), "upload_image"
    )
    assert http.put(f"{url}/file", content=DATA, headers={**BOB, **OCTETS}).status_code == 404
    # Glance's stage has no rule of its own: modify_image.
    _refused(
        http.put(f"{url}/stage", content=DATA, headers={**ALICE_READER, **OCTETS}), "modify_image"
    )
    assert http.put(f"{url}/stage", content=DATA, headers={**ALICE, **OCTETS}).status_code == 204
    direct = {"method": {"name": "glance-direct"}}
    _refused(http.post(f"{url}/import", json=direct, headers=ALICE_READER), "modify_image")
    assert http.post(f"{url}/import", json=direct, headers=ALICE).status_code == 202
    wait_status(http, image_id, "active")
    uploaded = _active(http)
    assert http.get(f"/v2/images/{uploaded}").json()["status"] == "active"
    copy = {"method": {"name": "copy-image"}, "stores": ["second"]}
    _refused(http.post(f"{url}/import", json=copy, headers=ALICE), "copy_image")
    assert http.post(f"{url}/import", json=copy).status_code == 202
    wait_status(http, image_id, "active")


def test_download(http):
    private, public = _active(http), _active(http, visibility="community")
    assert http.get(f"/v2/images/{private}/file", headers=ALICE).content == DATA
    _refused(http.get(f"/v2/images/{private}/file", headers=ALICE_READER), "download_image")
    assert http.get(f"/v2/images/{private}/file", headers=BOB).status_code == 404
    assert http.get(f"/v2/images/{public}/file", headers=BOB).content == DATA
    _refused(http.get(f"/v2/images/{public}/file", headers=BOB_READER), "download_image")


def test_tags(http):
    image_id = _new(http, visibility="community")
    assert http.put(f"/v2/images/{image_id}/tags/t", headers=ALICE).status_code == 204
    _refused(http.put(f"/v2/images/{image_id}/tags/u", headers=ALICE_READER), "modify_image")
    _refused(http.put(f"/v2/images/{image_id}/tags/u", headers=BOB), "modify_image")
    _refused(http.delete(f"/v2/images/{image_id}/tags/t", headers=BOB), "modify_image")
    assert http.delete(f"/v2/images/{image_id}/tags/t", headers=ALICE).status_code == 204


def test_members(http):
    image_id = _new(http, visibility="shared")
    members = f"/v2/images/{image_id}/members"
    _refused(http.post(members, json={"member": "bob"}, headers=ALICE_READER), "add_member")
    assert http.post(members, json={"member": "bob"}, headers=ALICE).status_code == 200
    assert http.post(members, json={"member": "bob"}, headers=BOB).status_code == 403
    assert [m["member_id"] for m in http.get(members, headers=ALICE_READER).json()["members"]] == [
        "bob"
    ]
    assert http.get(members, headers=BOB_READER).status_code == 200  # the member project
    assert http.get(f"{members}/bob", headers=BOB_READER).status_code == 200
    carol = {"X-Project-Id": "carol", "X-Roles": "member"}
    assert http.get(members, headers=carol).status_code == 404  # not shared with carol
    accept = {"status": "accepted"}
    _refused(http.put(f"{members}/bob", json=accept, headers=ALICE), "modify_member")
    _refused(http.put(f"{members}/bob", json=accept, headers=BOB_READER), "modify_member")
    answer = http.put(f"{members}/bob", json=accept, headers=BOB)
    assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
    _refused(http.delete(f"{members}/bob", headers=BOB), "delete_member")
    _refused(http.delete(f"{members}/bob", headers=ALICE_READER), "delete_member")
    assert http.delete(f"{members}/bob", headers=ALICE).status_code == 204


def test_deactivate_and_reactivate(http):
    image_id = _active(http, visibility="community")
    actions = f"/v2/images/{image_id}/actions"
    _refused(http.post(f"{actions}/deactivate", headers=ALICE_READER), "deactivate")
    _refused(http.post(f"{actions}/deactivate", headers=BOB), "deactivate")
    assert http.post(f"{actions}/deactivate", headers=ALICE).status_code == 204
    assert http.get(f"/v2/images/{image_id}").json()["status"] == "deactivated"
    assert http.post(f"{actions}/deactivate", headers=ALICE).status_code == 204  # no-op
    assert http.get(f"/v2/images/{image_id}/file", headers=ALICE).status_code == 403
    assert http.get(f"/v2/images/{image_id}/file").content == DATA  # administrators may
    _refused(http.post(f"{actions}/reactivate", headers=ALICE_READER), "reactivate")
    assert http.post(f"{actions}/reactivate", headers=ALICE).status_code == 204
    assert http.post(f"{actions}/reactivate", headers=ALICE).status_code == 204  # no-op
    assert http.get(f"/v2/images/{image_id}").json()["status"] == "active"
    assert http.get(f"/v2/images/{image_id}/file", headers=ALICE).content == DATA
    queued = _new(http)
    refused = http.post(f"/v2/images/{queued}/actions/deactivate", headers=ALICE)
    assert refused.status_code == 403
    assert refused.json()["message"] == "Not allowed to deactivate image in status 'queued'"
    assert http.post(f"/v2/images/{queued}/actions/reactivate").status_code == 403
    assert http.post(f"/v2/images/{queued}/actions/deactivate", headers=BOB).status_code == 404


def test_tasks(http):
    image_id = _imported(http)
    _refused(http.get("/v2/tasks", headers=ALICE), "tasks_api_access")
    assert http.get("/v2/tasks").status_code == 200
    image_tasks = http.get(f"/v2/images/{image_id}/tasks", headers=ALICE_READER)
    assert image_tasks.status_code == 200  # an image call: get_image
    task_id = image_tasks.json()["tasks"][0]["id"]
    _refused(http.get(f"/v2/tasks/{task_id}", headers=ALICE), "tasks_api_access")
    assert http.get(f"/v2/tasks/{task_id}").json()["id"] == task_id
    assert http.get(f"/v2/images/{image_id}/tasks", headers=BOB).status_code == 404


def test_store_details(http):
    _refused(http.get("/v2/info/stores/detail", headers=ALICE), "stores_info_detail")
    assert {s["id"] for s in http.get("/v2/info/stores/detail").json()["stores"]} == {
        "local",
        "second",
    }
    assert http.get("/v2/info/stores", headers=ALICE_READER).status_code == 200


def test_a_policy_file_overrides_glance_defaults(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        '# an operator\'s Glance policy.yaml\nadd_image: "role:admin"\n'
        'tasks_api_access: "role:member"\npublicize_image: "role:member"\n'
    )
    settings = {"auth_strategy": "trusted-proxy", "policy_file": str(policy)}
    with (
        api_server(tmp_path / "data", **settings) as srv,
        api_client(srv.url, timeout=60, headers=TRUSTED_ADMIN) as http,
    ):
        refused = http.post("/v2/images", json={"name": "x"}, headers=ALICE)
        _refused(refused, "add_image")
        assert "policy file overrides" in refused.json()["message"]
        image_id = _new(http, TRUSTED_ADMIN, owner="alice")
        public = {"op": "replace", "path": "/visibility", "value": "public"}
        assert _patch(http, image_id, ALICE, public).json()["visibility"] == "public"
        assert http.get("/v2/tasks", headers=ALICE).status_code == 200
        _refused(http.get("/v2/tasks", headers=ALICE_READER), "tasks_api_access")


def test_a_missing_policy_file_stops_the_start(tmp_path):
    missing = {"auth_strategy": "trusted-proxy", "policy_file": str(tmp_path / "no")}
    with pytest.raises(RuntimeError, match="exited"), api_server(tmp_path / "data", **missing):
        pass
    log = next(tmp_path.glob("api-*.log")).read_text()
    assert "policy_file" in log
    assert "does not exist" in log


def test_identity_must_be_confirmed(http):
    # The proxy's confirmation is the only way in: without it no rule is even consulted.
    unconfirmed = {"X-Identity-Status": "Invalid", "X-Roles": "admin"}
    assert http.get("/v2/images", headers=unconfirmed).status_code == 401
    assert http.get("/v2/images", headers={**CONFIRMED, **ALICE}).status_code == 200

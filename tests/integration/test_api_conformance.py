"""Answers `make conformance` found different from Glance 33.0.0's, pinned as Glance gives them.

Each test names what the side-by-side check (conformance/) saw Glance answer: request bodies
read whatever their Content-Type, uploads that need application/octet-stream, the request
``Content-Range`` of a download, the task views (PUT /file tasks hidden, Glance's keys), the
traces an upload leaves on the image, and the usage document without limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from api_support import CONFIRMED, OCTETS, TRUSTED_ADMIN, api_client, api_server, wait_status

DATA = os.urandom(64 * 1024 + 3)
RAW = {"disk_format": "raw", "container_format": "bare"}
ALICE = {**CONFIRMED, "X-Project-Id": "alice", "X-User-Id": "alice-user", "X-Roles": "member"}
UPLOAD_KEYS = {"os_glance_importing_to_stores", "os_glance_failed_import"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    stores = {
        "local": {"kind": "file", "path": str(root / "local")},
        "second": {"kind": "file", "path": str(root / "second")},
    }
    with api_server(root / "data", auth_strategy="trusted-proxy", stores=stores) as srv:
        yield srv


@pytest.fixture
def http(server):
    with api_client(server.url, timeout=60, headers=TRUSTED_ADMIN) as client:
        yield client


def _image(http, headers=None, **fields):
    answer = http.post("/v2/images", json={**RAW, **fields}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _uploaded(http, headers=None, **fields):
    image = _image(http, headers, **fields)
    url = f"/v2/images/{image['id']}/file"
    answer = http.put(url, content=DATA, headers={**(headers or {}), **OCTETS})
    assert answer.status_code == 204, answer.text
    return image


def _cli_tasks(server):
    """``imageport tasks list --json`` on the server's data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env["IMAGEPORT_DATA_DIR"] = str(server.data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "imageport", "tasks", "list", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)["tasks"]


# Request bodies


def test_create_reads_its_body_as_glance_does(http):
    empty = http.post("/v2/images", content=b"", headers={"Content-Type": "application/json"})
    assert (empty.status_code, empty.json()["message"]) == (400, "Body expected in request.")
    text = {"Content-Type": "text/plain"}
    plain = http.post("/v2/images", content=b'{"name": "p"}', headers=text)
    assert (plain.status_code, plain.json()["name"]) == (201, "p")
    not_json = http.post("/v2/images", content=b"{", headers={"Content-Type": "application/json"})
    assert (not_json.status_code, not_json.json()["message"]) == (
        400,
        "Malformed JSON in request body.",
    )
    # Glance answers a list with a 500; imageport with a 400, deliberately.
    assert http.post("/v2/images", json=[]).status_code == 400
    image = _image(http)
    members = f"/v2/images/{image['id']}/members"
    assert http.post(members).json()["message"] == "Body expected in request."
    assert http.post(f"/v2/images/{image['id']}/import").status_code == 400


def test_create_drops_the_hashes_a_client_sends(http):
    created = _image(http, os_hash_algo="sha512", os_hash_value="ab" * 64)
    assert (created["os_hash_algo"], created["os_hash_value"]) == (None, None)
    assert http.post("/v2/images", json={"os_hash_algo": 5}).status_code == 400  # the schema's
    assert http.post("/v2/images", json={"os_hash_value": "x" * 129}).status_code == 400
    patch = http.patch(
        f"/v2/images/{created['id']}",
        json=[{"op": "add", "path": "/os_hash_algo", "value": "md5"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    assert patch.status_code == 403  # PATCH still refuses a read-only field, as Glance


# Data


@pytest.mark.parametrize("verb", ["file", "stage"])
def test_data_without_a_content_type_is_415(http, verb):
    image = _image(http)
    answer = http.put(f"/v2/images/{image['id']}/{verb}", content=DATA)  # no Content-Type
    assert answer.status_code == 415, answer.text
    assert answer.json()["message"].startswith("Invalid content type None")
    assert http.get(f"/v2/images/{image['id']}").json()["status"] == "queued"


def test_a_request_content_range_is_honoured_without_a_range(http):
    image = _uploaded(http)
    url = f"/v2/images/{image['id']}/file"
    size = len(DATA)
    part = http.get(url, headers={"Content-Range": "bytes 0-9/*"})
    assert (part.status_code, part.content) == (206, DATA[:10])
    assert part.headers["Content-Range"] == f"bytes 0-9/{size}"
    sized = http.get(url, headers={"Content-Range": f"bytes 5-9/{size}"})
    assert (sized.status_code, sized.content) == (206, DATA[5:10])
    for bad in ("bytes 9-5/*", f"bytes 0-{size}/*", "bytes */*", "nonsense", f"bytes {size}-"):
        answer = http.get(url, headers={"Content-Range": bad})
        assert answer.status_code == 416, bad
        assert answer.json()["title"] == "Request Range Not Satisfiable"  # webob's words
    # A Range wins over a Content-Range.
    both = http.get(url, headers={"Range": "bytes=1-2", "Content-Range": "bytes 0-9/*"})
    assert both.content == DATA[1:3]


# What an upload leaves on the image, and its task


def test_an_upload_leaves_no_import_traces(server, http):
    image = _uploaded(http, ALICE)
    shown = http.get(f"/v2/images/{image['id']}", headers=ALICE).json()
    assert shown["status"] == "active"
    assert not UPLOAD_KEYS & set(shown)  # Glance sets them only for POST /import
    # The upload ran as an imageport task: hidden from Glance's task APIs, shown by the CLI.
    assert http.get(f"/v2/images/{image['id']}/tasks").json()["tasks"] == []
    [task] = [t for t in _cli_tasks(server) if t.get("image_id") == image["id"]]
    assert task["input"]["request"]["method"] == "glance-direct"
    assert http.get(f"/v2/tasks/{task['id']}").status_code == 404
    listed = http.get("/v2/tasks", params={"limit": 1000}).json()["tasks"]
    assert task["id"] not in [t["id"] for t in listed]


def test_a_refused_upload_leaves_no_import_traces(http):
    image = _image(http, disk_format="qcow2")
    answer = http.put(f"/v2/images/{image['id']}/file", content=DATA, headers=OCTETS)
    assert answer.status_code == 415, answer.text  # Glance's InvalidImageData
    shown = http.get(f"/v2/images/{image['id']}").json()
    assert shown["status"] == "queued"
    assert not UPLOAD_KEYS & set(shown)
    assert shown["checksum"] is None  # deliberate: Glance keeps the refused data's hashes


def test_a_deactivated_image_shows_no_stores(http):
    image = _uploaded(http)
    url = f"/v2/images/{image['id']}"
    assert http.get(url).json()["stores"] == "local"
    assert http.post(f"{url}/actions/deactivate").status_code == 204
    assert "stores" not in http.get(url).json()
    listed = http.get("/v2/images", params={"status": "deactivated"}).json()["images"]
    assert all("stores" not in i for i in listed)
    assert http.post(f"{url}/actions/reactivate").status_code == 204
    assert http.get(url).json()["stores"] == "local"


def test_import_tasks_read_as_glances(http):
    image = _image(http, ALICE)
    url = f"/v2/images/{image['id']}"
    assert http.put(f"{url}/stage", content=DATA, headers={**ALICE, **OCTETS}).status_code == 204
    body = {"method": {"name": "glance-direct"}}
    assert http.post(f"{url}/import", json=body, headers=ALICE).status_code == 202
    wait_status(http, image["id"], "active")
    copy = {"method": {"name": "copy-image"}, "stores": ["second"]}
    assert http.post(f"{url}/import", json=copy).status_code == 202  # the admin's task
    for _ in range(300):
        if http.get(url).json().get("stores") == "local,second":
            break
        time.sleep(0.1)
    [mine] = http.get(f"{url}/tasks", headers=ALICE).json()["tasks"]  # not the admin's copy
    assert {"deleted", "deleted_at", "expires_at", "input", "result", "message"} <= set(mine)
    assert (mine["deleted"], mine["deleted_at"]) == (False, None)
    assert not {"self", "schema"} & set(mine)
    assert set(mine["input"]) == {"image_id", "import_req", "backend"}
    assert set(mine["result"]) == {"image_id"}
    assert len(http.get(f"{url}/tasks").json()["tasks"]) == 2  # an administrator sees both
    shown = http.get(f"/v2/tasks/{mine['id']}").json()
    assert set(shown["input"]) == {"image_id", "import_req", "backend"}
    assert set(shown["result"]) == {"image_id"}
    assert {"self", "schema", "error_code", "attempts", "stages"} <= set(shown)
    stubs = http.get("/v2/tasks").json()["tasks"]
    assert stubs
    assert all("image_id" not in stub for stub in stubs)
    # Glance's type filter takes only the legacy "import"; an import is api_image_import.
    assert mine["type"] == "api_image_import"
    assert http.get("/v2/tasks", params={"type": "import"}).json()["tasks"] == []
    assert http.get("/v2/tasks", params={"type": "api_image_import"}).status_code == 400


def test_usage_is_empty_without_limits(http):
    assert http.get("/v2/info/usage").json() == {"usage": {}}

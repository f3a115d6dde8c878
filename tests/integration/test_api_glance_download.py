"""glance-download: between two running `imageport api`, and from a fake remote Image API.

The fake remote (127.0.0.1) records every request and the token it carried, so the tests see
what is sent before an import is accepted, and whose token the remote gets.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import httpx
import pytest
from api_support import CONFIRMED, OCTETS, TRUSTED_ADMIN, api_client, api_server, wait_status

from imageport.access.identity import Identity
from imageport.config import Settings
from imageport.errors import InvalidRequest, SourceNotFound, Unauthenticated
from imageport.pipeline import ImportRequest, import_existing, run_import
from imageport.pipeline.methods.glance_download import (
    RemoteAuth,
    check_remote_id,
    check_visible,
    file_url,
    remote_auth,
    remote_image,
    resolve_endpoint,
    task_token,
)
from imageport.records import ImageStatus, TaskStatus, repository, task_to_dict
from imageport.records.models import FORWARDED_TOKEN

DATA = os.urandom(2 * 1024 * 1024 + 11)


@pytest.fixture
def remote(tmp_path):
    """A running API holding one active image; yields (server, client, record)."""
    with (
        # show_multiple_locations: a test reaches the stored file through its location.
        api_server(tmp_path / "remote", show_multiple_locations=True) as server,
        api_client(server.url, timeout=60) as client,
    ):
        fields = {"disk_format": "raw", "container_format": "bare"}
        original = client.post("/v2/images", json=fields).json()
        client.put(
            f"/v2/images/{original['id']}/file", content=DATA, headers=OCTETS
        ).raise_for_status()
        yield server, client.get(f"/v2/images/{original['id']}").json()


@pytest.fixture
def local(tmp_path, remote):
    """A second API whose RegionTwo is the remote one; yields its client."""
    endpoints = {"RegionTwo": remote[0].url}
    with (
        api_server(tmp_path / "local", glance_download_endpoints=endpoints) as server,
        api_client(server.url, timeout=60) as client,
    ):
        yield client


def _import(client: httpx.Client, remote_id: str, region: str = "RegionTwo") -> httpx.Response:
    image = client.post("/v2/images", json={"name": "copy"}).json()
    method = {
        "name": "glance-download",
        "glance_image_id": remote_id,
        "glance_region": region,
        "glance_service_interface": "public",
    }
    answer = client.post(f"/v2/images/{image['id']}/import", json={"method": method})
    answer.image_id = image["id"]
    return answer


def test_glance_download_copies_and_verifies(remote, local):
    record = remote[1]
    assert _import(local, record["id"], region="Elsewhere").status_code == 400
    answer = _import(local, record["id"])
    assert answer.status_code == 202, answer.text
    copied = wait_status(local, answer.image_id, "active")
    assert copied["checksum"] == record["checksum"]
    assert copied["os_hash_value"] == record["os_hash_value"]
    assert (copied["disk_format"], copied["container_format"]) == ("raw", "bare")
    assert local.get(f"/v2/images/{copied['id']}/file").content == DATA


def test_glance_download_refuses_a_tampered_remote(remote, local):
    record = remote[1]
    # Flip one byte of the remote's stored data: same size, other hashes than its record says.
    stored = Path(record["locations"][0]["url"].removeprefix("file://"))
    tampered = bytearray(stored.read_bytes())
    tampered[1000] ^= 0xFF
    stored.write_bytes(bytes(tampered))
    assert hashlib.md5(bytes(tampered), usedforsecurity=False).hexdigest() != record["checksum"]
    answer = _import(local, record["id"])
    assert answer.status_code == 202
    refused = wait_status(local, answer.image_id, "queued")
    task = local.get(f"/v2/images/{answer.image_id}/tasks").json()["tasks"][0]
    assert (task["status"], task["error_code"]) == ("failure", "checksum_mismatch")
    assert refused["checksum"] is None


# A fake remote Image API: records every request, serves records the test writes.

REMOTE_ID = "0b7c4a52-6f0e-4b43-9d1e-2f4c1f7f3a10"
SMALL = os.urandom(96 * 1024 + 5)
OPERATOR_TOKEN = "operator-token"  # noqa: S105 - a test value


class FakeRemote:
    """A remote Image API on 127.0.0.1: ``records`` and ``data`` by id; ``seen`` requests."""

    def __init__(self) -> None:
        self.records: dict[str, object] = {}
        self.data: dict[str, bytes] = {}
        self.seen: list[tuple[str, str | None]] = []  # (path, X-Auth-Token)
        self.url = ""

    def put(self, image_id: str, data: bytes, **fields: object) -> dict:
        record = {
            "id": image_id,
            "status": "active",
            "size": len(data),
            "checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(),
            "os_hash_algo": "sha256",
            "os_hash_value": hashlib.sha256(data).hexdigest(),
            "disk_format": "raw",
            "container_format": "bare",
            "visibility": "private",
            "owner": "beta",
        }
        record.update(fields)
        self.records[image_id], self.data[image_id] = record, data
        return record


@pytest.fixture
def fake_remote():
    state = FakeRemote()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.seen.append((self.path, self.headers.get("X-Auth-Token")))
            parts = self.path.split("/")  # "", "v2", "images", ID[, "file"]
            found = len(parts) in (4, 5) and parts[:3] == ["", "v2", "images"]
            image_id = parts[3] if found else ""
            if image_id not in state.records or (len(parts) == 5 and parts[4] != "file"):
                self._answer(404, b"{}")
            elif len(parts) == 5:
                self._answer(200, state.data[image_id], "application/octet-stream")
            else:
                self._answer(200, json.dumps(state.records[image_id]).encode())

        def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _local_api(tmp_path, fake: FakeRemote, **settings):
    return api_server(
        tmp_path / "local",
        glance_download_endpoints={"RegionTwo": fake.url},
        glance_download_token=OPERATOR_TOKEN,
        **settings,
    )


def _import_as(
    client: httpx.Client, remote_id: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    image = client.post("/v2/images", json={"name": "copy"}, headers=headers).json()
    method = {"name": "glance-download", "glance_image_id": remote_id, "glance_region": "RegionTwo"}
    answer = client.post(
        f"/v2/images/{image['id']}/import", json={"method": method}, headers=headers
    )
    answer.image_id = image["id"]
    return answer


def test_remote_id_must_be_a_uuid_before_anything_is_sent(tmp_path, fake_remote):
    fake_remote.put(REMOTE_ID, SMALL)
    odd = [
        "not-a-uuid",
        "../../v3/auth/tokens",
        f"{REMOTE_ID}/../../../v3",
        f"../images/{REMOTE_ID}",
        "%2e%2e%2fv3",
        f"{{{REMOTE_ID}}}",
        REMOTE_ID.replace("-", ""),
        f"urn:uuid:{REMOTE_ID}",
        f"{REMOTE_ID}?x=1",
        f"{REMOTE_ID}#",
        f" {REMOTE_ID}",
        "",
        7,
        None,
    ]
    with _local_api(tmp_path, fake_remote) as server, api_client(server.url) as client:
        for remote_id in odd:
            answer = _import_as(client, remote_id)
            assert answer.status_code == 400, (remote_id, answer.text)
            assert client.get(f"/v2/images/{answer.image_id}").json()["status"] == "queued"
        assert fake_remote.seen == []
        # The same id in capitals is the same image, asked for in its canonical form.
        answer = _import_as(client, REMOTE_ID.upper())
        assert answer.status_code == 202, answer.text
        wait_status(client, answer.image_id, "active")
    assert [path for path, _ in fake_remote.seen] == [
        f"/v2/images/{REMOTE_ID}",
        f"/v2/images/{REMOTE_ID}/file",
    ]


BAD_RECORDS = [
    ({"os_hash_algo": "md5"}, "os_hash_algo", "remote_image_invalid"),
    ({"os_hash_algo": "sha1", "os_hash_value": "0" * 40}, "os_hash_algo", "remote_image_invalid"),
    ({"os_hash_algo": None, "os_hash_value": None}, "os_hash_algo", "remote_image_invalid"),
    ({"os_hash_value": "ab" * 16}, "os_hash_value", "remote_image_invalid"),
    ({"os_hash_value": "zz" * 32}, "os_hash_value", "remote_image_invalid"),
    ({"os_hash_algo": "sha512"}, "os_hash_value", "remote_image_invalid"),
    ({"checksum": "0" * 31}, "checksum", "remote_image_invalid"),
    ({"checksum": 12}, "checksum", "remote_image_invalid"),
    ({"size": -1}, "size", "remote_image_invalid"),
    ({"size": "12"}, "size", "remote_image_invalid"),
    ({"size": None}, "size", "remote_image_invalid"),
    ({"size": True}, "size", "remote_image_invalid"),
    ({"status": "queued"}, "status", "source_not_found"),
    ({"status": "deactivated"}, "status", "source_not_found"),
    ({"id": "11111111-2222-3333-4444-555555555555"}, "id", "remote_image_invalid"),
    ({"disk_format": ["raw"]}, "disk_format", "remote_image_invalid"),
]


def test_remote_records_are_validated_field_by_field(tmp_path, fake_remote):
    with _local_api(tmp_path, fake_remote) as server, api_client(server.url) as client:
        for changes, field, code in BAD_RECORDS:
            fake_remote.put(REMOTE_ID, SMALL, **changes)
            answer = _import_as(client, REMOTE_ID)
            assert answer.status_code == 400, (changes, answer.text)
            body = answer.json()
            assert body["error_code"] == code, (changes, body)
            assert field in body["message"], (changes, body)
        fake_remote.records[REMOTE_ID] = ["not", "an", "object"]
        answer = _import_as(client, REMOTE_ID)
        assert (answer.status_code, answer.json()["error_code"]) == (400, "remote_image_invalid")
        # No import was queued for any of them, and no data was asked for.
        assert not any(path.endswith("/file") for path, _ in fake_remote.seen)
        # A sha384 record with no MD5 is fine: the multihash vouches for the data.
        sha384 = hashlib.sha384(SMALL).hexdigest()
        fake_remote.put(
            REMOTE_ID, SMALL, checksum=None, os_hash_algo="sha384", os_hash_value=sha384
        )
        answer = _import_as(client, REMOTE_ID)
        assert answer.status_code == 202, answer.text
        copied = wait_status(client, answer.image_id, "active")
        assert copied["checksum"] == hashlib.md5(SMALL, usedforsecurity=False).hexdigest()


def test_the_operator_token_reads_only_what_the_caller_could(tmp_path, fake_remote):
    """trusted-proxy: the remote sees the operator's token, so private images are filtered."""
    alpha = {**CONFIRMED, "X-Project-Id": "alpha", "X-Roles": "member,reader"}
    ids = {
        "beta-private": "0b7c4a52-6f0e-4b43-9d1e-000000000001",
        "alpha-private": "0b7c4a52-6f0e-4b43-9d1e-000000000002",
        "beta-public": "0b7c4a52-6f0e-4b43-9d1e-000000000003",
        "beta-community": "0b7c4a52-6f0e-4b43-9d1e-000000000004",
    }
    fake_remote.put(ids["beta-private"], SMALL)
    fake_remote.put(ids["alpha-private"], SMALL, owner="alpha")
    fake_remote.put(ids["beta-public"], SMALL, visibility="public")
    fake_remote.put(ids["beta-community"], SMALL, visibility="community")
    with (
        _local_api(tmp_path, fake_remote, auth_strategy="trusted-proxy") as server,
        api_client(server.url, headers=alpha) as as_alpha,
        api_client(server.url, headers=TRUSTED_ADMIN) as as_admin,
    ):
        refused = _import_as(as_alpha, ids["beta-private"])
        absent = "0b7c4a52-6f0e-4b43-9d1e-0000000000ff"
        missing = _import_as(as_alpha, absent)
        # The same answer for "not yours" as for "not there": nothing to probe with.
        assert refused.status_code == missing.status_code == 400
        assert refused.json()["message"].replace(ids["beta-private"], "X") == (
            missing.json()["message"].replace(absent, "X")
        )
        for name in ("alpha-private", "beta-public", "beta-community"):
            answer = _import_as(as_alpha, ids[name])
            assert answer.status_code == 202, (name, answer.text)
            wait_status(as_alpha, answer.image_id, "active")
        # An administrator may import any image the operator's token reads.
        answer = _import_as(as_admin, ids["beta-private"])
        assert answer.status_code == 202, answer.text
        wait_status(as_admin, answer.image_id, "active")
        task = as_admin.get(f"/v2/images/{answer.image_id}/tasks").json()["tasks"][0]
        assert "forwarded_token" not in task["input"]
    # The remote saw the operator's token only, never what a client sent.
    assert {token for _, token in fake_remote.seen} == {OPERATOR_TOKEN}


# keystone mode: the caller's own token, forwarded. No Keystone here: the identity a keystone
# authenticator would produce is given directly to the functions the API route calls.


def test_keystone_callers_token_is_forwarded_and_never_shown(services, fake_remote):
    settings = services.settings.model_copy(
        update={
            "glance_download_endpoints": {"RegionTwo": fake_remote.url},
            "glance_download_token": OPERATOR_TOKEN,
        }
    )
    services.settings = settings
    user_token = "gAAAAA-user-token"  # noqa: S105 - a test value
    who = Identity(
        project_id="alpha",
        user_id="u1",
        roles=frozenset({"member", "reader"}),
        token=user_token,
        strategy="keystone",
    )
    fake_remote.put(REMOTE_ID, SMALL)
    auth = remote_auth(settings, who)
    assert (auth.token, auth.forwarded, auth.forwarded_token) == (user_token, True, user_token)
    assert user_token not in repr(auth)
    endpoint = resolve_endpoint(settings, "RegionTwo", None)
    record = remote_image(settings, endpoint, REMOTE_ID, auth)
    check_visible(record, who, auth)  # the remote decided: a private image of beta is fine
    with services.db.session() as session:
        image = repository.create_image(
            session, name="copy", disk_format="raw", container_format="bare", owner="alpha"
        )
        image_id = image.id
    request = ImportRequest(
        method="glance-download",
        source=file_url(endpoint, REMOTE_ID),
        disk_format="raw",
        checksum=record.checksum,
        os_hash_algo=record.os_hash_algo,
        os_hash_value=record.os_hash_value,
    )
    submitted = import_existing(
        services, image_id, request, expected=ImageStatus.QUEUED, forwarded_token=user_token
    )
    with services.db.session() as session:
        task = repository.get_task(session, submitted.task_id)
        assert task.input[FORWARDED_TOKEN] == user_token  # kept for the worker...
        assert user_token not in json.dumps(task_to_dict(task))  # ...and never shown
    outcome = run_import(services, submitted.task_id)
    assert outcome.status == TaskStatus.SUCCESS
    assert fake_remote.seen == [
        (f"/v2/images/{REMOTE_ID}", user_token),
        (f"/v2/images/{REMOTE_ID}/file", user_token),
    ]
    with services.db.session() as session:
        task = repository.get_task(session, submitted.task_id)
        assert task.input[FORWARDED_TOKEN] is None  # forgotten once the task ended
        assert repository.get_image(session, image_id).status == ImageStatus.ACTIVE
    # A retried task never falls back to the operator's token.
    with pytest.raises(SourceNotFound, match="start a new import"):
        task_token(services, submitted.task_id)


def test_forwarding_decision():
    settings = Settings(glance_download_token=OPERATOR_TOKEN)
    keystone = Identity("p", "u", frozenset({"member"}), token="mine", strategy="keystone")
    proxied = Identity("p", "u", frozenset({"member"}), token="api-key", strategy="trusted-proxy")
    tokenless = Identity("p", "u", frozenset({"member"}), strategy="keystone")
    assert remote_auth(settings, keystone) == RemoteAuth("mine", forwarded=True)
    # Another strategy's X-Auth-Token may be api_token: never forwarded.
    assert remote_auth(settings, proxied) == RemoteAuth(OPERATOR_TOKEN, forwarded=False)
    assert remote_auth(settings, Identity.administrator()).forwarded_token is None
    with pytest.raises(Unauthenticated):
        remote_auth(settings, tokenless)
    assert check_remote_id(REMOTE_ID.upper()) == REMOTE_ID
    with pytest.raises(InvalidRequest):
        file_url("http://remote", "../x")

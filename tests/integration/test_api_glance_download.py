"""glance-download between two running `imageport api` instances: hashes verified."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from api_support import api_server, wait_status

DATA = os.urandom(2 * 1024 * 1024 + 11)


@pytest.fixture
def remote(tmp_path):
    """A running API holding one active image; yields (server, client, record)."""
    with (
        api_server(tmp_path / "remote") as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        fields = {"disk_format": "raw", "container_format": "bare"}
        original = client.post("/v2/images", json=fields).json()
        client.put(f"/v2/images/{original['id']}/file", content=DATA).raise_for_status()
        yield server, client.get(f"/v2/images/{original['id']}").json()


@pytest.fixture
def local(tmp_path, remote):
    """A second API whose RegionTwo is the remote one; yields its client."""
    endpoints = {"RegionTwo": remote[0].url}
    with (
        api_server(tmp_path / "local", glance_download_endpoints=endpoints) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
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

"""glance-direct with the operator's conversion policy: PUT /stage, import, a raw image.

The upload is not hashed when it will be converted (nobody needs its digests); the image's
``checksum``, ``os_hash_value``, ``size`` and ``virtual_size`` are those of ``qemu-img convert
-O raw``'s output, hashed while it is written. A raw upload stored as it is keeps the digests
computed while it arrived.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3

from api_support import OCTETS, api_client, api_server, wait_status

from images import MIB, file_digests, make_qcow2, make_raw, raw_reference


def _body(path, piece):
    """The file in pieces of ``piece`` bytes: the API must not depend on how bytes arrive."""
    with path.open("rb") as handle:
        while data := handle.read(piece):
            yield data


def _stage_and_import(client, data_dir, path, disk_format, piece):
    """Upload and import; the image once active, and the scan recorded with the upload."""
    image = client.post(
        "/v2/images", json={"name": "c", "disk_format": disk_format, "container_format": "bare"}
    ).json()
    staged = client.put(
        f"/v2/images/{image['id']}/stage", content=_body(path, piece), headers=OCTETS
    )
    assert staged.status_code == 204, staged.text
    [scan] = data_dir.rglob(f"uploads/{image['id']}/scan.json")
    recorded = json.loads(scan.read_text())
    started = client.post(
        f"/v2/images/{image['id']}/import", json={"method": {"name": "glance-direct"}}
    )
    assert started.status_code == 202, started.text
    return wait_status(client, image["id"], "active"), recorded


def test_a_converted_upload_gets_the_digests_of_qemu_img_converts_output(tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=48 * MIB, data=6 * MIB)
    reference = raw_reference(src, tmp_path / "reference.raw")
    md5, sha512 = file_digests(reference)
    with api_server(tmp_path / "data", target_format="raw") as server:
        client = api_client(server.url)
        image, scan = _stage_and_import(client, tmp_path / "data", src, "qcow2", 65537)

    assert (image["disk_format"], image["checksum"], image["os_hash_value"]) == (
        "raw",
        md5,
        sha512,
    )
    assert image["size"] == image["virtual_size"] == reference.stat().st_size
    assert scan["md5"] is None  # converted before it is stored: not hashed on arrival


def test_an_upload_stored_as_it_is_keeps_the_digests_it_arrived_with(tmp_path):
    src = make_raw(tmp_path / "disk.raw", virtual=8 * MIB, data=3 * MIB)
    data = src.read_bytes()
    with api_server(tmp_path / "data", target_format="raw") as server:
        client = api_client(server.url)
        image, scan = _stage_and_import(client, tmp_path / "data", src, "raw", 3 * MIB + 1)

    assert image["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert image["size"] == len(data)
    assert scan["md5"] == image["checksum"]


def test_an_upload_of_declared_length_is_converted_while_it_arrives(tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=64 * MIB, data=8 * MIB)
    reference = raw_reference(src, tmp_path / "reference.raw")
    data_dir = tmp_path / "data"
    with api_server(data_dir, target_format="raw") as server:
        client = api_client(server.url)
        image = client.post(
            "/v2/images", json={"name": "e", "disk_format": "qcow2", "container_format": "bare"}
        ).json()
        # A body of known length (Content-Length): the API follows it with the early conversion.
        staged = client.put(
            f"/v2/images/{image['id']}/stage", content=src.read_bytes(), headers=OCTETS
        )
        assert staged.status_code == 204, staged.text
        started = client.post(
            f"/v2/images/{image['id']}/import", json={"method": {"name": "glance-direct"}}
        )
        assert started.status_code == 202, started.text
        image = wait_status(client, image["id"], "active")

    assert (image["checksum"], image["os_hash_value"]) == file_digests(reference)
    with contextlib.closing(sqlite3.connect(data_dir / "imageport.db")) as db:
        [(output,)] = db.execute("SELECT output FROM stage_runs WHERE stage = 'convert'")
    assert json.loads(output)["early"] is True
    assert list(data_dir.rglob("early.*")) == []

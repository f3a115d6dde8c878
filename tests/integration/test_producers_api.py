"""Issue #15's two VMDK classes through every door: the CLI and each Image API import method.

A monolithicSparse VMDK whose descriptor names the file it was created as ("My Disk (1).vmdk",
not the uploaded name) and a streamOptimized VMDK in VMware's layout (GD_AT_END header, footer,
end-of-stream marker) go through ``imageport inspect`` and ``imageport import`` (subprocesses)
and through a real ``imageport api`` with ``target_format = raw``: glance-direct (``PUT /stage``
then ``POST /import``), web-download (from an HTTP server on 127.0.0.1) and ``PUT /file``.
Each must end ``active`` as raw, 4 MiB, with exactly the bytes ``qemu-img convert -f vmdk -O
raw`` writes. A VMware file whose footer disagrees with its header fails its import with the
rule named.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_support import OCTETS, api_client, api_server, file_server, wait_status

import producers as vm
from images import stored_path

CLASSES = ("renamed_sparse", "vmware_stream")


@pytest.fixture(scope="module")
def vmdks(tmp_path_factory) -> dict[str, Path]:
    """The two classes, and what qemu-img's own conversion of each to raw hashes to."""
    root = tmp_path_factory.mktemp("vmdk-classes")
    payload = vm.payload(root)
    return {
        "renamed_sparse": vm.monolithic_sparse(root, payload, "upload.vmdk", "My Disk (1).vmdk"),
        "vmware_stream": vm.vmware_stream_optimized(root, payload, "exported.vmdk"),
        "bad_footer": vm.vmware_stream_optimized(root, payload, "bad.vmdk", capacity=16384),
    }


def _reference(path: Path) -> str:
    out = path.with_suffix(".reference.raw")
    if not out.exists():
        vm.qemu_img("convert", "-f", "vmdk", "-O", "raw", path, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(vmdks):
    """An HTTP server on 127.0.0.1 serving the images (web-download's source)."""
    with file_server(next(iter(vmdks.values())).parent) as served:
        yield served


@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    _, port = files
    root = tmp_path_factory.mktemp("vmdk-api")
    with api_server(
        root / "data",
        target_format="raw",
        web_download_allowed_networks=["127.0.0.0/8"],  # the file server is on loopback ...
        web_download_ports=[80, 443, port],  # ... on a random port: allow exactly that
    ) as srv:
        yield srv


@pytest.fixture
def http(server):
    with api_client(server.url, timeout=60) as client:
        yield client


def _new_image(http: httpx.Client, name: str) -> str:
    created = http.post(
        "/v2/images", json={"name": name, "disk_format": "vmdk", "container_format": "bare"}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _assert_converted(http: httpx.Client, image_id: str, source: Path) -> None:
    image = wait_status(http, image_id, "active")
    assert (image["disk_format"], image["virtual_size"]) == ("raw", vm.SIZE)
    body = http.get(f"/v2/images/{image_id}/file")
    assert hashlib.sha256(body.content).hexdigest() == _reference(source)


@pytest.mark.parametrize("which", CLASSES)
def test_glance_direct(http, vmdks, which):
    image_id = _new_image(http, f"direct-{which}")
    staged = http.put(
        f"/v2/images/{image_id}/stage", content=vmdks[which].read_bytes(), headers=OCTETS
    )
    assert staged.status_code == 204, staged.text
    started = http.post(f"/v2/images/{image_id}/import", json={"method": {"name": "glance-direct"}})
    assert started.status_code == 202, started.text
    _assert_converted(http, image_id, vmdks[which])


@pytest.mark.parametrize("which", CLASSES)
def test_web_download(http, vmdks, files, which):
    base, _ = files
    image_id = _new_image(http, f"web-{which}")
    method = {"name": "web-download", "uri": f"{base}/{vmdks[which].name}"}
    started = http.post(f"/v2/images/{image_id}/import", json={"method": method})
    assert started.status_code == 202, started.text
    _assert_converted(http, image_id, vmdks[which])


@pytest.mark.parametrize("which", CLASSES)
def test_put_file(http, vmdks, which):
    image_id = _new_image(http, f"file-{which}")
    uploaded = http.put(
        f"/v2/images/{image_id}/file", content=vmdks[which].read_bytes(), headers=OCTETS
    )
    assert uploaded.status_code == 204, uploaded.text
    _assert_converted(http, image_id, vmdks[which])


def test_a_footer_that_disagrees_fails_the_import_with_its_rule(http, vmdks):
    image_id = _new_image(http, "bad-footer")
    # The footer is at the very end: PUT /stage stores the bytes, the import refuses them.
    staged = http.put(
        f"/v2/images/{image_id}/stage", content=vmdks["bad_footer"].read_bytes(), headers=OCTETS
    )
    assert staged.status_code == 204, staged.text
    started = http.post(f"/v2/images/{image_id}/import", json={"method": {"name": "glance-direct"}})
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60
    while (task := http.get(f"/v2/images/{image_id}/tasks").json()["tasks"][0])["status"] not in (
        "success",
        "failure",
    ):
        assert time.monotonic() < deadline, task
        time.sleep(0.1)
    assert (task["status"], task["error_code"]) == ("failure", "vmdk_structure")
    assert "capacity 16384 (footer) != 8192 (header)" in task["message"]
    assert "(rule vmdk_footer)" in task["message"]
    assert http.get(f"/v2/images/{image_id}").json()["status"] == "queued"


def _cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env["IMAGEPORT_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "imageport", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_cli_inspects_and_imports_both_classes(vmdks, tmp_path):
    for which in CLASSES:
        source = vmdks[which]
        inspected = _cli(["inspect", str(source), "--disk-format", "vmdk", "--json"], tmp_path)
        verdict = json.loads(inspected.stdout)
        assert inspected.returncode == 0, verdict
        assert (verdict["verdict"], verdict["detected_format"], verdict["virtual_size"]) == (
            "accept",
            "vmdk",
            vm.SIZE,
        )
        imported = _cli(["import", str(source), "--target-format", "raw", "--json"], tmp_path)
        assert imported.returncode == 0, imported.stderr
        image = json.loads(imported.stdout)
        assert (image["status"], image["disk_format"], image["virtual_size"]) == (
            "active",
            "raw",
            vm.SIZE,
        )
        stored = stored_path(image["locations"][0]["url"])
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == _reference(source)

"""The ``openstack image`` CLI, openstacksdk endpoint overrides and glanceclient against
``imageport api``, as they work against Glance 33.

The CLI runs as a subprocess: against an API with ``auth_strategy`` noauth on 127.0.0.1
(``--os-auth-type none``, every caller an administrator) for the image commands, and with
passwords against the test Keystone for the member commands, which look projects up in
Keystone (as they do with Glance). openstacksdk is pointed at the API with
``image_endpoint_override`` with and without ``/v2``: version discovery must find v2 either
way, as it does with Glance.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_support import TRUSTED_ADMIN, api_client, api_server, file_server, wait_status
from glanceclient import Client as GlanceClient
from keystone_support import DOMAIN, REGION
from openstack import connection

pytestmark = [
    # openstacksdk and glanceclient warn about their own deprecations; not ours to fix.
    pytest.mark.filterwarnings("ignore::openstack.warnings.OpenStackWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

PAYLOAD = os.urandom(1024 * 1024 + 5)
OPENSTACK = Path(sys.executable).with_name("openstack")
CLI_TIMEOUT = 120.0  # seconds for one CLI command


@pytest.fixture(scope="module")
def noauth(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "www").mkdir()
    (root / "www" / "disk.raw").write_bytes(PAYLOAD)
    (root / "disk.raw").write_bytes(PAYLOAD)
    stores = {
        "local": {"kind": "file", "path": str(root / "local"), "description": "Local disks"},
        "second": {"kind": "file", "path": str(root / "second")},
    }
    with (
        file_server(root / "www") as (www, port),
        api_server(
            root / "data",
            stores=stores,
            web_download_allowed_networks=["127.0.0.0/8"],
            web_download_ports=[port],
        ) as server,
    ):
        yield server, www, root / "disk.raw"


def cli(*args: str, env: dict[str, str] | None = None, endpoint: str | None = None):
    """Run ``openstack ARGS`` (JSON output parsed when asked for); fail on a non-zero exit."""
    options = ["--os-auth-type", "none", "--os-endpoint", endpoint] if endpoint else []
    run = subprocess.run(
        [str(OPENSTACK), *options, "--os-image-api-version", "2", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OS_")}, **(env or {})},
        check=False,
    )
    assert run.returncode == 0, (args, run.stdout, run.stderr)
    return json.loads(run.stdout) if "json" in args else run.stdout


def test_openstack_image_commands(noauth):
    server, _, disk = noauth

    def image(*args):
        return cli("image", *args, endpoint=server.url)

    created = image(
        "create", "cli-1", "--disk-format", "raw", "--container-format", "bare",
        "--file", str(disk), "--property", "purpose=demo", "--tag", "gold", "-f", "json",
    )  # fmt: skip
    assert created["status"] == "active"
    assert created["checksum"] == hashlib.md5(PAYLOAD, usedforsecurity=False).hexdigest()
    imported = image(
        "create", "cli-2", "--disk-format", "raw", "--container-format", "bare", "--import",
        "--file", str(disk), "-f", "json",
    )  # fmt: skip
    with api_client(server.url, timeout=60) as http:
        wait_status(http, imported["id"], "active")
    listed = image("list", "--tag", "gold", "--status", "active", "-f", "json")
    assert [i["ID"] for i in listed] == [created["id"]]
    by_property = image("list", "--property", "purpose=demo", "-f", "json")
    assert [i["Name"] for i in by_property] == ["cli-1"]
    image("set", "--min-ram", "512", "--property", "os_distro=debian", "--tag", "silver",
          created["id"])  # fmt: skip
    shown = image("show", created["id"], "-f", "json")
    assert shown["min_ram"] == 512
    assert sorted(shown["tags"]) == ["gold", "silver"]
    assert shown["properties"]["os_distro"] == "debian"
    image("set", "--deactivate", created["id"])
    assert image("show", created["id"], "-f", "json")["status"] == "deactivated"
    image("set", "--activate", created["id"])
    assert image("show", created["id"], "-f", "json")["status"] == "active"

    web = image("create", "cli-web", "--disk-format", "raw", "--container-format", "bare",
                "-f", "json", "--file", str(disk))  # fmt: skip
    image("import", web["id"], "--method", "copy-image", "--store", "second")
    with api_client(server.url, timeout=60) as http:
        for _ in range(300):
            if http.get(f"/v2/images/{web['id']}").json().get("stores") == "local,second":
                break
            time.sleep(0.1)
        assert http.get(f"/v2/images/{web['id']}").json()["stores"] == "local,second"

    stores = image("stores", "list", "-f", "json")
    assert [(s["ID"], s["Description"], s["Default"]) for s in stores] == [
        ("local", "Local disks", True),
        ("second", None, None),
    ]
    info = image("import", "info", "-f", "json")
    assert "web-download" in json.dumps(info)
    tasks = image("task", "list", "-f", "json")
    assert {t["Type"] for t in tasks} == {"api_image_import"}
    task = image("task", "show", tasks[0]["ID"], "-f", "json")
    assert task["id"] == tasks[0]["ID"]
    assert task["status"] in ("pending", "processing", "success", "failure")

    image("delete", created["id"])
    names = [i["Name"] for i in image("list", "-f", "json")]
    assert "cli-1" not in names
    assert "cli-2" in names


def _cloud_env(keystone, user: str, tmp_path: Path) -> dict[str, str]:
    """A clouds.yaml for ``user`` of the test Keystone; OS_CLOUD selects it."""
    who = keystone.users[user]
    clouds = {
        "clouds": {
            "test": {
                "auth": {
                    "auth_url": keystone.auth_url,
                    "username": who.name,
                    "password": who.password,
                    "project_name": who.project_name,
                    "user_domain_name": DOMAIN,
                    "project_domain_name": DOMAIN,
                },
                "region_name": REGION,
                "identity_api_version": "3",
            }
        }
    }
    path = tmp_path / f"clouds-{user}.yaml"
    path.write_text(json.dumps(clouds))  # JSON is YAML
    return {"OS_CLIENT_CONFIG_FILE": str(path), "OS_CLOUD": "test"}


@pytest.fixture(scope="module")
def with_keystone(keystone, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-keystone")
    with api_server(root / "data", **keystone.api_settings()) as server:
        keystone.set_image_endpoint(server.url)
        yield server


def test_openstack_image_member_commands(with_keystone, keystone, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(PAYLOAD)
    alice = _cloud_env(keystone, "alice-member", tmp_path)
    bob = _cloud_env(keystone, "bob-member", tmp_path)
    bob_project = keystone.users["bob-member"].project_id
    shared = cli(
        "image", "create", "cli-shared", "--shared", "--disk-format", "raw",
        "--container-format", "bare", "--file", str(disk), "-f", "json", env=alice,
    )  # fmt: skip
    member = cli("image", "add", "project", shared["id"], bob_project, "-f", "json", env=alice)
    assert member["status"] == "pending"
    cli("image", "set", "--accept", shared["id"], env=bob)
    members = cli("image", "member", "list", shared["id"], "-f", "json", env=alice)
    assert [(m["Member ID"], m["Status"]) for m in members] == [(bob_project, "accepted")]
    assert shared["id"] in [i["ID"] for i in cli("image", "list", "-f", "json", env=bob)]
    cli("image", "remove", "project", shared["id"], bob_project, env=alice)
    assert cli("image", "member", "list", shared["id"], "-f", "json", env=alice) == []


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk-override")
    with api_server(root / "data", auth_strategy="trusted-proxy") as server:
        yield server


@pytest.mark.parametrize("suffix", ["", "/v2", "/v2/"])
def test_sdk_discovers_v2_with_an_endpoint_override(trusted, suffix):
    conn = connection.Connection(
        auth_type="none",
        auth={"endpoint": trusted.url},
        image_endpoint_override=trusted.url + suffix,
        image_api_version="2",
    )
    conn.session.additional_headers.update(TRUSTED_ADMIN)
    created = conn.image.create_image(
        name=f"override{suffix.replace('/', '-')}", disk_format="raw", container_format="bare"
    )
    assert conn.image.get_image(created.id).status == "queued"
    assert created.id in [image.id for image in conn.image.images()]
    assert conn.image.get_endpoint().rstrip("/").endswith("/v2")


@pytest.mark.parametrize("suffix", ["", "/v2"])
def test_glanceclient_with_and_without_the_version_in_its_endpoint(trusted, suffix):
    admin = {"X-Identity-Status": "Confirmed", "X-Project-Id": "admin-project", "X-Roles": "admin"}
    glance = GlanceClient("2", endpoint=trusted.url + suffix, token="x", identity_headers=admin)
    image = glance.images.create(name=f"gc{suffix}", disk_format="raw", container_format="bare")
    assert glance.images.get(image["id"])["status"] == "queued"
    assert image["id"] in [i["id"] for i in glance.images.list()]

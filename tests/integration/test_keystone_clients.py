"""openstacksdk and python-glanceclient with passwords, finding imageport in Keystone's catalog.

They upload, import, list and share as alice's and bob's users, and are refused where Glance's
default rules say so: a reader creates, uploads and deletes nothing, a member makes nothing
public, only an administrator copies an image to another store.
"""

from __future__ import annotations

import io
import os
import time

import pytest
from api_support import api_server
from glanceclient import Client as GlanceClient
from glanceclient import exc as glance_exc
from keystone_support import DOMAIN, REGION
from openstack import connection
from openstack import exceptions as sdk_exc

pytestmark = [
    # openstacksdk and glanceclient warn about their own deprecations; not ours to fix.
    pytest.mark.filterwarnings("ignore::openstack.warnings.OpenStackWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

PAYLOAD = os.urandom(1024 * 1024 + 17)  # raw bytes
RAW = {"disk_format": "raw", "container_format": "bare"}


@pytest.fixture(scope="module")
def served(keystone, tmp_path_factory):
    root = tmp_path_factory.mktemp("ks-clients")
    stores = {
        "local": {"kind": "file", "path": str(root / "local")},
        "second": {"kind": "file", "path": str(root / "second")},
    }
    with api_server(root / "data", **keystone.api_settings(stores=stores)) as server:
        # The catalog's image endpoint is how the clients find this server.
        keystone.set_image_endpoint(server.url)
        yield server


def sdk(keystone, user: str) -> connection.Connection:
    who = keystone.users[user]
    return connection.Connection(
        auth={
            "auth_url": keystone.auth_url,
            "username": who.name,
            "password": who.password,
            "project_name": who.project_name,
            "user_domain_name": DOMAIN,
            "project_domain_name": DOMAIN,
        },
        auth_type="password",
        region_name=REGION,
        image_api_version="2",
    )


def glance(keystone, user: str) -> GlanceClient:
    return GlanceClient("2", session=keystone.session(user))


def wait_active(get, image_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        image = get(image_id)
        if image.status == "active" or time.monotonic() > deadline:
            assert image.status == "active", image
            return image
        time.sleep(0.1)


def test_sdk_finds_imageport_in_the_catalog_and_uploads_imports_lists(served, keystone):
    conn = sdk(keystone, "alice-member")
    assert conn.image.get_endpoint().startswith(served.url)
    uploaded = conn.image.create_image(
        name="sdk-upload", data=io.BytesIO(PAYLOAD), allow_duplicates=True, **RAW
    )
    imported = conn.image.create_image(
        name="sdk-import", data=io.BytesIO(PAYLOAD), use_import=True, allow_duplicates=True, **RAW
    )
    for image in (uploaded, imported):
        active = wait_active(conn.image.get_image, image.id)
        assert active.owner == keystone.users["alice-member"].project_id
        assert active.size == len(PAYLOAD)
    listed = {image.id for image in conn.image.images()}
    assert {uploaded.id, imported.id} <= listed
    assert conn.image.download_image(imported.id).content == PAYLOAD


def test_glanceclient_stages_imports_and_shares_with_another_project(served, keystone):
    alice, bob = glance(keystone, "alice-member"), glance(keystone, "bob-member")
    bob_project = keystone.users["bob-member"].project_id
    image = alice.images.create(name="gc-shared", visibility="shared", **RAW)
    alice.images.stage(image.id, io.BytesIO(PAYLOAD))
    alice.images.image_import(image.id, method="glance-direct")
    wait_active(alice.images.get, image.id)
    assert image.id in {i.id for i in alice.images.list()}

    alice.image_members.create(image.id, bob_project)
    pending = bob.images.list(filters={"member_status": "pending"})
    assert image.id in {i.id for i in pending}
    assert image.id not in {i.id for i in bob.images.list()}
    bob.image_members.update(image.id, bob_project, "accepted")
    assert image.id in {i.id for i in bob.images.list()}
    members = {m.member_id: m.status for m in alice.image_members.list(image.id)}
    assert members == {bob_project: "accepted"}
    assert b"".join(bob.images.data(image.id)) == PAYLOAD


def test_reader_creates_uploads_and_deletes_nothing(served, keystone):
    target = sdk(keystone, "alice-member").image.create_image(
        name="for-the-reader", allow_duplicates=True, **RAW
    )
    reader = sdk(keystone, "alice-reader")
    assert reader.image.get_image(target.id).id == target.id  # a reader reads
    with pytest.raises(sdk_exc.ForbiddenException):
        reader.image.create_image(name="by-reader", allow_duplicates=True, **RAW)
    # Image.upload hands back the response (openstacksdk's proxy does not raise here).
    uploaded = reader.image.get_image(target.id).upload(reader.image, data=io.BytesIO(PAYLOAD))
    assert uploaded.status_code == 403, uploaded.text
    with pytest.raises(sdk_exc.ForbiddenException):
        reader.image.stage_image(reader.image.get_image(target.id), data=io.BytesIO(PAYLOAD))
    with pytest.raises(sdk_exc.ForbiddenException):
        reader.image.delete_image(target.id)
    assert reader.image.get_image(target.id).status == "queued"


def test_only_an_administrator_publicizes_and_copies(served, keystone):
    member = sdk(keystone, "alice-member")
    with pytest.raises(sdk_exc.ForbiddenException):
        member.image.create_image(
            name="public-by-member", visibility="public", allow_duplicates=True, **RAW
        )
    image = member.image.create_image(
        name="to-copy", data=io.BytesIO(PAYLOAD), allow_duplicates=True, **RAW
    )
    wait_active(member.image.get_image, image.id)
    # import_image hands back the response (openstacksdk does not raise here).
    refused = member.image.import_image(image, method="copy-image", stores=["second"])
    assert refused.status_code == 403, refused.text

    admin = sdk(keystone, "alice-admin")
    public = admin.image.create_image(
        name="public-by-admin", visibility="public", allow_duplicates=True, **RAW
    )
    assert public.visibility == "public"
    accepted = admin.image.import_image(image, method="copy-image", stores=["second"])
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 60
    while (record := member.image.get(f"/images/{image.id}").json())["stores"] != "local,second":
        assert time.monotonic() < deadline, record
        time.sleep(0.1)


def test_glanceclient_refusals_are_http_forbidden(served, keystone):
    """glanceclient turns a 403 into HTTPForbidden only if it can read the error body."""
    member = glance(keystone, "alice-member")
    image = member.images.create(name="gc-refusals", visibility="shared", **RAW)
    with pytest.raises(glance_exc.HTTPForbidden):
        glance(keystone, "alice-reader").images.create(name="by-reader", **RAW)
    with pytest.raises(glance_exc.HTTPForbidden):
        member.images.create(name="gc-public", visibility="public", **RAW)
    bob_project = keystone.users["bob-member"].project_id
    member.image_members.create(image.id, bob_project)
    with pytest.raises(glance_exc.HTTPForbidden):
        glance(keystone, "bob-member").images.delete(image.id)  # a member is not the owner

"""Glance's unified limits from Keystone (``use_keystone_limits``), read by oslo.limit.

The session's Keystone registers the four limits on the image service (image_count_total
100) and gives bob-project a project limit of 2 images (keystone_support.BOB_IMAGE_COUNT).
"""

from __future__ import annotations

import httpx
import pytest
from api_support import api_client, api_server
from keystone_support import BOB_IMAGE_COUNT, REGION, REGISTERED_LIMITS
from oslo_config import cfg
from oslo_limit import limit

from imageport.access.keystone_limits import GROUP, KeystoneLimitEnforcer
from imageport.config import Settings
from imageport.errors import ConfigurationError, OverQuota

pytestmark = [
    # openstacksdk (under oslo.limit) warns about its own deprecations; not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

IMAGE = {"disk_format": "raw", "container_format": "bare"}


def limit_settings(keystone, **extra) -> dict[str, object]:
    wanted = {
        "use_keystone_limits": True,
        "keystone_endpoint_id": keystone.image_endpoint_id,
        "keystone_region_name": REGION,
    }
    return keystone.api_settings(**{**wanted, **extra})


def client(server, token: str) -> httpx.Client:
    return api_client(server.url, headers={"X-Auth-Token": token}, timeout=30)


@pytest.fixture
def oslo_limit_global(monkeypatch):
    """oslo.limit keeps its options and its Keystone connection process-wide: undo both."""
    monkeypatch.setattr(limit, "_SDK_CONNECTION", None)
    yield
    for name in list(cfg.CONF[GROUP]):
        cfg.CONF.clear_override(name, group=GROUP)


def test_project_limit_from_keystone_refuses_the_third_image(keystone, tmp_path):
    with api_server(tmp_path / "data", **limit_settings(keystone)) as server:
        bob = client(server, keystone.token("bob-member"))
        for n in range(BOB_IMAGE_COUNT):
            created = bob.post("/v2/images", json={**IMAGE, "name": f"bob-{n}"})
            assert created.status_code == 201, created.text
        refused = bob.post("/v2/images", json={**IMAGE, "name": "one-too-many"})
        assert refused.status_code == 413, refused.text
        assert "image_count_total is over limit of 2" in refused.json()["message"]
        # alice-project has no project limit: the registered default (100) applies.
        alice = client(server, keystone.token("alice-member"))
        for n in range(BOB_IMAGE_COUNT + 1):
            created = alice.post("/v2/images", json={**IMAGE, "name": f"alice-{n}"})
            assert created.status_code == 201, created.text


def test_enforcer_reads_registered_and_project_limits(keystone, oslo_limit_global):
    enforcer = KeystoneLimitEnforcer(Settings(**limit_settings(keystone)))
    bob = keystone.users["bob-member"].project_id
    alice = keystone.users["alice-member"].project_id

    def usage(value):
        return lambda _project, names: dict.fromkeys(names, value)

    enforcer.enforce(bob, {"image_count_total": 1}, usage(BOB_IMAGE_COUNT - 1))
    with pytest.raises(OverQuota) as caught:
        enforcer.enforce(bob, {"image_count_total": 1}, usage(BOB_IMAGE_COUNT))
    assert caught.value.code == "over_quota"
    assert str(caught.value) == (
        f"Project {bob} is over a limit for [Resource image_count_total is over limit of "
        f"{BOB_IMAGE_COUNT} due to current usage {BOB_IMAGE_COUNT} and delta 1]"
    )
    count = REGISTERED_LIMITS["image_count_total"]
    enforcer.enforce(alice, {"image_count_total": 1}, usage(count - 1))
    size = REGISTERED_LIMITS["image_size_total"]
    with pytest.raises(OverQuota, match="image_size_total is over limit"):
        enforcer.enforce(alice, {"image_size_total": 2}, usage(size - 1))


def test_unknown_endpoint_is_a_configuration_error(keystone, oslo_limit_global):
    settings = Settings(**limit_settings(keystone, keystone_endpoint_id="no-such-endpoint"))
    with pytest.raises(ConfigurationError, match="keystone_endpoint_id"):
        KeystoneLimitEnforcer(settings).enforce("p", {"image_count_total": 1}, lambda *_: {})

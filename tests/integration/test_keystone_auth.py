"""auth_strategy keystone against a real Keystone: tokens, forged headers, expiry, the cache.

One ``imageport api`` for the module validates tokens with the session's Keystone
(``keystone`` fixture); the tests speak HTTP to it with tokens Keystone issued.
"""

from __future__ import annotations

import datetime
import time

import httpx
import pytest
from api_support import api_client, api_server
from keystoneauth1 import access

from imageport.access.keystone import KeystoneAuthenticator, TokenCache
from imageport.config import Settings
from imageport.errors import TransientError, Unauthenticated

IMAGE = {"name": "disk", "disk_format": "raw", "container_format": "bare"}


@pytest.fixture(scope="module")
def server(keystone, tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("ks-auth") / "data", **keystone.api_settings()) as s:
        yield s


def client(server, token: str | None = None, **headers: str) -> httpx.Client:
    if token is not None:
        headers["X-Auth-Token"] = token
    return api_client(server.url, headers=headers, timeout=30)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (Keystone's log is written after its answer)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_open_paths_answer_without_a_token(server):
    with client(server) as http:
        for path in ("/", "/versions", "/healthz", "/readyz"):
            response = http.get(path)
            assert response.status_code in (200, 300), (path, response.text)


def test_missing_and_invalid_tokens_are_401_with_the_keystone_challenge(server, keystone):
    challenge = f'Keystone uri="{keystone.auth_url}"'
    for token in (None, "not-a-token", keystone.token("alice-member") + "x"):
        with client(server, token) as http:
            response = http.get("/v2/images")
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == challenge
        assert response.json()["error_code"] == "unauthorized"
        assert keystone.auth_url in response.json()["message"]


def test_member_lists_and_creates_images_of_its_project(server, keystone):
    alice = keystone.users["alice-member"]
    with client(server, keystone.token("alice-member")) as http:
        assert http.get("/v2/images").status_code == 200
        created = http.post("/v2/images", json=IMAGE)
        assert created.status_code == 201, created.text
        assert created.json()["owner"] == alice.project_id
        assert http.get(f"/v2/images/{created.json()['id']}").status_code == 200


def test_forged_identity_headers_are_ignored(server, keystone):
    bob = keystone.users["bob-member"]
    with client(server, keystone.token("bob-member")) as http:
        bobs = http.post("/v2/images", json={**IMAGE, "name": "bob-private"}).json()
    forged = {
        "X-Project-Id": bob.project_id,
        "X-Tenant-Id": bob.project_id,
        "X-User-Id": bob.user_id,
        "X-Roles": "admin,member,reader",
        "X-Identity-Status": "Confirmed",
        "X-Service-Roles": "service,admin",
        "X-Is-Admin-Project": "True",
    }
    alice = keystone.users["alice-member"]
    with client(server, keystone.token("alice-member"), **forged) as http:
        created = http.post("/v2/images", json=IMAGE)
        assert created.status_code == 201, created.text
        assert created.json()["owner"] == alice.project_id
        # Admin-only actions stay refused, and bob's private image stays invisible.
        public = http.post("/v2/images", json={**IMAGE, "visibility": "public"})
        assert public.status_code == 403, public.text
        assert http.get(f"/v2/images/{bobs['id']}").status_code == 404
        listed = [i["id"] for i in http.get("/v2/images").json()["images"]]
        assert bobs["id"] not in listed
        assert created.json()["id"] in listed


def test_revoked_token_is_401(server, keystone):
    token = keystone.token("alice-member")
    keystone.revoke(token)
    with client(server, token) as http:
        response = http.get("/v2/images")
    assert response.status_code == 401
    assert "revoked" in response.json()["message"]


def test_expired_token_is_401_unless_a_service_token_vouches(server, keystone):
    lifetime = 4.0
    expires = time.monotonic() + lifetime
    token = keystone.short_lived_token("alice-member", seconds=lifetime)
    with client(server, token) as http:
        assert http.get("/v2/images").status_code == 200  # valid, and now cached
        time.sleep(max(0.0, expires - time.monotonic()) + 0.5)
        # The cached validation ends with the token's own expiry, before the cache time.
        assert http.get("/v2/images").status_code == 401
        service = {"X-Service-Token": keystone.token("imageport")}
        vouched = http.get("/v2/images", headers=service)
        assert vouched.status_code == 200, vouched.text
        created = http.post("/v2/images", json=IMAGE, headers=service)
        assert created.json()["owner"] == keystone.users["alice-member"].project_id
        # A service token without the service role, or an invalid one, vouches for nothing.
        for bad in (keystone.token("bob-member"), "not-a-token"):
            refused = http.get("/v2/images", headers={"X-Service-Token": bad})
            assert refused.status_code == 401, refused.text


def test_validated_tokens_are_cached_without_asking_keystone_again(server, keystone):
    token = keystone.token("alice-member")
    with client(server, token) as http:
        before = keystone.requests()
        assert http.get("/v2/images").status_code == 200
        assert wait_for(lambda: keystone.requests() == before + 1), keystone.requests() - before
        for _ in range(5):
            assert http.get("/v2/images").status_code == 200
        time.sleep(0.5)  # a validation would have been logged by now
        assert keystone.requests() == before + 1


def test_cache_time_bounds_how_long_a_revoked_token_passes(keystone, tmp_path):
    cache_seconds = 3.0
    settings = keystone.api_settings(keystone_cache_seconds=cache_seconds)
    with api_server(tmp_path / "data", **settings) as server:
        token = keystone.token("alice-member")
        with client(server, token) as http:
            assert http.get("/v2/images").status_code == 200
            cached_until = time.monotonic() + cache_seconds
            keystone.revoke(token)
            # keystonemiddleware's trade-off: a cached token is trusted for the cache time.
            assert http.get("/v2/images").status_code == 200
            time.sleep(max(0.0, cached_until - time.monotonic()) + 0.3)
            assert http.get("/v2/images").status_code == 401


def test_unreachable_keystone_is_503_never_authenticated(tmp_path, keystone):
    settings = keystone.api_settings(keystone_auth_url="http://127.0.0.1:9/v3")
    with api_server(tmp_path / "data", **settings) as server, client(server, "any") as http:
        response = http.get("/v2/images")
    assert response.status_code == 503, response.text
    assert response.json()["error_code"] == "identity_unavailable"


def test_identity_comes_only_from_the_validated_token(keystone):
    settings = Settings(**keystone.api_settings(keystone_cache_seconds=0))
    authenticator = KeystoneAuthenticator.from_settings(settings)
    member, service = keystone.token("alice-member"), keystone.token("imageport")
    alice = keystone.users["alice-member"]
    identity = authenticator.authenticate(
        {"x-auth-token": member + "\n", "x-service-token": service, "x-roles": "admin"}
    )
    assert identity.project_id == alice.project_id
    assert identity.user_id == alice.user_id
    assert identity.roles == {"member", "reader"}
    assert identity.domain_id == "default"
    assert identity.project_domain_id == "default"
    assert identity.system_scope is None
    assert identity.token == member
    assert identity.strategy == "keystone"
    assert {"service", "admin"} <= identity.service_roles
    assert not identity.is_admin

    system = keystone.admin_session().get_token()
    admin = authenticator.authenticate({"x-auth-token": system})
    assert admin.system_scope == "all"
    assert admin.project_id is None
    assert "admin" in admin.roles

    with pytest.raises(Unauthenticated):
        authenticator.authenticate({})
    offline = Settings(**keystone.api_settings(keystone_auth_url="http://127.0.0.1:9/v3"))
    with pytest.raises(TransientError) as caught:
        KeystoneAuthenticator.from_settings(offline).authenticate({"x-auth-token": member})
    assert caught.value.code == "identity_unavailable"


def access_info(expires_in: float):
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in)
    body = {
        "token": {
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "methods": ["password"],
            "user": {"id": "u", "name": "n", "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "p", "name": "p", "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r", "name": "Member"}],
        }
    }
    return access.create(body=body, auth_token="t")


def test_token_cache_is_bounded_and_ends_at_the_token_expiry():
    cache = TokenCache(seconds=60, entries=2)
    for token in ("one", "two", "three"):
        cache.put(token, access_info(expires_in=600))
    assert cache.get("one") is None  # the least recently used left
    assert cache.get("two") is not None
    assert cache.get("three") is not None
    cache.put("expired", access_info(expires_in=-1))
    assert cache.get("expired") is None
    cache.put("soon", access_info(expires_in=1))
    assert cache.get("soon") is not None
    time.sleep(1.2)
    assert cache.get("soon") is None  # before the 60 s of the cache
    off = TokenCache(seconds=0)
    off.put("one", access_info(expires_in=600))
    assert off.get("one") is None

"""Keystone v3 token validation (``auth_strategy = keystone``), as keystonemiddleware does it.

keystonemiddleware's ``auth_token`` is a WSGI (webob) filter, so it cannot sit in front of an
ASGI app; this module keeps its behaviour and leaves the protocol work to keystoneauth1:

* the service user (``keystone_username`` …) authenticates with a keystoneauth1 password
  plugin and session, which fetch, cache and renew its own token;
* a caller's ``X-Auth-Token`` is validated with ``GET /v3/auth/tokens`` and ``X-Subject-Token``
  on the identity endpoint of the catalog, and the body is read by ``keystoneauth1.access``;
* an ``X-Service-Token`` is validated first: one that is valid and carries the ``service``
  role lets an expired user token through (``?allow_expired=1``), and its roles become
  :attr:`Identity.service_roles`; an invalid one, or one without that role, is refused (as
  keystonemiddleware with ``service_token_roles_required = true``);
* validated tokens are cached in this process, keyed by a SHA-256 of the token, for
  ``keystone_cache_seconds`` and never past their own ``expires_at``: a token revoked in
  Keystone is still accepted until its entry leaves the cache, exactly as with
  keystonemiddleware's ``token_cache_time``;
* Keystone answering 404 (unknown, expired or revoked token) is a 401 with
  ``WWW-Authenticate: Keystone uri="…"``; Keystone unreachable, failing (5xx) or refusing the
  service user is a 503 ``identity_unavailable`` — never an authenticated request.

Tokens of application credentials with access rules are refused: Keystone validates them only
for a validator that sends ``OpenStack-Identity-Access-Rules``, which this one does not.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from keystoneauth1 import access, adapter, session
from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1.identity import generic

from imageport.access.identity import Identity
from imageport.config import Settings
from imageport.errors import ConfigurationError, TransientError, Unauthenticated

log = structlog.get_logger(__name__)

#: The role a service token needs before it may pass an expired user token
#: (keystonemiddleware's ``service_token_roles`` default).
SERVICE_ROLE = "service"
#: Validated tokens kept at most; the least recently used leave first.
CACHE_ENTRIES = 10_000
#: Seconds one call to Keystone may take (connect and read each).
KEYSTONE_TIMEOUT = 10.0
#: Error code of a 503 when Keystone cannot answer.
UNAVAILABLE_CODE = "identity_unavailable"


@dataclass(frozen=True)
class _Entry:
    auth_ref: access.AccessInfo
    deadline: float  # time.monotonic() after which the entry is stale


class TokenCache:
    """Validated tokens by SHA-256, for a while and never past their expiry; thread safe.

    The raw token is never a key: a memory dump or a debugger shows only digests.
    """

    def __init__(self, seconds: float, entries: int = CACHE_ENTRIES) -> None:
        self._seconds = seconds
        self._entries = entries
        self._data: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> access.AccessInfo | None:
        """The cached validation of ``token``, if still fresh and not expired."""
        key = self._key(token)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry.deadline <= time.monotonic() or entry.auth_ref.will_expire_soon(0):
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry.auth_ref

    def put(self, token: str, auth_ref: access.AccessInfo) -> None:
        """Remember a validation (not when caching is off or the token already expired)."""
        if self._seconds <= 0 or auth_ref.will_expire_soon(0):
            return
        key = self._key(token)
        with self._lock:
            self._data[key] = _Entry(auth_ref, time.monotonic() + self._seconds)
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)


class KeystoneAuthenticator:
    """Validates ``X-Auth-Token`` (and ``X-Service-Token``) against Keystone v3."""

    blocking = True

    def __init__(
        self, identity: adapter.Adapter, *, www_authenticate_uri: str, cache_seconds: float
    ) -> None:
        """Validate tokens through ``identity``, an adapter on Keystone's v3 endpoint."""
        self._identity = identity
        self._uri = www_authenticate_uri
        self._cache = TokenCache(cache_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeystoneAuthenticator:
        """Build the authenticator from the ``keystone_*`` settings.

        Raises:
            ConfigurationError: ``keystone_auth_url``, ``keystone_username`` or
                ``keystone_password`` is missing.
        """
        url, user, password = (
            settings.keystone_auth_url,
            settings.keystone_username,
            settings.keystone_password,
        )
        if not (url and user and password):
            raise ConfigurationError(
                "auth_strategy keystone needs keystone_auth_url, keystone_username and "
                "keystone_password (the service user that validates tokens)"
            )
        # The generic plugin accepts an auth_url with or without /v3 (it discovers the
        # version), as keystonemiddleware's configurations usually give it.
        auth = generic.Password(
            auth_url=url,
            username=user,
            password=password,
            user_domain_name=settings.keystone_user_domain_name,
            project_name=settings.keystone_project_name,
            project_domain_name=settings.keystone_project_domain_name,
        )
        sess = session.Session(auth=auth, timeout=KEYSTONE_TIMEOUT)
        identity = adapter.Adapter(
            sess,
            service_type="identity",
            interface="public",
            region_name=settings.keystone_region_name,
            version="3.0",
        )
        return cls(
            identity,
            www_authenticate_uri=url,
            cache_seconds=settings.keystone_cache_seconds,
        )

    def challenge(self) -> str | None:
        """``Keystone uri="…"``: where a client gets a token (keystonemiddleware's header)."""
        return f'Keystone uri="{self._uri}"'

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The identity of the validated token.

        Raises:
            Unauthenticated: no token, or Keystone refuses it (unknown, expired, revoked); or an
                ``X-Service-Token`` that is invalid or lacks the ``service`` role.
            TransientError: Keystone could not answer (``identity_unavailable``, HTTP 503).
        """
        # Stripped as keystonemiddleware does: clients have sent tokens with a trailing newline.
        user_token = headers.get("x-auth-token", "").strip()
        service_token = headers.get("x-service-token", "").strip()
        if not user_token:
            raise Unauthenticated(
                f"this request needs an X-Auth-Token header: get a token from Keystone at "
                f"{self._uri} and send it"
            )
        service_roles: frozenset[str] = frozenset()
        if service_token:
            service_ref = self._validated(
                service_token, allow_expired=False, what="X-Service-Token"
            )
            service_roles = frozenset(r.lower() for r in service_ref.role_names or ())
            if SERVICE_ROLE not in service_roles:
                raise Unauthenticated(
                    f"the X-Service-Token does not carry the {SERVICE_ROLE!r} role; send a "
                    "service user's token there, or no X-Service-Token at all"
                )
        # A service token with the service role may pass a user token that expired while a
        # long operation ran between services (keystonemiddleware's allow_expired).
        user_ref = self._validated(
            user_token, allow_expired=bool(service_roles), what="X-Auth-Token"
        )
        return Identity(
            project_id=user_ref.project_id,
            user_id=user_ref.user_id,
            roles=frozenset(r.lower() for r in user_ref.role_names or ()),
            domain_id=user_ref.user_domain_id,
            project_domain_id=user_ref.project_domain_id,
            system_scope="all" if user_ref.system_scoped else None,
            token=user_token,
            service_roles=service_roles,
            strategy="keystone",
        )

    def _validated(self, token: str, *, allow_expired: bool, what: str) -> access.AccessInfo:
        """The token's validation, from the cache or from Keystone.

        Raises:
            Unauthenticated: Keystone does not know the token, or it expired.
            TransientError: Keystone could not answer.
        """
        auth_ref = self._cache.get(token)
        if auth_ref is None:
            auth_ref = self._fetch(token, allow_expired=allow_expired, what=what)
            self._cache.put(token, auth_ref)
        # A cached entry never outlives expires_at, but Keystone may answer for an expired
        # token when allow_expired was asked: only a service token permits using it.
        if not allow_expired and auth_ref.will_expire_soon(0):
            raise Unauthenticated(f"the {what} has expired: get a new token from {self._uri}")
        return auth_ref

    def _fetch(self, token: str, *, allow_expired: bool, what: str) -> access.AccessInfo:
        """Ask Keystone about ``token`` (``GET /v3/auth/tokens``).

        Raises:
            Unauthenticated: Keystone answered 404 (unknown, expired or revoked token).
            TransientError: anything else that is not a 200.
        """
        try:
            response = self._identity.get(
                "/auth/tokens",
                headers={"X-Subject-Token": token},
                params={"allow_expired": 1} if allow_expired else None,
            )
            body = response.json()
        except ksa_exceptions.NotFound as exc:
            raise Unauthenticated(
                f"Keystone does not accept the {what} (unknown, expired or revoked): get a new "
                f"token from {self._uri}"
            ) from exc
        except (ksa_exceptions.ClientException, ValueError) as exc:
            # Unreachable, timed out, 5xx, or a 401/403 for the service user's own token
            # (wrong keystone_password, missing role): the caller is not at fault, and an
            # unverifiable token must never pass. keystonemiddleware answers 503 here too.
            log.warning("keystone token validation failed", error=repr(exc))
            raise TransientError(
                f"the identity service (Keystone) could not validate the token "
                f"({type(exc).__name__}); try again later, and if it persists the operator "
                "must check that Keystone is reachable and the keystone_* service user works",
                code=UNAVAILABLE_CODE,
            ) from exc
        try:
            return access.create(body=body, auth_token=token)
        except (KeyError, TypeError, ValueError) as exc:
            raise Unauthenticated(
                f"Keystone's answer for the {what} holds no usable token; get a new token"
            ) from exc

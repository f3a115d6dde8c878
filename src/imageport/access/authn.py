"""Authentication strategies: how a request's headers become an :class:`Identity`.

``auth_strategy`` picks one:

* ``noauth`` — every caller is an administrator (the embedded single-machine mode; ``imageport
  api`` refuses to listen on anything but a loopback address with it).
* ``trusted-proxy`` — an authenticating proxy in front (or Glance's context filter) sends the
  identity headers and ``X-Identity-Status: Confirmed``; anything else is 401.
* ``keystone`` — every request carries an ``X-Auth-Token`` that Keystone v3 validates
  (:mod:`imageport.access.keystone`).

Identity headers a client sent are never read by anything but the trusted-proxy strategy, and
the API drops them from the request before its routes run.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Protocol

from imageport.access.identity import Identity
from imageport.config import Settings
from imageport.errors import ConfigurationError, Unauthenticated


class Authenticator(Protocol):
    """Establishes who sent a request, from its headers (lower-case names)."""

    #: Whether :meth:`authenticate` may block on the network (run it in a thread then).
    blocking: bool

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity.

        Raises:
            Unauthenticated: no valid identity.
        """
        ...

    def challenge(self) -> str | None:
        """The ``WWW-Authenticate`` value of a 401, if the strategy has one."""
        ...


class NoAuth:
    """Every caller is an administrator."""

    blocking = False

    def authenticate(self, headers: Mapping[str, str]) -> Identity:  # noqa: ARG002
        """The administrator, whatever the headers say."""
        return Identity.administrator()

    def challenge(self) -> str | None:
        """No challenge: nothing is ever refused."""
        return None


class TrustedProxy:
    """Identity headers, believed only with ``X-Identity-Status: Confirmed``."""

    blocking = False

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The identity the proxy confirmed.

        Raises:
            Unauthenticated: ``X-Identity-Status`` is not ``Confirmed``.
        """
        if headers.get("x-identity-status", "").strip().lower() != "confirmed":
            raise Unauthenticated(
                "this API takes identity only from an authenticating proxy: the request "
                "lacks X-Identity-Status: Confirmed"
            )
        project = headers.get("x-project-id") or headers.get("x-tenant-id") or None
        roles = frozenset(
            r.strip().lower() for r in headers.get("x-roles", "").split(",") if r.strip()
        )
        service_roles = frozenset(
            r.strip().lower() for r in headers.get("x-service-roles", "").split(",") if r.strip()
        )
        return Identity(
            project_id=project,
            user_id=headers.get("x-user-id") or None,
            roles=roles,
            domain_id=headers.get("x-user-domain-id") or None,
            project_domain_id=headers.get("x-project-domain-id") or None,
            system_scope=headers.get("x-system-scope") or None,
            token=headers.get("x-auth-token") or None,
            service_roles=service_roles,
            strategy="trusted-proxy",
        )

    def challenge(self) -> str | None:
        """No challenge: the proxy in front authenticates."""
        return None


class TokenGate:
    """``api_token``: an extra shared key every request must carry, before any strategy."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise Unauthenticated unless ``X-Auth-Token`` is the configured key.

        Only with ``noauth`` and ``trusted-proxy``: with ``keystone`` the header carries the
        user's token, and the settings refuse ``api_token`` there.
        """
        given = headers.get("x-auth-token", "").encode()
        # Constant-time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(given, self._token):
            raise Unauthenticated("this API needs a valid X-Auth-Token")


def build_authenticator(settings: Settings) -> Authenticator:
    """The strategy ``auth_strategy`` names.

    Raises:
        ConfigurationError: ``keystone`` without its ``keystone_*`` settings.
    """
    if settings.auth_strategy == "trusted-proxy":
        return TrustedProxy()
    if settings.auth_strategy == "keystone":
        # Imported here: keystoneauth1 is only loaded where tokens are validated.
        from imageport.access.keystone import KeystoneAuthenticator  # noqa: PLC0415

        return KeystoneAuthenticator.from_settings(settings)
    if settings.auth_strategy == "noauth":
        return NoAuth()
    raise ConfigurationError(f"unknown auth_strategy {settings.auth_strategy!r}")

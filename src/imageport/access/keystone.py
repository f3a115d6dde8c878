"""Keystone v3 token validation (``auth_strategy = keystone``): being written; see issue 13."""

from __future__ import annotations

from collections.abc import Mapping

from imageport.access.identity import Identity
from imageport.config import Settings
from imageport.errors import ConfigurationError


class KeystoneAuthenticator:
    """Validates ``X-Auth-Token`` against Keystone v3."""

    blocking = True

    @classmethod
    def from_settings(cls, settings: Settings) -> KeystoneAuthenticator:
        """Build the authenticator from the ``keystone_*`` settings."""
        raise ConfigurationError(f"keystone is not available yet ({settings.keystone_auth_url})")

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The identity of the validated token."""
        raise NotImplementedError

    def challenge(self) -> str | None:
        """``Keystone uri=…``."""
        return None

"""Glance's unified limits read from Keystone (``use_keystone_limits = true``), by oslo.limit.

Keystone holds a registered (default) limit per resource name for imageport's service and,
where an operator set one, a project limit that overrides it; oslo.limit's flat enforcer adds
a project's current usage (from imageport's database, through the caller's
:data:`~imageport.access.limits.UsageReader`) to the request's deltas and compares. A resource
with no registered limit counts as a limit of 0, as in Glance: register all four names.

The service user (``keystone_username`` …) reads the limits with a **system-scoped** token:
Keystone filters ``GET /v3/limits`` to the token's own project for a project-scoped one, so it
needs a ``reader`` role on the system, as Glance's install guide gives its own user.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1 import loading
from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_limit import exception as limit_exceptions
from oslo_limit import limit

from imageport.access.limits import UsageReader
from imageport.config import Settings
from imageport.errors import ConfigurationError, OverQuota, TransientError

#: oslo.config group oslo.limit reads its options from.
GROUP = "oslo_limit"
#: Seconds one call to Keystone may take.
KEYSTONE_TIMEOUT = 10.0
#: Error code of a 503 when Keystone cannot answer (shared with token validation).
UNAVAILABLE_CODE = "identity_unavailable"

_configure_lock = threading.Lock()


def configure_oslo_limit(settings: Settings) -> None:
    """Set oslo.limit's ``[oslo_limit]`` options from imageport's settings.

    oslo.limit reads its options only from oslo.config's process-wide ``cfg.CONF`` and builds
    its Keystone connection from them once per process, with no way to pass them in; so the
    global is touched here, and only here, with overrides (no file or command line is parsed).
    The first :class:`limit.Enforcer` then connects with these values for the process's life.

    Raises:
        ConfigurationError: the ``keystone_*`` settings needed to read limits are missing.
    """
    if not (
        settings.keystone_auth_url and settings.keystone_username and settings.keystone_password
    ):
        raise ConfigurationError(
            "use_keystone_limits needs keystone_auth_url, keystone_username and "
            "keystone_password (a service user with a system-scope reader role)"
        )
    values: dict[str, object] = {
        "auth_type": "password",
        "auth_url": settings.keystone_auth_url,
        "username": settings.keystone_username,
        "password": settings.keystone_password,
        "user_domain_name": settings.keystone_user_domain_name,
        # System scope: a project-scoped token sees only its own project's limits.
        "system_scope": "all",
        "timeout": KEYSTONE_TIMEOUT,
        "endpoint_interface": "public",
    }
    if settings.keystone_endpoint_id:
        values["endpoint_id"] = settings.keystone_endpoint_id
    else:
        # Without an endpoint id oslo.limit finds imageport's endpoint by service type.
        values["endpoint_service_type"] = "image"
    if settings.keystone_region_name:
        values["endpoint_region_name"] = settings.keystone_region_name
        values["region_name"] = settings.keystone_region_name
    with _configure_lock:
        # oslo.limit registers the auth plugin's options only for an auth_type it saw at import
        # time (none): register the password plugin's now. Registering equal options twice is
        # a no-op in oslo.config.
        cfg.CONF.register_opts(loading.get_auth_plugin_conf_options("password"), group=GROUP)
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group=GROUP)


class KeystoneLimitEnforcer:
    """A :class:`~imageport.access.limits.LimitEnforcer` on Keystone's unified limits."""

    def __init__(self, settings: Settings) -> None:
        """Configure oslo.limit from ``settings`` (see :func:`configure_oslo_limit`)."""
        configure_oslo_limit(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeystoneLimitEnforcer:
        """The enforcer for ``settings`` (same as the constructor)."""
        return cls(settings)

    def enforce(self, project_id: str, deltas: Mapping[str, int], usage: UsageReader) -> None:
        """Raise OverQuota when the project's usage plus ``deltas`` passes a Keystone limit.

        A new oslo.limit enforcer per call, as Glance does: the usage callback belongs to this
        call, and a limit changed in Keystone applies to the next request.

        Raises:
            OverQuota: with oslo.limit's message (which names resource, limit, usage, delta).
            TransientError: Keystone could not be asked (``identity_unavailable``, HTTP 503).
            ConfigurationError: Keystone does not know ``keystone_endpoint_id``.
        """

        def usage_callback(project: str | None, names: Collection[str]) -> dict[str, int]:
            # oslo.limit passes None only for non-project limits, which imageport never asks.
            return dict(usage(project or project_id, list(names)))

        try:
            limit.Enforcer(usage_callback).enforce(project_id, dict(deltas))
        except limit_exceptions.ProjectOverLimit as exc:
            raise OverQuota(str(exc)) from exc
        except (
            limit_exceptions.SessionInitError,
            ksa_exceptions.ClientException,
            sdk_exceptions.SDKException,
        ) as exc:
            raise TransientError(
                f"the unified limits could not be read from Keystone ({type(exc).__name__}); "
                "try again later, and if it persists the operator must check that Keystone is "
                "reachable and that the keystone_* service user holds a system-scope reader "
                "role",
                code=UNAVAILABLE_CODE,
            ) from exc
        except ValueError as exc:
            # oslo.limit's ValueErrors are configuration problems: an endpoint id Keystone does
            # not know, no (or several) image endpoints, an unsupported enforcement model.
            raise ConfigurationError(
                f"the unified limits cannot be enforced: {exc}; the operator must check "
                "keystone_endpoint_id (imageport's endpoint in Keystone's catalog) and that "
                "Keystone's enforcement model is flat"
            ) from exc

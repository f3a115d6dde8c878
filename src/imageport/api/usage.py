"""``GET /v2/info/usage``: a project's limits and usage, as Glance 33 reports them.

Glance answers ``{"usage": {NAME: {"limit": L, "usage": U}, …}}`` for the four unified limits
of the caller's project (oslo.limit's ``calculate_usage``), where a limit of -1 is unlimited;
usage is counted as the quotas count it (:mod:`imageport.access.usage`). The limits come from
wherever the quotas take them: Keystone (``use_keystone_limits``), as in Glance, or the
settings. Glance answers ``{}`` unless ``use_keystone_limits`` is set; so does imageport when
none of the four ``image_*`` settings is set either. When one is, imageport reports all four
(an unset one as -1), deliberately: Glance has no settings limits, and a project should see
the limits it is held to. A caller without a project has nobody's usage to report: ``{}``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy.orm import Session

from imageport.access import usage
from imageport.access.limits import LIMIT_NAMES, UsageReader
from imageport.access.quotas import Quotas, SettingsLimitEnforcer
from imageport.errors import TransientError

#: The limit oslo.limit reports for an unlimited resource.
UNLIMITED = -1


def project_usage(quotas: Quotas, session: Session, project_id: str | None) -> dict[str, Any]:
    """Each unified limit of ``project_id`` with its usage: ``{name: {"limit", "usage"}}``."""
    if project_id is None:
        return {}
    read = usage.reader(session)
    enforcer = quotas.enforcer
    if isinstance(enforcer, SettingsLimitEnforcer):
        if all(value is None for value in enforcer.limits.values()):
            return {}  # no limits at all: Glance's answer without use_keystone_limits
        current = read(project_id, LIMIT_NAMES)
        return {
            name: {"limit": _limit(enforcer.limits.get(name)), "usage": current[name]}
            for name in LIMIT_NAMES
        }
    return _keystone_usage(project_id, read)


def _limit(value: int | None) -> int:
    return UNLIMITED if value is None else value


def _keystone_usage(project_id: str, read: UsageReader) -> dict[str, Any]:
    """oslo.limit's ``calculate_usage`` against Keystone's limits (``use_keystone_limits``).

    Raises:
        TransientError: Keystone could not be asked (503, as a quota check would answer).
    """
    # Imported here, as in imageport.access.quotas: oslo.limit is loaded only with Keystone
    # limits, whose enforcer has configured it already.
    from keystoneauth1 import exceptions as ksa_exceptions  # noqa: PLC0415
    from oslo_limit import exception as limit_exceptions  # noqa: PLC0415
    from oslo_limit import limit  # noqa: PLC0415

    from imageport.access.keystone_limits import UNAVAILABLE_CODE  # noqa: PLC0415

    def callback(project: str | None, names: Collection[str]) -> dict[str, int]:
        return dict(read(project or project_id, list(names)))

    try:
        found = limit.Enforcer(callback).calculate_usage(project_id, list(LIMIT_NAMES))
    except (limit_exceptions.SessionInitError, ksa_exceptions.ClientException) as exc:
        raise TransientError(
            f"the unified limits could not be read from Keystone ({type(exc).__name__}); "
            "try again later",
            code=UNAVAILABLE_CODE,
        ) from exc
    return {name: {"limit": found[name].limit, "usage": found[name].usage} for name in found}

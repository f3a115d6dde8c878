"""The caller of an API request, as authentication established it."""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN_ROLE = "admin"

#: Request headers that carry identity. Whatever a client sends under these names is dropped
#: before a request is authenticated: only the authenticator may say who is calling.
IDENTITY_HEADERS = frozenset(
    {
        "x-identity-status",
        "x-project-id",
        "x-project-name",
        "x-project-domain-id",
        "x-project-domain-name",
        "x-tenant-id",
        "x-tenant-name",
        "x-tenant",
        "x-user-id",
        "x-user-name",
        "x-user-domain-id",
        "x-user-domain-name",
        "x-user",
        "x-domain-id",
        "x-domain-name",
        "x-roles",
        "x-role",
        "x-system-scope",
        "x-is-admin-project",
        "x-service-catalog",
    }
)
#: Every ``X-Service-*`` header (a service token's identity) is dropped as well.
SERVICE_HEADER_PREFIX = "x-service-"


def is_identity_header(name: str) -> bool:
    """Whether a client-sent header claims an identity (and must be dropped)."""
    lowered = name.lower()
    return lowered in IDENTITY_HEADERS or lowered.startswith(SERVICE_HEADER_PREFIX)


@dataclass(frozen=True)
class Identity:
    """Who is calling: project, user, domain and roles, and how that was established.

    Attributes:
        project_id: the project the caller acts in (None: unscoped, system scope or noauth).
        user_id: the user, when known.
        roles: role names, lower case.
        domain_id: the user's domain, when known.
        project_domain_id: the project's domain, when known.
        system_scope: ``all`` for a system-scoped token.
        token: the caller's own token (keystone mode), forwarded where the caller's authority
            is needed (glance-download).
        service_roles: roles of a valid service token sent beside the user's token.
        strategy: the authentication strategy that established the identity.
    """

    project_id: str | None
    user_id: str | None
    roles: frozenset[str]
    domain_id: str | None = None
    project_domain_id: str | None = None
    system_scope: str | None = None
    token: str | None = field(default=None, repr=False)
    service_roles: frozenset[str] = frozenset()
    strategy: str = "noauth"

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds the ``admin`` role (Glance's ``context_is_admin``)."""
        return ADMIN_ROLE in self.roles

    @classmethod
    def administrator(cls) -> Identity:
        """The identity of every caller in ``noauth`` mode."""
        return cls(
            project_id=None,
            user_id=None,
            roles=frozenset({ADMIN_ROLE, "member", "reader"}),
            strategy="noauth",
        )

"""Authorization: Glance's policy rules, enforced with oslo.policy.

:class:`Policy` wraps an ``oslo_policy.policy.Enforcer`` holding the defaults of
:mod:`imageport.access.policy_defaults`. ``policy_file`` names a YAML or JSON file of
overrides, in Glance's format (an existing Glance ``policy.yaml`` works); oslo.policy reloads it
when it changes, as in Glance. The enforcer runs on a private ``oslo_config`` instance, never on
the global ``CONF``, so nothing else in the process (or a stray config file) changes it.

Credentials come from the caller's :class:`~imageport.access.identity.Identity`, named as
oslo.context names them, so a policy file written for Glance reads the same values.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from oslo_config import cfg
from oslo_policy import policy as oslo_policy

from imageport.access.identity import Identity
from imageport.access.policy_defaults import RULES, RULES_BY_NAME, RuleSpec
from imageport.config import Settings
from imageport.errors import ConfigurationError, Forbidden

#: Keystone's default implied roles (``keystone-manage bootstrap``): ``admin`` implies
#: ``member``, which implies ``reader``. Keystone puts implied roles in a token; a proxy's
#: ``X-Roles`` may list only the assigned one, so the credentials add them the same way.
IMPLIED_ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("member", "reader"),
    "member": ("reader",),
}

#: A target or a set of credentials as oslo.policy reads them.
Values = Mapping[str, object]


def effective_roles(roles: frozenset[str]) -> frozenset[str]:
    """``roles`` with the roles they imply (:data:`IMPLIED_ROLES`)."""
    found = set(roles)
    for role in roles:
        found.update(IMPLIED_ROLES.get(role, ()))
    return frozenset(found)


def credentials(who: Identity) -> dict[str, object]:
    """The oslo.policy credentials of a caller, keyed as oslo.context keys them.

    Values that are not known are left out rather than set to None: oslo.policy compares the
    text of a value, and ``project_id:%(project_id)s`` must not match an unowned image
    (owner None) for a caller without a project (project None) because both read "None".
    A missing key fails the check instead.
    """
    creds: dict[str, object] = {
        "roles": sorted(effective_roles(who.roles)),
        "is_admin": who.is_admin,
        "is_admin_project": True,  # keystonemiddleware's default without an admin project
        "service_roles": sorted(who.service_roles),
    }
    known = {
        "project_id": who.project_id,
        "user_id": who.user_id,
        # Identity.domain_id is the user's domain; oslo.context's ``domain_id`` is the domain
        # of a domain-scoped token, which would make oslo.policy treat the token as one.
        "user_domain_id": who.domain_id,
        "project_domain_id": who.project_domain_id,
        "system_scope": who.system_scope,
    }
    creds.update({key: value for key, value in known.items() if value is not None})
    return creds


def _rule_default(spec: RuleSpec) -> oslo_policy.RuleDefault:
    if not spec.operations:
        return oslo_policy.RuleDefault(
            spec.name,
            spec.check_str,
            description=spec.description,
            scope_types=list(spec.scope_types) or None,
        )
    return oslo_policy.DocumentedRuleDefault(
        spec.name,
        spec.check_str,
        spec.description,
        [{"method": method, "path": path} for method, path in spec.operations],
        scope_types=list(spec.scope_types) or None,
    )


class Policy:
    """Glance's rules, with the operator's overrides, checked against a caller.

    Thread-safe: routes run in a thread pool, and oslo.policy may reload the rules from a
    changed file in the middle of a check, so checks take a lock (a check costs microseconds).
    """

    def __init__(self, policy_file: Path | None = None) -> None:
        """Build the enforcer; with ``policy_file``, load and check it now.

        Raises:
            ConfigurationError: ``policy_file`` is missing, unreadable or not a policy file.
        """
        self._lock = threading.Lock()
        self.policy_file = _existing(policy_file) if policy_file is not None else None
        self._conf = cfg.ConfigOpts()
        # No command line, no config files or directories: only what is set here counts.
        self._conf([], project="imageport", default_config_files=[], default_config_dirs=[])
        self._enforcer = oslo_policy.Enforcer(
            self._conf,
            policy_file=str(self.policy_file) if self.policy_file else None,
        )
        # Glance reads policy.d directories too; imageport takes one file, named explicitly.
        self._conf.set_override("policy_dirs", [], group="oslo_policy")
        self._enforcer.register_defaults([_rule_default(spec) for spec in RULES])
        if self.policy_file is None:
            # The defaults, exactly, and no file lookups: oslo.policy would otherwise search
            # ~/, ~/.imageport/, /etc/ and /etc/imageport/ for a policy.yaml nobody named.
            defaults = {name: d.check for name, d in self._enforcer.registered_rules.items()}
            self._enforcer.set_rules(defaults, use_conf=False)
        self._load()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy of ``settings.policy_file`` (Glance's defaults when unset).

        Raises:
            ConfigurationError: the file is missing or not a policy file.
        """
        return cls(settings.policy_file)

    def _load(self) -> None:
        try:
            with self._lock:
                self._enforcer.load_rules()
                # A rule naming a rule nobody defined would fall back to ``default``, which
                # allows anyone: refuse such a file at start-up instead.
                self._enforcer.check_rules(raise_on_violation=True)
        except oslo_policy.InvalidDefinitionError as exc:
            raise ConfigurationError(
                f"policy_file {self.policy_file} has rules that refer to undefined rules or to "
                f"themselves ({exc}); define every rule:NAME it uses"
            ) from exc
        # YAML and JSON syntax errors are ValueErrors; a document that is not a mapping of
        # strings fails inside oslo.policy with AttributeError or TypeError.
        except (ValueError, OSError, AttributeError, TypeError) as exc:
            detail = " ".join(str(exc).split())
            raise ConfigurationError(
                f"policy_file {self.policy_file} is not a policy file ({detail}); write rules "
                'as `name: "check string"` lines of YAML, as in Glance\'s policy.yaml'
            ) from exc

    def overridden(self, rule: str) -> bool:
        """Whether the policy file sets ``rule`` (instead of Glance's default)."""
        return rule in self._enforcer.file_rules

    def allows(self, rule: str, target: Values, who: Identity) -> bool:
        """Whether ``rule`` allows ``who`` to act on ``target``.

        Raises:
            KeyError: ``rule`` is not one of Glance's rules (a bug: oslo.policy would apply
                the ``default`` rule, which allows anyone).
        """
        if rule not in RULES_BY_NAME:
            raise KeyError(f"no policy rule named {rule!r}")
        with self._lock:
            # do_raise=False: a rule whose scope does not fit the token is a plain refusal.
            return bool(self._enforcer.enforce(rule, dict(target), credentials(who)))

    def enforce(self, rule: str, target: Values, who: Identity) -> None:
        """Return if ``rule`` allows ``who`` to act on ``target``.

        Raises:
            Forbidden: it does not (403); the message names the rule and what is lacking.
        """
        if not self.allows(rule, target, who):
            raise Forbidden(self.refusal(rule))

    def refusal(self, rule: str) -> str:
        """The message of a refusal by ``rule``."""
        why = (
            "the operator's policy file overrides this rule"
            if self.overridden(rule)
            else RULES_BY_NAME[rule].refusal
        )
        return f"policy does not allow {rule}: {why}"


def _existing(path: Path) -> Path:
    """``path`` made absolute, if it is a readable file.

    Raises:
        ConfigurationError: it is not.
    """
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise ConfigurationError(
            f"policy_file {resolved} does not exist or is not a file: create it (rules that "
            "override Glance's defaults, e.g. a Glance policy.yaml) or unset "
            "IMAGEPORT_POLICY_FILE to use the defaults"
        )
    return resolved

"""An RBAC engine (Envoy's RoleBasedAccessControlEngineImpl), its stats and metadata keys.

- ``ALLOW``: allowed when a policy matches; ``DENY``: allowed when none does; ``LOG``:
  always allowed, and whether a policy matched becomes the access-log hint.
- A policy matches when one of its permissions and one of its principals match.
- Policies are tried in the order of their names (Envoy keeps them in a sorted map); the
  first that matches is the effective policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.rbac.matchers import Matcher, Or, compile_permission, compile_principal
from legatus.stats.store import StatSet, counter

ALLOW, DENY, LOG = 0, 1, 2
_RBAC_FIELDS = ("action", "policies")
_POLICY_FIELDS = ("permissions", "principals")


@dataclass(frozen=True, slots=True)
class Policy:
    permissions: Matcher
    principals: Matcher

    def matches(self, request) -> bool:
        return self.permissions.matches(request) and self.principals.matches(request)


@dataclass(frozen=True, slots=True)
class Engine:
    action: int
    policies: tuple[tuple[str, Policy], ...]

    def evaluate(self, request) -> tuple[bool, str]:
        """(allowed, the name of the policy that matched or "")."""
        matched = ""
        for name, policy in self.policies:
            if policy.matches(request):
                matched = name
                break
        action = self.action
        if action == ALLOW:
            return bool(matched), matched
        if action == DENY:
            return not matched, matched
        return True, matched

    def decide(self, request) -> tuple[bool, str, bool | None]:
        """(allowed, effective policy or "", access-log hint): a LOG engine hints whether a
        policy matched; the others give no hint (None). (The matcher engine's interface.)"""
        allowed, matched = self.evaluate(request)
        return allowed, matched, bool(matched) if self.action == LOG else None


def compile_engine(proto, path: str) -> Engine:
    """An ``envoy.config.rbac.v3.RBAC`` at ``path``."""
    check_supported(proto, _RBAC_FIELDS, path, "RBAC")
    policies = []
    for name in sorted(proto.policies):
        where = join_path(path, f"policies['{name}']")
        policy = proto.policies[name]
        check_supported(policy, _POLICY_FIELDS, where, "Policy")
        if not policy.permissions:
            raise ConfigError(join_path(where, "permissions"), "at least one permission")
        if not policy.principals:
            raise ConfigError(join_path(where, "principals"), "at least one principal")
        permissions = [
            compile_permission(p, f"{where}.permissions[{i}]")
            for i, p in enumerate(policy.permissions)
        ]
        principals = [
            compile_principal(p, f"{where}.principals[{i}]")
            for i, p in enumerate(policy.principals)
        ]
        policies.append((name, Policy(_any_of(permissions), _any_of(principals))))
    return Engine(proto.action, tuple(policies))


def _any_of(matchers: list[Matcher]) -> Matcher:
    return matchers[0] if len(matchers) == 1 else Or(tuple(matchers))


def stat_prefix_join(prefix: str, token: str) -> str:
    """Envoy's statPrefixJoin: ``a`` + ``b`` -> ``a.b``; ``a.`` + ``b`` -> ``a.b``."""
    if not prefix:
        return token
    if prefix.endswith("."):
        return prefix + token
    return f"{prefix}.{token}"


class EnforcedStats(StatSet):
    allowed = counter()
    denied = counter()


class ShadowStats(StatSet):
    shadow_allowed = counter()
    shadow_denied = counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class RbacStats:
    """``<prefix>rbac.<rules prefix>.{allowed,denied}`` and the shadow pair, as Envoy
    names them (``prefix`` is ``http.<hcm>.`` or the network filter's ``stat_prefix``)."""

    enforced: EnforcedStats
    shadow: ShadowStats

    @classmethod
    def declare(cls, store, prefix: str, rules_prefix: str, shadow_prefix: str) -> RbacStats:
        base = stat_prefix_join(prefix, "rbac.")
        enforced = stat_prefix_join(stat_prefix_join(base, rules_prefix), "")
        shadow = stat_prefix_join(stat_prefix_join(base, shadow_prefix), "")
        return cls(
            enforced=EnforcedStats(store.scope(enforced)),
            shadow=ShadowStats(store.scope(shadow)),
        )


def engine_result(allowed: bool) -> str:
    return "allowed" if allowed else "denied"


def response_detail(policy: str) -> str:
    """``%RESPONSE_CODE_DETAILS%`` of a denial: whitespace in the name becomes ``_``."""
    sanitized = "".join("_" if c.isspace() else c for c in policy) if policy else "none"
    return f"rbac_access_denied_matched_policy[{sanitized}]"

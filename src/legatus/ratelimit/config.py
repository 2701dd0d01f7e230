"""The rate limit service's configuration: envoyproxy/ratelimit's YAML, compiled.

One YAML document per domain::

    domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: path
        value: /login
        shadow_mode: true
        rate_limit: {unit: minute, requests_per_unit: 5, name: login}
        descriptors:                  # nested: the next entry of the descriptor
          - key: user
            rate_limit: {unit: hour, requests_per_unit: 100}

A request descriptor ``[(k1, v1), (k2, v2)]`` walks the tree one entry at a time: first the
node ``k_v`` (key and value), then a node whose ``value`` ends in ``*`` and prefixes ``v``,
then the node with the key and no value (any value). The node reached by the last entry
gives the limit; none, or a node without ``rate_limit``, means no limit. ``unlimited: true``
is a node that never limits. ``replaces: [{name: x}]`` on a matched limit turns off the
other matched limits of the same request named ``x``.

Units: second, minute, hour, day, week, month, year (case-insensitive, as the service
reads them). ``detailed_metric`` (a stats feature; the service here has no stats) is
refused when true, as is any key not listed here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import yaml
from envoy.service.ratelimit.v3 import rls_pb2

_Unit = rls_pb2.RateLimitResponse.RateLimit.Unit

# Unit -> its window in seconds (envoyproxy/ratelimit's UnitToDivider).
UNIT_SECONDS: dict[int, int] = {
    _Unit.Value("SECOND"): 1,
    _Unit.Value("MINUTE"): 60,
    _Unit.Value("HOUR"): 60 * 60,
    _Unit.Value("DAY"): 60 * 60 * 24,
    _Unit.Value("WEEK"): 60 * 60 * 24 * 7,
    _Unit.Value("MONTH"): 60 * 60 * 24 * 30,
    _Unit.Value("YEAR"): 60 * 60 * 24 * 365,
}
_DOMAIN_KEYS = frozenset({"domain", "descriptors"})
_DESCRIPTOR_KEYS = frozenset(
    {"key", "value", "rate_limit", "descriptors", "shadow_mode", "detailed_metric", "replaces"}
)
_RATE_LIMIT_KEYS = frozenset({"unit", "requests_per_unit", "name", "unlimited"})


class RateLimitConfigError(Exception):
    """A configuration file the service cannot load; the message names the file and key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """One configured limit, at the node that holds it."""

    full_key: str  # "domain.key_value.key2" as envoyproxy/ratelimit names it
    requests_per_unit: int
    unit: int  # RateLimitResponse.RateLimit.Unit
    name: str = ""
    unlimited: bool = False
    shadow_mode: bool = False
    replaces: tuple[str, ...] = ()

    @property
    def window(self) -> int:
        return UNIT_SECONDS[self.unit]


@dataclass(frozen=True, slots=True)
class Node:
    """A descriptor tree node: its limit (if any) and its children."""

    limit: Limit | None = None
    children: Mapping[str, Node] = field(default_factory=dict)  # "key_value" and "key"
    wildcards: tuple[tuple[str, str, Node], ...] = ()  # (key, value prefix, node)

    def child(self, key: str, value: str) -> Node | None:
        children = self.children
        found = children.get(f"{key}_{value}")
        if found is not None:
            return found
        for wkey, prefix, node in self.wildcards:
            if wkey == key and value.startswith(prefix):
                return node
        return children.get(key)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Every domain the service knows, by name."""

    domains: Mapping[str, Node]

    def get_limit(self, domain: str, entries: Iterable[tuple[str, str]]) -> Limit | None:
        node = self.domains.get(domain)
        if node is None:
            return None
        for key, value in entries:
            node = node.child(key, value)
            if node is None:
                return None
        return node.limit


def load_config(path: str) -> RateLimitConfig:
    """Load a YAML file, or every ``*.yaml``/``*.yml`` file of a directory (one domain each)."""
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.endswith((".yaml", ".yml"))
        )
        if not files:
            raise RateLimitConfigError(f"{path}: no .yaml files")
    elif os.path.exists(path):
        files = [path]
    else:
        raise RateLimitConfigError(f"{path}: no such file or directory")
    documents = []
    for name in files:
        try:
            with open(name, encoding="utf-8") as f:
                documents.extend((name, doc) for doc in yaml.safe_load_all(f) if doc is not None)
        except (OSError, yaml.YAMLError) as e:
            raise RateLimitConfigError(f"{name}: {e}") from None
    return compile_config(documents)


def compile_config(documents: Iterable[tuple[str, object]]) -> RateLimitConfig:
    """Compile ``(source name, parsed YAML document)`` pairs."""
    domains: dict[str, Node] = {}
    for source, doc in documents:
        if not isinstance(doc, dict):
            raise RateLimitConfigError(f"{source}: a config is a mapping with a domain")
        _check_keys(doc, _DOMAIN_KEYS, source)
        domain = doc.get("domain")
        if not isinstance(domain, str) or not domain:
            raise RateLimitConfigError(f"{source}: config file cannot have empty domain")
        if domain in domains:
            raise RateLimitConfigError(f"{source}: duplicate domain '{domain}' in config file")
        domains[domain] = _node(doc.get("descriptors") or [], domain, f"{source}: {domain}")
    return RateLimitConfig(domains)


def _check_keys(doc: dict, allowed: frozenset[str], where: str) -> None:
    for key in doc:
        if key not in allowed:
            raise RateLimitConfigError(f"{where}: key '{key}' is not supported")


def _node(descriptors, parent_key: str, where: str, limit: Limit | None = None) -> Node:
    if not isinstance(descriptors, list):
        raise RateLimitConfigError(f"{where}: descriptors must be a list")
    children: dict[str, Node] = {}
    wildcards = []
    for i, d in enumerate(descriptors):
        dwhere = f"{where}.descriptors[{i}]"
        if not isinstance(d, dict):
            raise RateLimitConfigError(f"{dwhere}: a descriptor is a mapping")
        _check_keys(d, _DESCRIPTOR_KEYS, dwhere)
        key = d.get("key")
        if not isinstance(key, str) or not key:
            raise RateLimitConfigError(f"{dwhere}: descriptor has empty key")
        value = d.get("value")
        value = "" if value is None else str(value)
        composite = f"{key}_{value}" if value else key
        if composite in children or any(w[0] == key and w[1] + "*" == value for w in wildcards):
            raise RateLimitConfigError(
                f"{dwhere}: duplicate descriptor composite key '{composite}'"
            )
        full_key = f"{parent_key}.{composite}"
        if d.get("detailed_metric"):
            raise RateLimitConfigError(f"{dwhere}.detailed_metric: not supported")
        node = _node(d.get("descriptors") or [], full_key, dwhere, _limit(d, full_key, dwhere))
        if value.endswith("*"):
            wildcards.append((key, value[:-1], node))
        else:
            children[composite] = node
    return Node(limit, children, tuple(wildcards))


def _limit(d: dict, full_key: str, where: str) -> Limit | None:
    shadow = d.get("shadow_mode", False)
    if not isinstance(shadow, bool):
        raise RateLimitConfigError(f"{where}.shadow_mode: must be true or false")
    replaces = []
    for i, r in enumerate(d.get("replaces") or []):
        name = r.get("name") if isinstance(r, dict) else None
        if not isinstance(name, str) or not name:
            raise RateLimitConfigError(f"{where}.replaces[{i}]: should have a name field")
        replaces.append(name)
    rl = d.get("rate_limit")
    if rl is None:
        if replaces:
            raise RateLimitConfigError(f"{where}.replaces: needs a rate_limit")
        return None
    rwhere = f"{where}.rate_limit"
    if not isinstance(rl, dict):
        raise RateLimitConfigError(f"{rwhere}: must be a mapping")
    _check_keys(rl, _RATE_LIMIT_KEYS, rwhere)
    name = rl.get("name") or ""
    if replaces and not name:
        raise RateLimitConfigError(f"{rwhere}.name: a limit that replaces others needs a name")
    if name in replaces:
        raise RateLimitConfigError(
            f"{where}.replaces: replaces should not contain name of same descriptor"
        )
    unlimited = bool(rl.get("unlimited", False))
    unit_text = rl.get("unit")
    if unlimited:
        if unit_text is not None:
            raise RateLimitConfigError(f"{rwhere}: should not have a unit when unlimited is set")
        return Limit(full_key=full_key, requests_per_unit=0, unit=0, name=name, unlimited=True,
                     shadow_mode=shadow, replaces=tuple(replaces))  # fmt: skip
    try:
        unit = _Unit.Value(str(unit_text).upper())
    except ValueError:
        unit = 0
    if unit not in UNIT_SECONDS:
        raise RateLimitConfigError(f"{rwhere}.unit: invalid rate limit unit '{unit_text}'")
    rpu = rl.get("requests_per_unit")
    if not isinstance(rpu, int) or isinstance(rpu, bool) or rpu < 0:
        raise RateLimitConfigError(f"{rwhere}.requests_per_unit: must be a non-negative integer")
    return Limit(full_key=full_key, requests_per_unit=rpu, unit=unit, name=name,
                 shadow_mode=shadow, replaces=tuple(replaces))  # fmt: skip

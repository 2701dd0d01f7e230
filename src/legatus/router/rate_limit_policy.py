"""Route and virtual-host ``rate_limits`` (``envoy.config.route.v3.RateLimit``), compiled.

A ``RateLimitPolicy`` is what a route or a virtual host carries: its ``RateLimit`` entries
grouped by ``stage`` (0 to 10). Per request a rate limit filter asks the policy for the
entries of its stage and has each entry build one descriptor: the entry's actions run in
order, each adding one ``(key, value)`` entry, as Envoy's ``RateLimitPolicyEntryImpl``:

==============================  ================================================  ========
action                          entry                                             when
==============================  ================================================  ========
``source_cluster``              ``("source_cluster", <local service cluster>)``
``destination_cluster``         ``("destination_cluster", <route's cluster>)``
``request_headers``             ``(descriptor_key, <first value>)``                absent:
                                                                                  fail, or
                                                                                  skip with
                                                                                  skip_if_absent
``remote_address``              ``("remote_address", <trusted client IP>)``        not an IP:
                                                                                  fail
``generic_key``                 ``(descriptor_key or "generic_key", value)``
``header_value_match``          ``(descriptor_key or "header_match", value)``      headers
                                                                                  match !=
                                                                                  expect_match:
                                                                                  fail
``masked_remote_address``       ``("masked_remote_address", "<net>/<len>")``        not an IP:
                                                                                  fail
``query_parameters``            ``(descriptor_key, <first value, decoded>)``       as headers
``query_parameter_value_match`` ``(descriptor_key or "query_match", value)``       as header
                                                                                  match
==============================  ================================================  ========

A failing action drops the whole descriptor (the other entries still produce theirs); a
descriptor whose actions all skipped is not sent. With ``disable_key`` the runtime key
``ratelimit.<disable_key>.http_filter_enabled`` (a percentage, 100 when unset) decides
whether the entry applies to a request.
``hits_addend.number`` is sent with the descriptor; ``apply_on_stream_done`` marks the
descriptor for a call when the stream ends instead of before it goes upstream. ``limit``
(an override read from dynamic metadata), ``hits_addend.format`` and the ``metadata``,
``dynamic_metadata`` and ``extension`` actions are refused by field path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from legatus.common.matchers import HeaderMatcher, ascii_lower, header_values
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.router.matchers import QueryParameterMatcher, parse_query

__all__ = [
    "EMPTY_POLICY",
    "Descriptor",
    "DescriptorRequest",
    "RateLimitEntry",
    "RateLimitPolicy",
    "compile_rate_limit",
    "compile_rate_limit_policy",
]

MAX_STAGE = 10
_RATE_LIMIT_FIELDS = ("stage", "disable_key", "actions", "hits_addend", "apply_on_stream_done")
_ACTIONS = (
    "source_cluster",
    "destination_cluster",
    "request_headers",
    "query_parameters",
    "remote_address",
    "generic_key",
    "header_value_match",
    "masked_remote_address",
    "query_parameter_value_match",
)
_SKIP = None  # an action that adds nothing (skip_if_absent)
_FAIL = False  # an action that drops the descriptor


@dataclass(slots=True)
class DescriptorRequest:
    """What actions read from one request; built once per request that has rate limits."""

    headers: Any
    route_cluster: str = ""
    local_cluster: str = ""
    remote_address: str | None = None  # "ip:port" (the trusted client address)
    _query: dict[str, str] | None = None
    _ip: Any = None

    @property
    def query(self) -> dict[str, str]:
        query = self._query
        if query is None:
            query = self._query = parse_query(self.headers.get(":path") or "")
        return query

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        ip = self._ip
        if ip is None:
            ip = self._ip = _parse_ip(self.remote_address) or False
        return ip or None


def _parse_ip(address: str | None):
    if not address:
        return None
    host = address
    if address.startswith("["):
        host = address[1 : address.find("]")]
    elif address.count(":") == 1:
        host = address.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor for the rate limit service: its entries, and its hits_addend (None:
    the service counts 1)."""

    entries: tuple[tuple[str, str], ...]
    hits_addend: int | None = None


Action = Callable[[DescriptorRequest], "tuple[str, str] | bool | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitEntry:
    stage: int
    disable_key: str
    actions: tuple[Action, ...]
    hits_addend: int | None
    apply_on_stream_done: bool
    runtime_key: str  # ratelimit.<disable_key>.http_filter_enabled ("" without disable_key)

    def enabled(self, runtime, random_value: int) -> bool:
        """Envoy's ``disable_key``: the runtime key ``ratelimit.<key>.http_filter_enabled``
        (a percentage, 100 when unset) can turn the entry off."""
        if not self.runtime_key or runtime is None:
            return True
        return runtime.feature_enabled(self.runtime_key, 100, 100, random_value)

    def descriptor(self, request: DescriptorRequest) -> Descriptor | None:
        entries = []
        for action in self.actions:
            entry = action(request)
            if entry is _FAIL:
                return None
            if entry is not _SKIP:
                entries.append(entry)
        if not entries:
            return None
        return Descriptor(tuple(entries), self.hits_addend)


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """The rate limits of a route or a virtual host, by stage."""

    by_stage: tuple[tuple[RateLimitEntry, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.by_stage)

    def entries(self, stage: int) -> tuple[RateLimitEntry, ...]:
        by_stage = self.by_stage
        return by_stage[stage] if stage < len(by_stage) else ()

    def populate(
        self,
        stage: int,
        request: DescriptorRequest,
        out: list[Descriptor],
        *,
        runtime=None,
        random_value: int = 0,
        on_stream_done: bool = False,
    ) -> None:
        """Append the descriptors of this stage's entries (those with ``apply_on_stream_done``
        equal to ``on_stream_done``) for ``request`` to ``out``."""
        for entry in self.entries(stage):
            if entry.apply_on_stream_done != on_stream_done:
                continue
            if entry.runtime_key and not entry.enabled(runtime, random_value):
                continue
            descriptor = entry.descriptor(request)
            if descriptor is not None:
                out.append(descriptor)


EMPTY_POLICY = RateLimitPolicy()


def compile_rate_limit_policy(protos, path: str) -> RateLimitPolicy:
    """Compile a repeated ``rate_limits`` field found at ``path``."""
    if not protos:
        return EMPTY_POLICY
    stages: list[list[RateLimitEntry]] = [[] for _ in range(MAX_STAGE + 1)]
    for i, proto in enumerate(protos):
        entry = compile_rate_limit(proto, f"{path}[{i}]")
        stages[entry.stage].append(entry)
    last = max(i for i, s in enumerate(stages) if s)
    return RateLimitPolicy(tuple(tuple(s) for s in stages[: last + 1]))


def compile_rate_limit(proto, path: str) -> RateLimitEntry:
    check_supported(proto, _RATE_LIMIT_FIELDS, path, "RateLimit")
    stage = proto.stage.value if proto.HasField("stage") else 0
    if stage > MAX_STAGE:
        raise ConfigError(
            join_path(path, "stage"), f"value must be less than or equal to {MAX_STAGE}"
        )
    if not proto.actions:
        raise ConfigError(join_path(path, "actions"), "value must contain at least 1 item(s)")
    hits_addend = None
    if proto.HasField("hits_addend"):
        hpath = join_path(path, "hits_addend")
        check_supported(proto.hits_addend, ("number",), hpath, "RateLimit.HitsAddend")
        number = proto.hits_addend.number
        hits_addend = number.value if proto.hits_addend.HasField("number") else None
        if hits_addend is not None and hits_addend > 1_000_000_000:
            raise ConfigError(join_path(hpath, "number"), "value must be <= 1000000000")
    actions = tuple(
        _compile_action(a, f"{join_path(path, 'actions')}[{i}]")
        for i, a in enumerate(proto.actions)
    )
    return RateLimitEntry(
        stage=stage,
        disable_key=proto.disable_key,
        actions=actions,
        hits_addend=hits_addend,
        apply_on_stream_done=proto.apply_on_stream_done,
        runtime_key=f"ratelimit.{proto.disable_key}.http_filter_enabled"
        if proto.disable_key
        else "",
    )


def _compile_action(proto, path: str) -> Action:
    which = proto.WhichOneof("action_specifier")
    if which is None:
        raise ConfigError(path, "value is required (one of the RateLimit.Action kinds)")
    if which not in _ACTIONS:
        raise ConfigError(
            join_path(path, which),
            f"rate limit action '{which}' is not supported by legatus yet",
        )
    return _COMPILERS[which](getattr(proto, which), join_path(path, which))


def _source_cluster(proto, path: str) -> Action:
    return lambda r: ("source_cluster", r.local_cluster)


def _destination_cluster(proto, path: str) -> Action:
    return lambda r: ("destination_cluster", r.route_cluster)


def _request_headers(proto, path: str) -> Action:
    check_supported(proto, ("header_name", "descriptor_key", "skip_if_absent"), path)
    if not proto.header_name:
        raise ConfigError(
            join_path(path, "header_name"), "value length must be at least 1 characters"
        )
    if not proto.descriptor_key:
        raise ConfigError(
            join_path(path, "descriptor_key"), "value length must be at least 1 characters"
        )
    name = ascii_lower(proto.header_name)
    if name == "host":
        name = ":authority"
    key = proto.descriptor_key
    missing = _SKIP if proto.skip_if_absent else _FAIL

    def action(r: DescriptorRequest):
        values = header_values(r.headers, name)
        return (key, values[0]) if values else missing

    return action


def _query_parameters(proto, path: str) -> Action:
    check_supported(proto, ("query_parameter_name", "descriptor_key", "skip_if_absent"), path)
    if not proto.query_parameter_name:
        raise ConfigError(
            join_path(path, "query_parameter_name"), "value length must be at least 1 characters"
        )
    if not proto.descriptor_key:
        raise ConfigError(
            join_path(path, "descriptor_key"), "value length must be at least 1 characters"
        )
    name = proto.query_parameter_name
    key = proto.descriptor_key
    missing = _SKIP if proto.skip_if_absent else _FAIL

    def action(r: DescriptorRequest):
        value = r.query.get(name)
        return (key, unquote(value)) if value is not None else missing

    return action


def _remote_address(proto, path: str) -> Action:
    def action(r: DescriptorRequest):
        ip = r.ip
        return ("remote_address", str(ip)) if ip is not None else _FAIL

    return action


def _generic_key(proto, path: str) -> Action:
    check_supported(proto, ("descriptor_value", "descriptor_key"), path)
    if not proto.descriptor_value:
        raise ConfigError(
            join_path(path, "descriptor_value"), "value length must be at least 1 characters"
        )
    entry = (proto.descriptor_key or "generic_key", proto.descriptor_value)
    return lambda r: entry


def _header_value_match(proto, path: str) -> Action:
    check_supported(proto, ("descriptor_key", "descriptor_value", "expect_match", "headers"), path)
    if not proto.descriptor_value:
        raise ConfigError(
            join_path(path, "descriptor_value"), "value length must be at least 1 characters"
        )
    if not proto.headers:
        raise ConfigError(join_path(path, "headers"), "value must contain at least 1 item(s)")
    matchers = tuple(
        HeaderMatcher(h, f"{join_path(path, 'headers')}[{i}]") for i, h in enumerate(proto.headers)
    )
    expect = proto.expect_match.value if proto.HasField("expect_match") else True
    entry = (proto.descriptor_key or "header_match", proto.descriptor_value)

    def action(r: DescriptorRequest):
        headers = r.headers
        matched = all(m.matches(headers) for m in matchers)
        return entry if matched == expect else _FAIL

    return action


def _query_parameter_value_match(proto, path: str) -> Action:
    check_supported(
        proto, ("descriptor_key", "descriptor_value", "expect_match", "query_parameters"), path
    )
    if not proto.descriptor_value:
        raise ConfigError(
            join_path(path, "descriptor_value"), "value length must be at least 1 characters"
        )
    if not proto.query_parameters:
        raise ConfigError(
            join_path(path, "query_parameters"), "value must contain at least 1 item(s)"
        )
    matchers = tuple(
        QueryParameterMatcher(q, f"{join_path(path, 'query_parameters')}[{i}]")
        for i, q in enumerate(proto.query_parameters)
    )
    expect = proto.expect_match.value if proto.HasField("expect_match") else True
    entry = (proto.descriptor_key or "query_match", proto.descriptor_value)

    def action(r: DescriptorRequest):
        query = r.query
        matched = all(m.matches(query) for m in matchers)
        return entry if matched == expect else _FAIL

    return action


def _masked_remote_address(proto, path: str) -> Action:
    check_supported(proto, ("v4_prefix_mask_len", "v6_prefix_mask_len"), path)
    v4 = proto.v4_prefix_mask_len.value if proto.HasField("v4_prefix_mask_len") else 32
    v6 = proto.v6_prefix_mask_len.value if proto.HasField("v6_prefix_mask_len") else 128
    if v4 > 32:
        raise ConfigError(join_path(path, "v4_prefix_mask_len"), "value must be <= 32")
    if v6 > 128:
        raise ConfigError(join_path(path, "v6_prefix_mask_len"), "value must be <= 128")

    def action(r: DescriptorRequest):
        ip = r.ip
        if ip is None:
            return _FAIL
        length = v4 if ip.version == 4 else v6
        network = ipaddress.ip_network(f"{ip}/{length}", strict=False)
        return ("masked_remote_address", str(network))

    return action


_COMPILERS: dict[str, Callable[[Any, str], Action]] = {
    "source_cluster": _source_cluster,
    "destination_cluster": _destination_cluster,
    "request_headers": _request_headers,
    "query_parameters": _query_parameters,
    "remote_address": _remote_address,
    "generic_key": _generic_key,
    "header_value_match": _header_value_match,
    "masked_remote_address": _masked_remote_address,
    "query_parameter_value_match": _query_parameter_value_match,
}

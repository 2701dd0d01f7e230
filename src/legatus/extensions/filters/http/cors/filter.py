"""The CORS filter (Envoy's ``envoy.filters.http.cors``).

The policies of a request are the ``CorsPolicy`` entries under this filter's name in its
route's ``typed_per_filter_config`` levels, most specific first (weighted cluster, route,
virtual host, route configuration); for each setting the first policy that has it wins, except
``filter_enabled`` / ``shadow_enabled``, read from the most specific policy alone. Without a
policy, or on a route that does not forward (redirect, direct response) or without a route,
the filter does nothing.

``decode_headers``, when the policy is enabled (``filter_enabled``, a runtime fractional
percent, 100 % when unset) or shadow-enabled (``shadow_enabled``, 0 % when unset), and the
request has a non-empty ``origin``:

- the origin is checked against ``allow_origin_string_match`` (a matcher that matches ``*``
  allows any origin): ``http.<stat_prefix>.cors.origin_valid`` or ``origin_invalid``;
- in shadow mode (shadow-enabled, not enabled) that is all;
- an ``OPTIONS`` with a non-empty ``access-control-request-method`` is a preflight: it is
  answered here, 200 with no body and details ``cors_response``, with
  ``access-control-allow-origin`` (an allowed origin), ``-allow-credentials``,
  ``-allow-methods`` (``*``: the requested method), ``-allow-headers`` (``*``: the requested
  headers), ``-max-age`` and ``-allow-private-network`` (when allowed and asked) from the
  policies; unless the origin is not allowed and ``forward_not_matching_preflights`` (true when
  unset) sends it upstream instead.

``encode_headers`` gives a response to an allowed origin ``access-control-allow-origin``,
``-allow-credentials`` and ``-expose-headers`` (the preflight answer passes here too).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.matchers import StringMatcher
from legatus.common.runtime_fraction import FractionalPercentFlag
from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.http.filter import FilterHeadersStatus, StreamFilter
from legatus.http.headers import HeaderMap
from legatus.router.action import RouteAction
from legatus.stats.store import StatSet, counter

_POLICY_FIELDS = (
    "allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers", "max_age",
    "allow_credentials", "filter_enabled", "shadow_enabled", "allow_private_network_access",
    "forward_not_matching_preflights",
)  # fmt: skip
_DETAILS = "cors_response"


class CorsStats(StatSet):
    """``http.<stat_prefix>.cors.*``."""

    origin_valid = counter()
    origin_invalid = counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsPolicy:
    """One compiled ``CorsPolicy``; None (or "") where the policy does not say."""

    allow_origins: tuple[StringMatcher, ...]
    allow_methods: str
    allow_headers: str
    expose_headers: str
    max_age: str
    allow_credentials: bool | None
    allow_private_network_access: bool | None
    forward_not_matching_preflights: bool | None
    filter_enabled: FractionalPercentFlag
    shadow_enabled: FractionalPercentFlag


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsConfig:
    stats: CorsStats
    name: str  # the HttpFilter name: the key of the policies


def _wrapped(proto, name: str) -> bool | None:
    return getattr(proto, name).value if proto.HasField(name) else None


def compile_policy(proto, context, path: str) -> CorsPolicy:
    check_supported(proto, _POLICY_FIELDS, path, "CorsPolicy")
    origins_path = join_path(path, "allow_origin_string_match")
    runtime, rng = context.runtime, context.random
    return CorsPolicy(
        allow_origins=tuple(
            StringMatcher(m, f"{origins_path}[{i}]")
            for i, m in enumerate(proto.allow_origin_string_match)
        ),
        allow_methods=proto.allow_methods,
        allow_headers=proto.allow_headers,
        expose_headers=proto.expose_headers,
        max_age=proto.max_age,
        allow_credentials=_wrapped(proto, "allow_credentials"),
        allow_private_network_access=_wrapped(proto, "allow_private_network_access"),
        forward_not_matching_preflights=_wrapped(proto, "forward_not_matching_preflights"),
        filter_enabled=FractionalPercentFlag(
            proto.filter_enabled if proto.HasField("filter_enabled") else None,
            runtime=runtime,
            rng=rng,
            unset=True,
        ),
        shadow_enabled=FractionalPercentFlag(
            proto.shadow_enabled if proto.HasField("shadow_enabled") else None,
            runtime=runtime,
            rng=rng,
            unset=False,
        ),
    )


def compile_config(proto, context, path: str) -> CorsConfig:
    check_supported(proto, (), path, "Cors")
    prefix = context.http_stat_prefix or ""
    return CorsConfig(
        stats=CorsStats(context.store.scope(f"http.{prefix}.cors.")),
        name=context.http_filter_name,
    )


def _first(policies: list[CorsPolicy], attribute: str):
    for policy in policies:
        value = getattr(policy, attribute)
        if value:
            return value
    return ""


def _first_flag(policies: list[CorsPolicy], attribute: str, default: bool) -> bool:
    for policy in policies:
        value = getattr(policy, attribute)
        if value is not None:
            return value
    return default


class CorsFilter(StreamFilter):
    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        self.policies: list[CorsPolicy] = []
        self.is_cors_request = False
        self.latched_origin = ""

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        route = self.decoder_callbacks.route
        if route is None or not isinstance(route.action, RouteAction):
            return FilterHeadersStatus.CONTINUE
        policies = route.per_filter_configs(self.config.name)
        if not policies:
            return FilterHeadersStatus.CONTINUE
        policies.reverse()  # most specific first
        self.policies = policies
        first = policies[0]
        if not first.filter_enabled.enabled() and not first.shadow_enabled.enabled():
            return FilterHeadersStatus.CONTINUE
        origin = headers.get("origin")
        if not origin:
            return FilterHeadersStatus.CONTINUE
        allowed = self._origin_allowed(origin)
        stats = self.config.stats
        if allowed:
            stats.origin_valid.inc()
            self.latched_origin = origin
        else:
            stats.origin_invalid.inc()
        if first.shadow_enabled.enabled() and not first.filter_enabled.enabled():
            return FilterHeadersStatus.CONTINUE
        self.is_cors_request = True
        if headers.get(":method") != "OPTIONS":
            return FilterHeadersStatus.CONTINUE
        requested_method = headers.get("access-control-request-method")
        if not requested_method:
            return FilterHeadersStatus.CONTINUE
        if not allowed and _first_flag(policies, "forward_not_matching_preflights", True):
            return FilterHeadersStatus.CONTINUE
        self._answer_preflight(headers, origin if allowed else None, requested_method)
        return FilterHeadersStatus.STOP_ITERATION

    def _origin_allowed(self, origin: str) -> bool:
        for policy in self.policies:
            if policy.allow_origins:
                for matcher in policy.allow_origins:
                    if matcher.matches("*") or matcher.matches(origin):
                        return True
                return False
        return False

    def _answer_preflight(self, headers, origin: str | None, requested_method: str) -> None:
        policies = self.policies
        response = HeaderMap([(":status", "200")])
        if origin is not None:
            response.set("access-control-allow-origin", origin)
        if _first_flag(policies, "allow_credentials", False):
            response.set("access-control-allow-credentials", "true")
        allow_methods = _first(policies, "allow_methods")
        if allow_methods:
            response.set(
                "access-control-allow-methods",
                requested_method if allow_methods == "*" else allow_methods,
            )
        allow_headers = _first(policies, "allow_headers")
        if allow_headers:
            if allow_headers == "*":
                allow_headers = headers.get("access-control-request-headers", "")
            response.set("access-control-allow-headers", allow_headers)
        max_age = _first(policies, "max_age")
        if max_age:
            response.set("access-control-max-age", max_age)
        if (
            _first_flag(policies, "allow_private_network_access", False)
            and headers.get("access-control-request-private-network") == "true"
        ):
            response.set("access-control-allow-private-network", "true")
        callbacks = self.decoder_callbacks
        callbacks.stream_info.response_code_details = _DETAILS
        callbacks.encode_headers(response, True)

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        if not self.is_cors_request or not self.latched_origin:
            return FilterHeadersStatus.CONTINUE
        policies = self.policies
        headers.set("access-control-allow-origin", self.latched_origin)
        if _first_flag(policies, "allow_credentials", False):
            headers.set("access-control-allow-credentials", "true")
        expose = _first(policies, "expose_headers")
        if expose:
            headers.set("access-control-expose-headers", expose)
        return FilterHeadersStatus.CONTINUE

"""The HTTP RBAC filter (Envoy's ``envoy.filters.http.rbac``).

In ``decode_headers``, with the engines of the route's ``RBACPerRoute`` (the most specific
entry under this filter's name; one without ``rbac`` turns the filter off for the route) or
else the filter's own:

1. the shadow engine (``shadow_matcher`` or else ``shadow_rules``), if any, decides without
   effect: it counts ``shadow_allowed`` / ``shadow_denied`` and writes
   ``<shadow prefix>shadow_engine_result``
   (and ``<shadow prefix>shadow_effective_policy_id`` when a policy matched) to the dynamic
   metadata namespace ``envoy.filters.http.rbac``;
2. the enforced engine (``matcher`` or else ``rules``), if any, decides: ``allowed`` and
   the request goes on, or ``denied`` and a 403 ``RBAC: access denied`` local reply with details
   ``rbac_access_denied_matched_policy[<policy or none>]``; its result goes to the metadata
   as ``<rules prefix>enforced_engine_result`` / ``..._effective_policy_id``. A ``LOG``
   engine allows and sets ``envoy.common``'s ``access_log_hint`` (a matcher with a LOG
   action: whether the matched action is LOG; legatus.rbac.matcher_engine).

Stats: ``http.<hcm prefix>.rbac.<rules_stat_prefix>.{allowed,denied}`` and
``http.<hcm prefix>.rbac.<shadow_rules_stat_prefix>.{shadow_allowed,shadow_denied}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.http.filter import FilterHeadersStatus, StreamDecoderFilter
from legatus.rbac.engine import (
    Engine,
    RbacStats,
    engine_result,
    response_detail,
)
from legatus.rbac.matcher_engine import MatcherEngine, compile_engine_of
from legatus.rbac.request import RbacRequest

NAMESPACE = "envoy.filters.http.rbac"
COMMON_NAMESPACE = "envoy.common"
_SUPPORTED = ("rules", "rules_stat_prefix", "shadow_rules", "shadow_rules_stat_prefix",
              "matcher", "shadow_matcher")  # fmt: skip
_BODY = b"RBAC: access denied"


@dataclass(frozen=True, slots=True)
class Engines:
    engine: Engine | MatcherEngine | None
    shadow: Engine | MatcherEngine | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RbacConfig:
    engines: Engines
    stats: RbacStats
    enforced_result_key: str
    enforced_policy_key: str
    shadow_result_key: str
    shadow_policy_key: str


def _engines(proto, path: str, store) -> Engines:
    return Engines(
        compile_engine_of(proto, "rules", "matcher", path, http=True, store=store),
        compile_engine_of(proto, "shadow_rules", "shadow_matcher", path, http=True, store=store),
    )


def compile_config(proto, context, path: str) -> RbacConfig:
    check_supported(proto, _SUPPORTED, path, "RBAC")
    rules_prefix = proto.rules_stat_prefix
    shadow_prefix = proto.shadow_rules_stat_prefix
    return RbacConfig(
        engines=_engines(proto, path, context.store),
        stats=RbacStats.declare(
            context.store, f"http.{context.http_stat_prefix or ''}.", rules_prefix, shadow_prefix
        ),
        enforced_result_key=f"{rules_prefix}enforced_engine_result",
        enforced_policy_key=f"{rules_prefix}enforced_effective_policy_id",
        shadow_result_key=f"{shadow_prefix}shadow_engine_result",
        shadow_policy_key=f"{shadow_prefix}shadow_effective_policy_id",
    )


def compile_per_route(proto, path: str, store) -> Engines:
    check_supported(proto, ("rbac",), path, "RBACPerRoute")
    if not proto.HasField("rbac"):
        return Engines(None, None)
    rbac = proto.rbac
    where = join_path(path, "rbac")
    check_supported(rbac, _SUPPORTED, where, "RBAC")
    return _engines(rbac, where, store)


def set_metadata(info, namespace: str, values: dict) -> None:
    metadata = info.dynamic_metadata
    if metadata is None:
        metadata = info.dynamic_metadata = {}
    metadata.setdefault(namespace, {}).update(values)


class RbacFilter(StreamDecoderFilter):
    def __init__(self, config: RbacConfig, name: str) -> None:
        self.config = config
        self.name = name

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        callbacks = self.decoder_callbacks
        config = self.config
        engines = config.engines
        route = callbacks.route
        if route is not None:
            engines = route.most_specific_per_filter_config(self.name) or engines
        shadow, engine = engines.shadow, engines.engine
        if shadow is None and engine is None:
            return FilterHeadersStatus.CONTINUE
        info = callbacks.stream_info
        connection = callbacks.stream.connection
        request = RbacRequest(
            headers=headers,
            path=headers.get(":path"),
            local=info.downstream_local_address,
            source=connection.stream_info.downstream_remote_address,
            direct_remote=info.downstream_direct_remote_address,
            remote=info.downstream_remote_address,
            sni=connection.stream_info.requested_server_name or "",
            ssl=connection.ssl,
        )
        stats = config.stats
        if shadow is not None:
            allowed, policy, _ = shadow.decide(request)
            (stats.shadow.shadow_allowed if allowed else stats.shadow.shadow_denied).inc()
            values = {config.shadow_result_key: engine_result(allowed)}
            if policy:
                values[config.shadow_policy_key] = policy
            set_metadata(info, NAMESPACE, values)
        if engine is None:
            return FilterHeadersStatus.CONTINUE
        allowed, policy, hint = engine.decide(request)
        if hint is not None:
            set_metadata(info, COMMON_NAMESPACE, {"access_log_hint": hint})
        values = {config.enforced_result_key: engine_result(allowed)}
        if policy:
            values[config.enforced_policy_key] = policy
        set_metadata(info, NAMESPACE, values)
        if allowed:
            stats.enforced.allowed.inc()
            return FilterHeadersStatus.CONTINUE
        stats.enforced.denied.inc()
        callbacks.send_local_reply(403, _BODY, details=response_detail(policy))
        return FilterHeadersStatus.STOP_ITERATION

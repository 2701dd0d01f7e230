"""``envoy.filters.network.rbac``: role-based access control on connections.

The policies see the connection: its addresses, its requested server name and TLS peer, an
empty header map and no ``:path`` (see legatus.rbac).
``enforcement_type`` ``ONE_TIME_ON_FIRST_BYTE`` (the default) decides once, when the first
bytes arrive; ``CONTINUOUS`` decides again on every read. A denied connection is closed at
once (no flush). The shadow engine decides once, on the first bytes, without effect.

Stats ``<stat_prefix>.rbac.{allowed,denied}`` and
``<stat_prefix>.rbac.<shadow_rules_stat_prefix>.{shadow_allowed,shadow_denied}``; results
go to the dynamic metadata namespace ``envoy.filters.network.rbac`` as for HTTP.
``matcher`` and ``shadow_matcher`` (the unified matcher API, legatus.rbac.matcher_engine)
take the place of ``rules`` and ``shadow_rules`` when set; ``delay_deny`` is refused by
field path.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.supported import check_supported
from legatus.network.filter import CloseType, FilterFactory, FilterStatus, ReadFilter
from legatus.rbac.engine import Engine, RbacStats, engine_result
from legatus.rbac.matcher_engine import MatcherEngine, compile_engine_of
from legatus.rbac.request import RbacRequest
from legatus.registry import Registry, network_filter

NAME = "envoy.filters.network.rbac"
CONFIG_TYPE = "envoy.extensions.filters.network.rbac.v3.RBAC"
NAMESPACE = "envoy.filters.network.rbac"
_SUPPORTED = ("rules", "shadow_rules", "shadow_rules_stat_prefix", "stat_prefix",
              "enforcement_type", "matcher", "shadow_matcher")  # fmt: skip
_CONTINUOUS = 1
_EMPTY_HEADERS: dict = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkRbacConfig:
    engine: Engine | MatcherEngine | None
    shadow: Engine | MatcherEngine | None
    continuous: bool
    stats: RbacStats
    shadow_result_key: str
    shadow_policy_key: str


class NetworkRbacFilter(ReadFilter):
    __slots__ = ("config", "decided", "read_callbacks", "shadow_done")

    def __init__(self, config: NetworkRbacConfig) -> None:
        self.config = config
        self.decided = False
        self.shadow_done = False

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        config = self.config
        if self.decided and not config.continuous:
            return FilterStatus.CONTINUE
        connection = self.read_callbacks.connection
        info = connection.stream_info
        request = RbacRequest(
            headers=_EMPTY_HEADERS,
            path=None,
            local=info.downstream_local_address,
            source=info.downstream_remote_address,
            direct_remote=info.downstream_direct_remote_address,
            remote=info.downstream_remote_address,
            sni=info.requested_server_name or "",
            ssl=connection.ssl,
        )
        stats = config.stats
        if config.shadow is not None and not self.shadow_done:
            self.shadow_done = True
            allowed, policy, _ = config.shadow.decide(request)
            (stats.shadow.shadow_allowed if allowed else stats.shadow.shadow_denied).inc()
            values = {config.shadow_result_key: engine_result(allowed)}
            if policy:
                values[config.shadow_policy_key] = policy
            _set_metadata(info, NAMESPACE, values)
        engine = config.engine
        self.decided = True
        if engine is None:
            return FilterStatus.CONTINUE
        allowed, policy, hint = engine.decide(request)
        if hint is not None:
            _set_metadata(info, "envoy.common", {"access_log_hint": hint})
        if allowed:
            stats.enforced.allowed.inc()
            return FilterStatus.CONTINUE
        stats.enforced.denied.inc()
        connection.close(CloseType.NO_FLUSH)
        return FilterStatus.STOP_ITERATION


def _set_metadata(info, namespace: str, values: dict) -> None:
    metadata = info.dynamic_metadata
    if metadata is None:
        metadata = info.dynamic_metadata = {}
    metadata.setdefault(namespace, {}).update(values)


def _factory(proto, context, path: str) -> FilterFactory:
    check_supported(proto, _SUPPORTED, path, "RBAC")
    shadow_prefix = proto.shadow_rules_stat_prefix
    store = context.store
    config = NetworkRbacConfig(
        engine=compile_engine_of(proto, "rules", "matcher", path, http=False, store=store),
        shadow=compile_engine_of(
            proto, "shadow_rules", "shadow_matcher", path, http=False, store=store
        ),
        continuous=proto.enforcement_type == _CONTINUOUS,
        stats=RbacStats.declare(context.store, proto.stat_prefix, "", shadow_prefix),
        shadow_result_key=f"{shadow_prefix}shadow_engine_result",
        shadow_policy_key=f"{shadow_prefix}shadow_effective_policy_id",
    )
    return FilterFactory(lambda: NetworkRbacFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))

"""``envoy.filters.network.http_connection_manager``: its config, compiled once per chain.

Everything a connection needs per request is decided here, at config time: the codec
settings, the header policy, the route table, the HTTP filter factories, the local reply
config, the timeouts and the stats (Envoy's ``HttpConnectionManagerConfig``). A field legatus
does not act on is refused by name; codec_type HTTP3 is refused (no QUIC listener yet).

Besides the plain path, decided here too: the access-log options and the recommended status
of ``proxy_status_config`` (``StreamOptions``, http/stream_options.py), the Proxy-Status
header and the original IP detection extensions (in the header policy,
http/proxy_status.py and http/original_ip_detection.py). ``per_stream_setup`` and
``before_mutation`` tell a stream, in one test each, whether any of it concerns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from legatus.access_log.access_log import create_access_logs
from legatus.access_log.log_type import DOWNSTREAM_END
from legatus.config.errors import ConfigError, join_path
from legatus.config.factory_context import FactoryContext
from legatus.config.supported import check_supported
from legatus.http.codes import DownstreamCodeStats
from legatus.http.conn_manager_stats import (
    ConnManagerStatSets,
    Http1CodecStats,
    declare_conn_manager_stats,
)
from legatus.http.conn_manager_utility import (
    HEADER_HCM_FIELDS,
    HeaderPolicy,
    compile_request_policy,
)
from legatus.http.filter_chain import NO_HTTP_FILTERS, HttpFilterChain
from legatus.http.http1.settings import Http1Settings
from legatus.http.http2.settings import Http2Settings
from legatus.http.http2.stats import LazyCodecStats
from legatus.http.local_reply import LocalReplyConfig, compile_local_reply_config
from legatus.http.original_ip_detection import check_compatible
from legatus.http.path_utility import PathNormalization, compile_path_normalization
from legatus.http.proxy_status import compile_proxy_status_config
from legatus.http.stream_options import (
    AccessLogOptions,
    StreamOptions,
    compile_access_log_options,
    start_logging,
)
from legatus.http.upgrades import NO_UPGRADE_CONFIGS, UpgradeConfig, UpgradeConfigs
from legatus.registry import Category
from legatus.router.config import compile_route_config
from legatus.router.rds import (
    RouteConfigProviderManager,
    StaticRouteConfigProvider,
    compile_rds_table,
)
from legatus.router.route_stats import RouteStatOwners
from legatus.upstream.cluster import duration

HttpConnectionManager = hcm_pb2.HttpConnectionManager

ROUTER_NAME = "envoy.filters.http.router"
DEFAULT_STREAM_IDLE_TIMEOUT = 300.0  # Envoy: 5 minutes unless set; 0 disables
DEFAULT_IDLE_TIMEOUT = 3600.0  # common_http_protocol_options.idle_timeout: 1 hour
DEFAULT_DELAYED_CLOSE_TIMEOUT = 1.0
DEFAULT_DRAIN_TIMEOUT = 5.0

_SUPPORTED = frozenset({
    "codec_type", "stat_prefix", "route_config", "rds", "http_filters",
    "common_http_protocol_options", "http_protocol_options", "http2_protocol_options",
    "max_request_headers_kb",
    "stream_idle_timeout", "request_timeout",
    "request_headers_timeout", "drain_timeout", "delayed_close_timeout", "access_log",
    "local_reply_config", "proxy_100_continue", "strip_matching_host_port",
    "strip_any_host_port", "strip_trailing_host_dot", "upgrade_configs", *HEADER_HCM_FIELDS,
    "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
    "access_log_options", "access_log_flush_interval", "flush_access_log_on_new_request",
    "proxy_status_config", "original_ip_detection_extensions",
    "stream_error_on_invalid_http_message",
})  # fmt: skip
_SUPPORTED_COMMON = (
    "idle_timeout", "max_connection_duration", "max_headers_count", "max_stream_duration",
    "headers_with_underscores_action", "max_requests_per_connection",
)  # fmt: skip
_SUPPORTED_HTTP_FILTER = ("name", "typed_config", "disabled")
_AUTO, _HTTP1, _HTTP2 = 0, 1, 2


@dataclass(frozen=True, slots=True)
class HttpFilterFactory:
    """One configured HTTP filter: ``create()`` makes the instance for a new stream.

    ``disabled`` filters are skipped unless a route's per-filter config enables them
    (Envoy's ``disabled`` field); legatus does not enable them per route yet, so they
    are never created.
    """

    name: str
    create: Callable[[], Any]
    terminal: bool
    disabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HcmConfig:
    stat_prefix: str
    codec_settings: Http1Settings
    codec_type: int  # HttpConnectionManager.CodecType: AUTO, HTTP1 or HTTP2
    http2_settings: Http2Settings
    # The process's http2.* codec stats, declared with the first HTTP/2 connection (as Envoy).
    http2_stats: LazyCodecStats
    header_policy: HeaderPolicy
    # Where streams take their routes: a StaticRouteConfigProvider (inline route_config) or
    # an RdsRouteConfigProvider (rds), whose route_table changes with each RDS update.
    route_provider: Any
    filter_chain: HttpFilterChain
    local_reply: LocalReplyConfig | None
    access_logs: tuple
    stats: ConnManagerStatSets
    code_stats: DownstreamCodeStats
    stream_idle_timeout: float | None
    request_timeout: float | None
    request_headers_timeout: float | None
    idle_timeout: float | None
    max_connection_duration: float | None
    max_stream_duration: float | None
    max_requests_per_connection: int
    delayed_close_timeout: float | None
    drain_timeout: float
    proxy_100_continue: bool
    strip_port: int  # 0 no, 1 matching the listener's port, 2 any
    strip_trailing_host_dot: bool
    # Admin /healthcheck/fail drain-closes every connection (Envoy's drainClose() for a
    # listener of drain_type DEFAULT): a ServerHealth, or None.
    server_health: Any = None
    upgrades: UpgradeConfigs = NO_UPGRADE_CONFIGS  # upgrade_configs (http/upgrades.py)
    # normalize_path, merge_slashes, path_with_escaped_slashes_action (http/path_utility.py);
    # None when none is on.
    path_normalization: PathNormalization | None = None
    # access_log_options (or its deprecated fields); None when none is set.
    access_log_options: AccessLogOptions | None = None
    # What a stream sets up at its start for access_log_options and the recommended status of
    # proxy_status_config (http/stream_options.py); None: nothing.
    stream_options: StreamOptions | None = None
    # The chain of an upgrade refused after its headers were evaluated: no filters (and, with
    # flush_access_log_on_new_request, the DownstreamStart entry).
    refused_upgrade_chain: HttpFilterChain = NO_HTTP_FILTERS
    # Derived: a new stream has timers or stream options to set up.
    per_stream_setup: bool = field(init=False, repr=False, compare=False)
    # Derived: something runs before the header rules (path normalization, host stripping,
    # original IP detection); the fragment check runs in any case.
    before_mutation: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        setup = self.request_timeout or self.max_stream_duration or self.stream_options
        object.__setattr__(self, "per_stream_setup", bool(setup))
        before = self.path_normalization or self.strip_port or self.strip_trailing_host_dot
        before = before or self.header_policy.original_ip_detection
        object.__setattr__(self, "before_mutation", bool(before))


def _seconds(proto, field: str, default: float | None) -> float | None:
    """A Duration field: the default when unset, None when 0 (Envoy: disabled)."""
    if not proto.HasField(field):
        return default
    return duration(getattr(proto, field)) or None


def _route_provider(proto, context: FactoryContext, path: str):
    """(provider, the RouteTable the filters may inspect at config time: None with RDS)."""
    owned = context.owned_route_configs
    owners = None if owned is None else RouteStatOwners.of(context.store)
    if proto.WhichOneof("route_specifier") == "route_config":
        table = compile_route_config(proto.route_config, context, join_path(path, "route_config"))
        provider = StaticRouteConfigProvider(table, proto=proto.route_config, owners=owners)
        if owned is not None:
            owned.append(provider)
        return provider, table
    rpath = join_path(path, "rds")
    check_supported(proto.rds, ("config_source", "route_config_name"), rpath, "Rds")
    if not proto.rds.HasField("config_source"):
        raise ConfigError(join_path(rpath, "config_source"), "value is required")
    # (validate mode has no manager: the provider is only compiled)
    manager = context.route_config_providers or RouteConfigProviderManager()
    compile_table = compile_rds_table(replace(context, route_table=None), rpath)
    provider = manager.provider(proto.rds, compile_table, proto.stat_prefix, owners)
    if owned is not None:
        owned.append(provider)
    return provider, None


def compile_config(proto, context: FactoryContext, path: str) -> HcmConfig:
    check_supported(proto, _SUPPORTED, path, "HttpConnectionManager")
    if proto.codec_type not in (_AUTO, _HTTP1, _HTTP2):
        name = HttpConnectionManager.CodecType.Name(proto.codec_type)
        raise ConfigError(
            join_path(path, "codec_type"),
            f"codec_type {name} is not supported by legatus yet (HTTP/1.1 and HTTP/2 only)",
        )
    if proto.WhichOneof("route_specifier") not in ("route_config", "rds"):
        raise ConfigError(
            path, "HttpConnectionManager needs route_config or rds (scoped routes are not "
            "supported by legatus yet)"
        )  # fmt: skip
    common = proto.common_http_protocol_options if proto.HasField(
        "common_http_protocol_options"
    ) else None  # fmt: skip
    common_path = join_path(path, "common_http_protocol_options")
    if common is not None:
        check_supported(common, _SUPPORTED_COMMON, common_path, "HttpProtocolOptions")
    codec_settings = Http1Settings.from_protos(
        proto.http_protocol_options if proto.HasField("http_protocol_options") else None,
        common,
        max_request_headers_kb=proto.max_request_headers_kb.value
        if proto.HasField("max_request_headers_kb")
        else 0,
        hcm_stream_error=proto.stream_error_on_invalid_http_message.value,
        path=path,
    )
    http2_proto = proto.http2_protocol_options if proto.HasField("http2_protocol_options") else None
    http2_settings = Http2Settings.from_proto(
        http2_proto,
        common,
        max_headers_kb=proto.max_request_headers_kb.value
        if proto.HasField("max_request_headers_kb")
        else 0,
        path=join_path(path, "http2_protocol_options"),
        server=True,
    )
    if proto.HasField("stream_error_on_invalid_http_message") and not (
        http2_proto is not None
        and http2_proto.HasField("override_stream_error_on_invalid_http_message")
    ):
        # Envoy: the HCM's field stands in for an unset HTTP/2 override (and so beats the
        # deprecated stream_error_on_invalid_http_messaging).
        http2_settings = replace(
            http2_settings,
            stream_error_on_invalid_http_messaging=proto.stream_error_on_invalid_http_message.value,
        )
    node = context.options
    proxy_status = None
    if proto.HasField("proxy_status_config"):
        proxy_status = compile_proxy_status_config(
            proto.proxy_status_config,
            join_path(path, "proxy_status_config"),
            server_name=proto.server_name or "envoy",
            node_id=context.node_id,
        )
    policy = compile_request_policy(
        proto,
        path,
        service_cluster=getattr(node, "service_cluster", "") or "",
        service_node=getattr(node, "service_node", "") or "",
        original_ip_detection=_original_ip_detection(proto, context, path),
        proxy_status=proxy_status,
    )
    access_log_options = compile_access_log_options(proto, path)
    log_start = access_log_options is not None and access_log_options.on_new_request
    route_provider, route_table = _route_provider(proto, context, path)
    filter_context = replace(context, route_table=route_table)
    factories = _http_filters(proto, filter_context, path)
    if log_start:
        factories = start_logging(factories)
    local_reply = None
    if proto.HasField("local_reply_config"):
        local_reply = compile_local_reply_config(
            proto.local_reply_config, join_path(path, "local_reply_config"), context
        )
    Http1CodecStats(context.store.scope("http1."))  # the downstream codec's, shared by all HCMs
    stats = declare_conn_manager_stats(
        context.store.scope(""),
        proto.stat_prefix,
        listener_prefix=context.listener_stat_prefix,
    )
    idle = DEFAULT_IDLE_TIMEOUT
    max_connection_duration = max_stream_duration = None
    max_requests = 0
    if common is not None:
        idle = _seconds(common, "idle_timeout", DEFAULT_IDLE_TIMEOUT)
        max_connection_duration = _seconds(common, "max_connection_duration", None)
        max_stream_duration = _seconds(common, "max_stream_duration", None)
        if common.HasField("max_requests_per_connection"):
            max_requests = common.max_requests_per_connection.value
    strip = 2 if proto.strip_any_host_port else 1 if proto.strip_matching_host_port else 0
    return HcmConfig(
        server_health=context.server_health,
        stat_prefix=proto.stat_prefix,
        codec_settings=codec_settings,
        codec_type=proto.codec_type,
        http2_settings=http2_settings,
        http2_stats=LazyCodecStats(context.store.scope("")),
        header_policy=policy,
        route_provider=route_provider,
        filter_chain=factories,
        local_reply=local_reply,
        access_logs=tuple(
            create_access_logs(
                proto.access_log, context, join_path(path, "access_log"), log_type=DOWNSTREAM_END
            )
        ),
        stats=stats,
        code_stats=DownstreamCodeStats(stats.named, stats.listener),
        stream_idle_timeout=_seconds(proto, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT),
        request_timeout=_seconds(proto, "request_timeout", None),
        request_headers_timeout=_seconds(proto, "request_headers_timeout", None),
        idle_timeout=idle,
        max_connection_duration=max_connection_duration,
        max_stream_duration=max_stream_duration,
        max_requests_per_connection=max_requests,
        delayed_close_timeout=_seconds(
            proto, "delayed_close_timeout", DEFAULT_DELAYED_CLOSE_TIMEOUT
        ),
        drain_timeout=_seconds(proto, "drain_timeout", DEFAULT_DRAIN_TIMEOUT) or 0.0,
        proxy_100_continue=proto.proxy_100_continue,
        strip_port=strip,
        strip_trailing_host_dot=proto.strip_trailing_host_dot,
        upgrades=_upgrade_configs(proto, filter_context, path, log_start=log_start),
        access_log_options=access_log_options,
        stream_options=StreamOptions.of(access_log_options, proxy_status),
        refused_upgrade_chain=start_logging(NO_HTTP_FILTERS) if log_start else NO_HTTP_FILTERS,
        path_normalization=compile_path_normalization(proto, context.runtime),
    )


def _upgrade_configs(
    proto, context: FactoryContext, path: str, *, log_start: bool = False
) -> UpgradeConfigs:
    """``upgrade_configs``: each type once (without case), its own filter chain if it has
    ``filters`` (Envoy's checks, for a "http upgrade filter chain"); ``log_start``: a chain
    writes each new stream's DownstreamStart entry."""
    if not proto.upgrade_configs:
        return NO_UPGRADE_CONFIGS
    configs: dict[str, UpgradeConfig] = {}
    for i, entry in enumerate(proto.upgrade_configs):
        entry_path = f"{join_path(path, 'upgrade_configs')}[{i}]"
        check_supported(entry, ("upgrade_type", "filters", "enabled"), entry_path, "UpgradeConfig")
        name = entry.upgrade_type
        if name.lower() in configs:
            raise ConfigError(
                entry_path, f"Error: multiple upgrade configs with the same name: '{name}'"
            )
        filters = None
        if entry.filters:
            filters = _filter_chain(
                list(entry.filters), context, join_path(entry_path, "filters"), "http upgrade"
            )
            if log_start:
                filters = start_logging(filters)
        configs[name.lower()] = UpgradeConfig(
            enabled=entry.enabled.value if entry.HasField("enabled") else True,
            filter_chain=filters,
        )
    return UpgradeConfigs(configs)


def _original_ip_detection(proto, context: FactoryContext, path: str) -> tuple:
    """``original_ip_detection_extensions``, made through the registry, in order."""
    if not proto.original_ip_detection_extensions:
        return ()
    from legatus.config.validate import validate_message

    check_compatible(proto, path)
    extensions = []
    for i, entry in enumerate(proto.original_ip_detection_extensions):
        entry_path = f"{join_path(path, 'original_ip_detection_extensions')}[{i}]"
        check_supported(entry, ("name", "typed_config"), entry_path, "TypedExtensionConfig")
        extension, config = context.registry.resolve(
            Category.ORIGINAL_IP_DETECTION,
            name=entry.name,
            typed_config=entry.typed_config if entry.HasField("typed_config") else None,
            path=entry_path,
        )
        errors = validate_message(config, f"{entry_path}.typed_config")
        if errors:
            raise errors[0]
        extensions.append(extension.factory(config, context, f"{entry_path}.typed_config"))
    return tuple(extensions)


def _http_filters(proto, context: FactoryContext, path: str) -> HttpFilterChain:
    """The HTTP filter chain; an empty list means the router alone, as in Envoy."""
    entries = list(proto.http_filters)
    if not entries:
        from legatus.extensions.filters.http.router import default_router_factory

        return HttpFilterChain((default_router_factory(context),))
    return _filter_chain(entries, context, join_path(path, "http_filters"), "http")


def _filter_chain(
    entries: list, context: FactoryContext, filters_path: str, chain: str
) -> HttpFilterChain:
    """A list of HttpFilter made into factories, with Envoy's checks on terminal filters and
    its messages (``chain``: "http", or "http upgrade" for an upgrade's own chain)."""
    factories = []
    for i, entry in enumerate(entries):
        fpath = f"{filters_path}[{i}]"
        check_supported(entry, _SUPPORTED_HTTP_FILTER, fpath, "HttpFilter")
        extension, config = context.registry.resolve(
            Category.HTTP_FILTER,
            name=entry.name,
            typed_config=entry.typed_config if entry.HasField("typed_config") else None,
            path=fpath,
        )
        from legatus.config.validate import validate_message

        errors = validate_message(config, f"{fpath}.typed_config")
        if errors:
            raise errors[0]
        created = extension.factory(
            config, replace(context, http_filter_name=entry.name), f"{fpath}.typed_config"
        )
        factory = HttpFilterFactory(
            name=entry.name,
            create=created.create,
            terminal=created.terminal,
            disabled=entry.disabled,
        )
        last = i == len(entries) - 1
        if factory.terminal and not last:
            raise ConfigError(
                fpath,
                f"Error: terminal filter named {entry.name} of type {extension.name} must be "
                f"the last filter in a {chain} filter chain.",
            )
        if not factory.terminal and last:
            raise ConfigError(
                fpath,
                f"Error: non-terminal filter named {entry.name} of type {extension.name} is "
                f"the last filter in a {chain} filter chain.",
            )
        factories.append(factory)
    return HttpFilterChain(factories)

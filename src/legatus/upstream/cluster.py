"""Cluster configuration compiled once, and the hosts it points at.

``ClusterConfig`` is the immutable result of checking an
``envoy.config.cluster.v3.Cluster``; it is built in the main process (which
resolves DNS and owns membership) and again in each worker from the same proto.
``HostSet`` is the snapshot of a cluster's hosts that the main process sends to
the workers whenever membership changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from legatus.config.errors import ConfigError
from legatus.config.metadata import FrozenMetadata
from legatus.config.supported import check_supported
from legatus.http.http1.settings import DEFAULT_SETTINGS as DEFAULT_HTTP1_SETTINGS
from legatus.http.http1.settings import Http1Settings
from legatus.network import address as addr
from legatus.network.connection import DEFAULT_BUFFER_LIMIT
from legatus.upstream.health_checker.config import HealthCheckConfig, compile_health_checks
from legatus.upstream.lb_config import DEFAULT_LB, LbConfig, compile_lb_config
from legatus.upstream.outlier_detection import OutlierConfig, compile_outlier_detection

Cluster = cluster_pb2.Cluster


class DiscoveryType(enum.Enum):
    STATIC = Cluster.STATIC
    STRICT_DNS = Cluster.STRICT_DNS
    LOGICAL_DNS = Cluster.LOGICAL_DNS
    EDS = Cluster.EDS


class LookupFamily(enum.Enum):
    AUTO = Cluster.AUTO
    V4_ONLY = Cluster.V4_ONLY
    V6_ONLY = Cluster.V6_ONLY
    V4_PREFERRED = Cluster.V4_PREFERRED
    ALL = Cluster.ALL


_SUPPORTED_CLUSTER_FIELDS = frozenset(
    {
        "name",
        "alt_stat_name",
        "type",
        "connect_timeout",
        "per_connection_buffer_limit_bytes",
        "lb_policy",
        "ring_hash_lb_config",
        "maglev_lb_config",
        "least_request_lb_config",
        "round_robin_lb_config",
        "common_lb_config",
        "load_balancing_policy",
        "load_assignment",
        "dns_refresh_rate",
        "respect_dns_ttl",
        "dns_lookup_family",
        "dns_failure_refresh_rate",
        "metadata",
        "ignore_health_on_host_removal",
        "circuit_breakers",
        "typed_extension_protocol_options",
        "max_requests_per_connection",
        "health_checks",
        "outlier_detection",
        "eds_cluster_config",
        "transport_socket",
        # Deprecated, used when typed_extension_protocol_options has no HttpProtocolOptions
        # (_deprecated_protocol_options).
        "http_protocol_options",
        "http2_protocol_options",
        "common_http_protocol_options",
        "protocol_selection",
    }
)
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DEFAULT_UPSTREAM_IDLE_TIMEOUT = 3600.0  # common_http_protocol_options.idle_timeout: 1 hour
_SUPPORTED_LB_ENDPOINT = frozenset(
    {"endpoint", "load_balancing_weight", "health_status", "metadata"}
)
_SUPPORTED_ENDPOINT = frozenset({"address", "hostname", "health_check_config"})
_SUPPORTED_HEALTH_CHECK_CONFIG = frozenset(
    {"port_value", "hostname", "address", "disable_active_health_check"}
)
_SUPPORTED_LOCALITY = frozenset({"locality", "lb_endpoints", "priority", "load_balancing_weight"})
_SUPPORTED_ASSIGNMENT = frozenset({"cluster_name", "endpoints", "policy"})
_SUPPORTED_EDS_CLUSTER_CONFIG = ("eds_config", "service_name")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    address: addr.SocketAddress  # host may be a DNS name for DNS clusters
    weight: int
    priority: int
    hostname: str
    region: str = ""
    zone: str = ""
    sub_zone: str = ""
    locality_weight: int = 0  # the locality's load_balancing_weight (0: unset)
    health_status: int = 0  # core.v3.HealthStatus (EDS-style); 0: UNKNOWN
    hash_key: str = ""  # metadata envoy.lb hash_key: the ring/Maglev key instead of the address
    health_check: HealthCheckTarget | None = None  # Endpoint.health_check_config, if set
    metadata: FrozenMetadata | None = None  # the lb_endpoint's (%METADATA(UPSTREAM_HOST:...)%)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    name: str
    stat_name: str  # alt_stat_name or name: the ``cluster.<stat_name>.`` scope
    type: DiscoveryType
    connect_timeout: float  # seconds
    buffer_limit: int
    endpoints: tuple[EndpointConfig, ...]
    dns_refresh_rate: float
    dns_failure_refresh_rate: float | None
    respect_dns_ttl: bool
    dns_lookup_family: LookupFamily
    proto: Cluster
    max_requests_per_connection: int = 0  # 0: unlimited
    upstream_idle_timeout: float | None = DEFAULT_UPSTREAM_IDLE_TIMEOUT
    health_check: HealthCheckConfig | None = None  # health_checks (at most one)
    outlier: OutlierConfig | None = None  # outlier_detection
    lb: LbConfig = DEFAULT_LB  # lb_policy, *_lb_config, common_lb_config, load_balancing_policy
    # The HTTP pools' protocols (HttpProtocolOptions): ``http2`` is Envoy's HTTP2 feature
    # (explicit_http_config.http2_protocol_options, or use_downstream_protocol_config with
    # them: HTTP/2 when no downstream protocol decides); ``http2_settings`` are the HTTP/2
    # pools' options (None: HTTP/1.1 only); ``use_downstream_protocol``: one pool per
    # downstream protocol (use_downstream_protocol_config).
    http2: bool = False
    http2_settings: Any = None
    use_downstream_protocol: bool = False
    # auto_config: one pool per host whose connections speak HTTP/2 or HTTP/1.1 as the TLS
    # handshake's ALPN chose (http2_settings and http1_settings apply to each kind).
    auto_config: bool = False
    http1_enable_trailers: bool = False  # http_protocol_options.enable_trailers (gRPC status)
    # The HTTP/1 pools' codec settings (http_protocol_options: header case, trailers...).
    http1_settings: Http1Settings = DEFAULT_HTTP1_SETTINGS
    # EDS: the ClusterLoadAssignment name to subscribe to (service_name, or the cluster's
    # name) and where from (eds_cluster_config.eds_config, a ConfigSource proto).
    eds_service_name: str = ""
    eds_config: Any = None
    # transport_socket, compiled (extensions/transport_sockets/upstream.py); None: plaintext.
    transport_socket: Any = None
    metadata: FrozenMetadata | None = None  # %METADATA(CLUSTER:...)%, %CLUSTER_METADATA(...)%


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """One resolved host of a cluster, as the workers receive it."""

    address: addr.SocketAddress  # an IP
    hostname: str
    weight: int
    priority: int
    region: str = ""
    zone: str = ""
    sub_zone: str = ""
    health_status: int = 0  # core.v3.HealthStatus from the lb_endpoint; 0: UNKNOWN
    hash_key: str = ""  # metadata envoy.lb hash_key, if any
    health_check: HealthCheckTarget | None = None  # Endpoint.health_check_config, if set
    metadata: FrozenMetadata | None = None  # the lb_endpoint's

    def health_check_address(self) -> tuple[str, int]:
        """Where active health checks go: the endpoint's health_check_config address and
        port_value (Envoy's resolveHealthCheckAddress: port_value overrides either port)."""
        target = self.health_check
        if target is None:
            return self.address.as_tuple()
        address = target.address or self.address
        return (address.host, target.port or address.port)


@dataclass(frozen=True, slots=True)
class HealthCheckTarget:
    """``Endpoint.HealthCheckConfig``: where and how a host is actively health checked."""

    port: int = 0  # port_value; 0: the host's (or the address's) port
    address: addr.SocketAddress | None = None
    hostname: str = ""  # the Host header of HTTP checks; wins over HttpHealthCheck.host
    disabled: bool = False  # disable_active_health_check: never checked, counted healthy


def duration(d) -> float:
    return d.seconds + d.nanos / 1e9


def compile_cluster(proto: Cluster, path: str, secrets: Any = None) -> ClusterConfig:
    check_supported(proto, _SUPPORTED_CLUSTER_FIELDS, path, "Cluster")
    if proto.WhichOneof("cluster_discovery_type") == "cluster_type":
        raise ConfigError(f"{path}.cluster_type", "custom cluster types are not supported yet")
    try:
        kind = DiscoveryType(proto.type)
    except ValueError:
        raise ConfigError(
            f"{path}.type",
            f"cluster type {Cluster.DiscoveryType.Name(proto.type)} is not supported yet",
        ) from None
    lb = compile_lb_config(proto, path)
    eds_service_name, eds_config = "", None
    if kind is DiscoveryType.EDS:
        eds_service_name, eds_config = _eds_cluster_config(proto, path)
    elif proto.HasField("eds_cluster_config"):
        raise ConfigError(
            f"{path}.eds_cluster_config", "eds_cluster_config is only for clusters of type EDS"
        )
    endpoints = _endpoints(
        proto.load_assignment,
        f"{path}.load_assignment",
        dns=kind is not DiscoveryType.STATIC and kind is not DiscoveryType.EDS,
    )
    if kind is DiscoveryType.LOGICAL_DNS and len(endpoints) != 1:
        raise ConfigError(
            f"{path}.load_assignment",
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
        )
    max_requests, idle, protocols = _http_protocol_options(proto, path)
    if proto.HasField("circuit_breakers"):
        _check_circuit_breakers(proto.circuit_breakers, f"{path}.circuit_breakers")
    health_check = compile_health_checks(proto.health_checks, f"{path}.health_checks")
    if health_check is not None and health_check.grpc is not None and protocols.auto_config:
        raise ConfigError(
            f"{path}.health_checks[0].grpc_health_check",
            "gRPC health checking of an auto_config cluster is not supported by legatus yet",
        )
    if health_check is not None and health_check.grpc is not None and not protocols.http2:
        raise ConfigError(
            f"{path}.health_checks[0].grpc_health_check",
            f"{proto.name} cluster must support HTTP/2 for gRPC healthchecking",
        )
    outlier = (
        compile_outlier_detection(proto.outlier_detection, f"{path}.outlier_detection")
        if proto.HasField("outlier_detection")
        else None
    )
    return ClusterConfig(
        lb=lb,
        http2=protocols.http2,
        http2_settings=protocols.http2_settings,
        use_downstream_protocol=protocols.use_downstream_protocol,
        auto_config=protocols.auto_config,
        http1_enable_trailers=protocols.http1_enable_trailers,
        http1_settings=protocols.http1_settings,
        health_check=health_check,
        outlier=outlier,
        max_requests_per_connection=max_requests,
        upstream_idle_timeout=idle,
        name=proto.name,
        stat_name=proto.alt_stat_name or proto.name,
        type=kind,
        connect_timeout=duration(proto.connect_timeout)
        if proto.HasField("connect_timeout")
        else 5.0,
        buffer_limit=proto.per_connection_buffer_limit_bytes.value
        if proto.HasField("per_connection_buffer_limit_bytes")
        else DEFAULT_BUFFER_LIMIT,
        endpoints=endpoints,
        dns_refresh_rate=duration(proto.dns_refresh_rate)
        if proto.HasField("dns_refresh_rate")
        else 5.0,
        dns_failure_refresh_rate=duration(proto.dns_failure_refresh_rate.base_interval)
        if proto.HasField("dns_failure_refresh_rate")
        else None,
        respect_dns_ttl=proto.respect_dns_ttl,
        dns_lookup_family=LookupFamily(proto.dns_lookup_family),
        proto=proto,
        eds_service_name=eds_service_name,
        eds_config=eds_config,
        transport_socket=_transport_socket(proto, path, secrets),
        metadata=FrozenMetadata.from_proto(proto.metadata, f"{path}.metadata")
        if proto.HasField("metadata")
        else None,
    )


def _transport_socket(proto: Cluster, path: str, secrets: Any) -> Any:
    """``secrets``: the process's SDS secrets (a SecretManager), for an UpstreamTlsContext
    that names some."""
    if not proto.HasField("transport_socket"):
        return None
    from legatus.extensions.transport_sockets.upstream import compile_cluster_transport_socket

    return compile_cluster_transport_socket(
        proto.transport_socket, f"{path}.transport_socket", secrets
    )


def _eds_cluster_config(proto: Cluster, path: str) -> tuple[str, Any]:
    epath = f"{path}.eds_cluster_config"
    eds = proto.eds_cluster_config
    check_supported(eds, _SUPPORTED_EDS_CLUSTER_CONFIG, epath, "EdsClusterConfig")
    if not eds.HasField("eds_config"):
        # Envoy: "cannot create an EDS cluster without an EDS config".
        raise ConfigError(
            f"{epath}.eds_config", "cannot create an EDS cluster without an EDS config"
        )
    if proto.load_assignment.endpoints:
        raise ConfigError(
            f"{path}.load_assignment",
            "an EDS cluster takes its endpoints from EDS, not from load_assignment",
        )
    return eds.service_name or proto.name, eds.eds_config


def _check_circuit_breakers(proto, path: str) -> None:
    """Refuse at load time what the workers' ResourceManager would refuse."""
    from legatus.stats.store import Store
    from legatus.upstream.resource_manager import ResourceManager, ResourcePriority

    for priority in ResourcePriority:
        ResourceManager.from_circuit_breakers(proto, Store().scope(""), priority, path)


@dataclass(frozen=True, slots=True)
class _UpstreamProtocols:
    """What HttpProtocolOptions says about the protocols a cluster's HTTP pools speak."""

    http2: bool = False  # Envoy's HTTP2 feature: HTTP/2 unless the downstream protocol decides
    http2_settings: Any = None  # Http2Settings of the HTTP/2 pools; None: HTTP/1.1 only
    use_downstream_protocol: bool = False
    auto_config: bool = False  # HTTP/2 or HTTP/1.1 per connection, as ALPN chose
    http1_enable_trailers: bool = False
    http1_settings: Http1Settings = DEFAULT_HTTP1_SETTINGS


def _http_protocol_options(
    proto: Cluster, path: str
) -> tuple[int, float | None, _UpstreamProtocols]:
    """The upstream HTTP options the pools use: max_requests_per_connection, the idle
    timeout and the protocols, from ``typed_extension_protocol_options``
    (HttpProtocolOptions) or the cluster's deprecated ``max_requests_per_connection``."""
    max_requests = (
        proto.max_requests_per_connection.value
        if proto.HasField("max_requests_per_connection")
        else 0
    )
    idle: float | None = DEFAULT_UPSTREAM_IDLE_TIMEOUT
    protocols = _UpstreamProtocols()
    for key, any_proto in proto.typed_extension_protocol_options.items():
        opath = f"{path}.typed_extension_protocol_options['{key}']"
        if any_proto.type_url.rsplit("/", 1)[-1] != HTTP_PROTOCOL_OPTIONS:
            raise ConfigError(
                opath, f"protocol options {any_proto.type_url} are not supported by legatus yet"
            )
        from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

        options = http_protocol_options_pb2.HttpProtocolOptions()
        any_proto.Unpack(options)
        check_supported(
            options,
            ("common_http_protocol_options", "explicit_http_config",
             "use_downstream_protocol_config", "auto_config"),
            opath,
            "HttpProtocolOptions",
        )  # fmt: skip
        if options.HasField("auto_config"):
            protocols = _auto_config(proto, options.auto_config, f"{opath}.auto_config")
        else:
            protocols = _protocols(options, opath)
        if options.HasField("common_http_protocol_options"):
            idle, max_requests = _common_options(
                options.common_http_protocol_options, opath, idle, max_requests
            )
    if not proto.typed_extension_protocol_options:
        options = _deprecated_protocol_options(proto, path)
        if options is not None:
            protocols = _protocols(options, path)
            if proto.HasField("common_http_protocol_options"):
                idle, max_requests = _common_options(
                    proto.common_http_protocol_options, path, idle, max_requests
                )
    return max_requests, idle, protocols


def _common_options(common, path: str, idle: float | None, max_requests: int):
    """``common_http_protocol_options`` under ``path``: the idle timeout and the requests per
    connection, each kept when unset."""
    cpath = f"{path}.common_http_protocol_options"
    supported = ("idle_timeout", "max_requests_per_connection")
    check_supported(common, supported, cpath, "HttpProtocolOptions")
    if common.HasField("idle_timeout"):
        idle = duration(common.idle_timeout) or None
    if common.HasField("max_requests_per_connection"):
        max_requests = common.max_requests_per_connection.value
    return idle, max_requests


def _deprecated_protocol_options(proto: Cluster, path: str):
    """The HttpProtocolOptions that Envoy builds from a cluster's deprecated
    ``http_protocol_options`` / ``http2_protocol_options`` / ``protocol_selection`` when
    ``typed_extension_protocol_options`` has none (typed options win); None if none is set."""
    fields = ("http_protocol_options", "http2_protocol_options", "common_http_protocol_options")
    if not any(proto.HasField(f) for f in fields) and not proto.protocol_selection:
        return None
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    options = http_protocol_options_pb2.HttpProtocolOptions()
    downstream = proto.protocol_selection == Cluster.USE_DOWNSTREAM_PROTOCOL
    if (
        not downstream
        and proto.HasField("http_protocol_options")
        and proto.HasField("http2_protocol_options")
    ):
        raise ConfigError(
            path,
            "cluster: Both HTTP1 and HTTP2 options may only be configured with non-default "
            "'protocol_selection' values",
        )
    config = options.use_downstream_protocol_config if downstream else options.explicit_http_config
    if proto.HasField("http2_protocol_options"):
        config.http2_protocol_options.CopyFrom(proto.http2_protocol_options)
    elif proto.HasField("http_protocol_options") or not downstream:
        config.http_protocol_options.CopyFrom(proto.http_protocol_options)
    if downstream and proto.HasField("http_protocol_options"):
        config.http_protocol_options.CopyFrom(proto.http_protocol_options)
    return options


def _protocols(options, opath: str) -> _UpstreamProtocols:
    """``explicit_http_config`` (HTTP/1.1 or HTTP/2) or ``use_downstream_protocol_config``
    (the downstream request's protocol: HTTP/2 for an HTTP/2 request, else HTTP/1.1)."""
    from legatus.http.http2.settings import Http2Settings

    downstream = options.HasField("use_downstream_protocol_config")
    if downstream:
        config = options.use_downstream_protocol_config
        cpath = f"{opath}.use_downstream_protocol_config"
        check_supported(
            config, ("http_protocol_options", "http2_protocol_options"), cpath,
            "UseDownstreamHttpConfig",
        )  # fmt: skip
    else:
        config = options.explicit_http_config
        cpath = f"{opath}.explicit_http_config"
        which = config.WhichOneof("protocol_config")
        if which not in (None, "http_protocol_options", "http2_protocol_options"):
            raise ConfigError(f"{cpath}.{which}", f"{which} is not supported by legatus yet")
    http1 = Http1Settings.from_upstream_proto(
        config.http_protocol_options, path=f"{cpath}.http_protocol_options"
    )
    has_http2 = config.HasField("http2_protocol_options")
    settings = None
    if has_http2 or downstream:
        settings = Http2Settings.from_proto(
            config.http2_protocol_options if has_http2 else None,
            path=f"{cpath}.http2_protocol_options",
        )
    return _UpstreamProtocols(
        http2=has_http2,
        http2_settings=settings,
        use_downstream_protocol=downstream,
        http1_enable_trailers=http1.enable_trailers,
        http1_settings=http1,
    )


def _auto_config(proto: Cluster, auto, apath: str) -> _UpstreamProtocols:
    """``auto_config``: each connection speaks HTTP/2 or HTTP/1.1 as its TLS handshake's
    ALPN chose (conn_pool/mixed.py). Envoy refuses it on a transport socket that cannot
    negotiate ALPN (plaintext) and requires an alternate protocols cache for HTTP/3."""
    from legatus.http.http2.settings import Http2Settings

    check_supported(
        auto, ("http_protocol_options", "http2_protocol_options"), apath, "AutoHttpConfig"
    )
    if not _alpn_transport_socket(proto):
        raise ConfigError(
            apath,
            f"ALPN configured for cluster {proto.name} which has a non-ALPN transport socket",
        )
    http1 = Http1Settings.from_upstream_proto(
        auto.http_protocol_options, path=f"{apath}.http_protocol_options"
    )
    settings = Http2Settings.from_proto(
        auto.http2_protocol_options if auto.HasField("http2_protocol_options") else None,
        path=f"{apath}.http2_protocol_options",
    )
    return _UpstreamProtocols(
        http2_settings=settings,
        auto_config=True,
        http1_enable_trailers=http1.enable_trailers,
        http1_settings=http1,
    )


def _alpn_transport_socket(proto: Cluster) -> bool:
    """Whether the cluster's transport socket negotiates ALPN: TLS (found, as every
    extension, by its type URL, else its name); plaintext and raw_buffer do not."""
    if not proto.HasField("transport_socket"):
        return False
    socket = proto.transport_socket
    if socket.HasField("typed_config"):
        return socket.typed_config.type_url.rsplit("/", 1)[-1] == _UPSTREAM_TLS_CONTEXT
    return socket.name == "envoy.transport_sockets.tls"


_UPSTREAM_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _endpoints(la, la_path: str, *, dns: bool) -> tuple[EndpointConfig, ...]:
    """The endpoints of a ClusterLoadAssignment (a cluster's load_assignment or from EDS)."""
    out = []
    check_supported(la, _SUPPORTED_ASSIGNMENT, la_path, "ClusterLoadAssignment")
    for i, locality in enumerate(la.endpoints):
        lpath = f"{la_path}.endpoints[{i}]"
        check_supported(locality, _SUPPORTED_LOCALITY, lpath, "LocalityLbEndpoints")
        for j, lb in enumerate(locality.lb_endpoints):
            epath = f"{lpath}.lb_endpoints[{j}]"
            check_supported(lb, _SUPPORTED_LB_ENDPOINT, epath, "LbEndpoint")
            if lb.WhichOneof("host_identifier") != "endpoint":
                raise ConfigError(epath, "endpoint_name is not supported; use endpoint")
            check_supported(lb.endpoint, _SUPPORTED_ENDPOINT, f"{epath}.endpoint", "Endpoint")
            a = addr.from_proto(lb.endpoint.address, f"{epath}.endpoint.address", resolve_names=dns)
            health_check = (
                _health_check_target(
                    lb.endpoint.health_check_config, f"{epath}.endpoint.health_check_config"
                )
                if lb.endpoint.HasField("health_check_config")
                else None
            )
            out.append(
                EndpointConfig(
                    address=a,
                    weight=lb.load_balancing_weight.value
                    if lb.HasField("load_balancing_weight")
                    else 1,
                    priority=locality.priority,
                    hostname=lb.endpoint.hostname,
                    region=locality.locality.region,
                    zone=locality.locality.zone,
                    sub_zone=locality.locality.sub_zone,
                    locality_weight=locality.load_balancing_weight.value,
                    health_status=lb.health_status,
                    hash_key=_hash_key(lb),
                    health_check=health_check,
                    metadata=FrozenMetadata.from_proto(lb.metadata, f"{epath}.metadata")
                    if lb.HasField("metadata")
                    else None,
                )
            )
    return tuple(out)


def _health_check_target(proto, path: str) -> HealthCheckTarget | None:
    check_supported(proto, _SUPPORTED_HEALTH_CHECK_CONFIG, path, "Endpoint.HealthCheckConfig")
    address = (
        addr.from_proto(proto.address, f"{path}.address") if proto.HasField("address") else None
    )
    target = HealthCheckTarget(
        port=proto.port_value,
        address=address,
        hostname=proto.hostname,
        disabled=proto.disable_active_health_check,
    )
    return None if target == HealthCheckTarget() else target


def _hash_key(lb_endpoint) -> str:
    """The ``envoy.lb`` metadata ``hash_key`` string (Envoy's consistent-hashing key)."""
    if not lb_endpoint.HasField("metadata"):
        return ""
    envoy_lb = lb_endpoint.metadata.filter_metadata.get("envoy.lb")
    if envoy_lb is None:
        return ""
    value = envoy_lb.fields.get("hash_key")
    return value.string_value if value is not None else ""


def assignment_hosts(assignment, path: str) -> tuple[HostConfig, ...]:
    """The hosts of an EDS ClusterLoadAssignment (IP addresses only, as Envoy's EDS);
    ConfigError names the offending field. Its balancing settings (policy, locality weights):
    ``lb_config.assignment_settings``."""
    endpoints = _endpoints(assignment, path, dns=False)
    # One host per address, as Envoy keeps (the first lb_endpoint that names it).
    seen: set = set()
    unique = []
    for e in endpoints:
        if e.address not in seen:
            seen.add(e.address)
            unique.append(e)
    return _hosts(unique)


def static_hosts(config: ClusterConfig) -> tuple[HostConfig, ...]:
    return _hosts(config.endpoints)


def _hosts(endpoints) -> tuple[HostConfig, ...]:
    return tuple(
        HostConfig(
            address=e.address,
            hostname=e.hostname,
            weight=e.weight,
            priority=e.priority,
            region=e.region,
            zone=e.zone,
            sub_zone=e.sub_zone,
            health_status=e.health_status,
            hash_key=e.hash_key,
            health_check=e.health_check,
            metadata=e.metadata,
        )
        for e in endpoints
    )

"""The extensions legatus ships, registered into an explicit Registry."""

from __future__ import annotations

from legatus.registry import Registry

_EXTENSIONS = (
    "filters.network.tcp_proxy",
    "filters.network.echo",
    "filters.network.direct_response",
    "filters.network.http_connection_manager",
    "filters.http.router",
    "filters.http.compressor",
    "compression.gzip",
    "compression.brotli",
    "compression.zstd",
    "filters.http.decompressor",
    "compression.gzip.decompressor",
    "http.header_formatters.preserve_case",
    "http.original_ip_detection.custom_header",
    "http.original_ip_detection.xff",
    "filters.http.local_ratelimit",
    "filters.http.rbac",
    "filters.http.ratelimit",
    "filters.http.fault",
    "filters.http.buffer",
    "filters.http.health_check",
    "filters.http.cors",
    "filters.http.csrf",
    "filters.http.grpc_web",
    "filters.http.grpc_stats",
    "filters.http.grpc_http1_bridge",
    "filters.network.local_ratelimit",
    "filters.network.connection_limit",
    "filters.network.rbac",
    "filters.network.ratelimit",
    "access_loggers.file",
    "access_loggers.stream",
    "transport_sockets.tls",
    "transport_sockets.raw_buffer",
    "filters.listener.tls_inspector",
)


def default_registry() -> Registry:
    import importlib

    registry = Registry()
    for name in _EXTENSIONS:
        importlib.import_module(f"legatus.extensions.{name}").register(registry)
    return registry

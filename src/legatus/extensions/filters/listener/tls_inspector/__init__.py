"""``envoy.filters.listener.tls_inspector``: reads a connection's ClientHello, without
consuming it, for the filter chain match (``server_names``, ``transport_protocol: tls``,
``application_protocols``).

The parsing is the sans-I/O ``ClientHelloParser`` that the TLS transport socket uses too.
Stats are Envoy's, in the root scope as in Envoy: ``tls_inspector.tls_found``,
``tls_not_found``, ``sni_found``, ``sni_not_found``, ``alpn_found``, ``alpn_not_found``,
``client_hello_too_large`` and the ``bytes_processed`` histogram.
"""

from __future__ import annotations

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.filters.listener.tls_inspector.filter import (
    TlsInspectorConfig,
    TlsInspectorFilter,
)
from legatus.extensions.transport_sockets.tls.hello import DEFAULT_MAX_CLIENT_HELLO
from legatus.registry import Category, Registry, extension

NAME = "envoy.filters.listener.tls_inspector"
CONFIG_TYPE = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
_SUPPORTED = ("initial_read_buffer_size", "close_connection_on_client_hello_parsing_errors",
              "max_client_hello_size")  # fmt: skip


def _factory(proto, context, path: str):
    check_supported(
        proto, _SUPPORTED, path, "TlsInspector (JA3/JA4 fingerprints are not implemented)"
    )
    max_size = (
        proto.max_client_hello_size.value
        if proto.HasField("max_client_hello_size")
        else DEFAULT_MAX_CLIENT_HELLO
    )
    if max_size > DEFAULT_MAX_CLIENT_HELLO:
        raise ConfigError(
            join_path(path, "max_client_hello_size"),
            f"max_client_hello_size of {max_size} is greater than maximum of "
            f"{DEFAULT_MAX_CLIENT_HELLO}.",
        )
    config = TlsInspectorConfig(
        max_client_hello_size=max_size,
        close_on_parsing_errors=proto.close_connection_on_client_hello_parsing_errors,
        store=None if context.validating else context.store,
    )
    return lambda: TlsInspectorFilter(config)


def register(registry: Registry) -> None:
    registry.register(extension(Category.LISTENER_FILTER, NAME, CONFIG_TYPE, _factory))

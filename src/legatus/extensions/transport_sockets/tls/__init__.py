"""``envoy.transport_sockets.tls``: TLS for listeners (``DownstreamTlsContext``) and
clusters (``UpstreamTlsContext``), on Python's ``ssl`` module (OpenSSL).

The factory compiles the context once (``context_config``); in a worker it also makes the
runtime context (SSL contexts, stats under ``listener.<address>.ssl.`` or
``cluster.<name>.ssl.``), which then wraps each new connection in a ``TlsTransport`` over a
sans-I/O ``SslSocket``. What legatus cannot do with Python's ``ssl`` is refused at config
time; docs/tls.md lists it.
"""

from __future__ import annotations

from legatus.registry import Category, Extension, Registry

NAME = "envoy.transport_sockets.tls"
DOWNSTREAM_TYPE = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TYPE = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


# The factories import socket_factory when a configuration names TLS (see its docstring).


def _downstream(proto, context, path: str):
    from legatus.extensions.transport_sockets.tls.socket_factory import downstream

    return downstream(proto, context, path)


def _upstream(proto, context, path: str):
    from legatus.extensions.transport_sockets.tls.socket_factory import upstream

    return upstream(proto, context, path)


def register(registry: Registry) -> None:
    registry.register(
        Extension(
            category=Category.TRANSPORT_SOCKET_DOWNSTREAM,
            name=NAME,
            config_types=(DOWNSTREAM_TYPE,),
            factory=_downstream,
            aliases=("tls",),
        )
    )
    registry.register(
        Extension(
            category=Category.TRANSPORT_SOCKET_UPSTREAM,
            name=NAME,
            config_types=(UPSTREAM_TYPE,),
            factory=_upstream,
            aliases=("tls",),
        )
    )

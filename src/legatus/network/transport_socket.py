"""Transport sockets: what sits between a socket and a connection's filters (Envoy's
``Network::TransportSocketFactory``), as configured by a filter chain's or a cluster's
``transport_socket``.

A transport socket extension's factory (category ``envoy.transport_sockets.downstream`` or
``...upstream``) compiles its config into one of the two factories below, or returns None
for a plaintext socket (``envoy.transport_sockets.raw_buffer``): a connection without a
transport socket talks to its asyncio transport directly.

- ``DownstreamTransportSocketFactory.attach(connection, raw_transport)`` installs the
  socket on an accepted connection once its filter chain is chosen, and returns the
  protocol that now receives the socket's bytes (the listener replays through it what the
  listener filters read).
- ``UpstreamTransportSocketFactory.upstream_protocol(connection, on_connected, on_failed,
  server_name, host)`` returns the asyncio protocol to connect with; ``on_connected()`` runs when
  the connection is ready (the handshake done, ``connection_made`` called), ``on_failed``
  with a failure that carries ``reason`` otherwise. ``network.connection.PendingConnect``
  drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class DownstreamTransportSocketFactory(Protocol):
    def attach(self, connection: Any, raw_transport: Any) -> Any: ...


class UpstreamTransportSocketFactory(Protocol):
    def upstream_protocol(
        self,
        connection: Any,
        on_connected: Callable[[], None],
        on_failed: Callable[[Any], None],
        server_name: str | None,
        host: Any,
    ) -> Any: ...

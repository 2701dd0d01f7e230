"""``envoy.transport_sockets.raw_buffer``: plaintext, Envoy's default transport socket.

Its factory gives None: a connection without a transport socket reads and writes its
asyncio transport directly (see network/transport_socket.py).
"""

from __future__ import annotations

from legatus.registry import Category, Extension, Registry

NAME = "envoy.transport_sockets.raw_buffer"
CONFIG_TYPE = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"


def _factory(_proto, _context, _path) -> None:
    return None


def register(registry: Registry) -> None:
    for category in (Category.TRANSPORT_SOCKET_DOWNSTREAM, Category.TRANSPORT_SOCKET_UPSTREAM):
        registry.register(
            Extension(
                category=category,
                name=NAME,
                config_types=(CONFIG_TYPE,),
                factory=_factory,
                aliases=("raw_buffer",),
            )
        )

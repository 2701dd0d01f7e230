"""Addresses from ``envoy.config.core.v3.Address`` and their Envoy renderings."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from legatus.config.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SocketAddress:
    host: str  # IP literal, or a DNS name for clusters that resolve it
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        """``127.0.0.1:80`` / ``[::1]:80``, as Envoy prints addresses."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stat_name(self) -> str:
        """The listener stat-scope form: ``127.0.0.1_80``, ``[__1]_80``."""
        return str(self).replace(":", "_")

    def as_tuple(self) -> tuple[str, int]:
        return (self.host, self.port)


def from_proto(address, path: str, *, resolve_names: bool = False) -> SocketAddress:
    """A SocketAddress from an Address proto. Listeners need IP literals (as Envoy)."""
    which = address.WhichOneof("address")
    if which != "socket_address":
        raise ConfigError(
            f"{path}.{which or 'address'}",
            f"{which or 'an empty'} address is not supported yet; use socket_address",
        )
    sa = address.socket_address
    if sa.protocol != 0:
        raise ConfigError(f"{path}.socket_address.protocol", "UDP sockets are not supported yet")
    if sa.WhichOneof("port_specifier") == "named_port":
        raise ConfigError(f"{path}.socket_address.named_port", "named_port is not supported")
    if sa.resolver_name:
        raise ConfigError(
            f"{path}.socket_address.resolver_name", "custom resolvers are not supported"
        )
    host = sa.address
    try:
        ip = ipaddress.ip_address(host)
        host = str(ip)
    except ValueError:
        if not resolve_names:
            raise ConfigError(
                f"{path}.socket_address.address", f"malformed IP address: {sa.address}"
            ) from None
    return SocketAddress(host, sa.port_value)


_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


def is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Envoy's ``Network::Utility::isLoopbackAddress``: exactly 127.0.0.1 or ::1. Not the whole
    127.0.0.0/8 that ``ipaddress`` calls loopback: a peer at 127.0.0.2 is appended to
    x-forwarded-for as itself, where one at 127.0.0.1 is replaced by the node's address."""
    return ip in (_LOOPBACK_V4, _LOOPBACK_V6)

"""What an RBAC policy looks at: one request or connection, addresses parsed once."""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

Address = tuple[Any, int]  # (ipaddress.IPv4Address | IPv6Address | None, port)
_NONE: Address = (None, 0)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str | None) -> Address:
    """``ip:port`` / ``[ip]:port`` (StreamInfo's form) -> (ip address, port)."""
    if not text:
        return _NONE
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        return _NONE


class RbacRequest:
    """The inputs of an RBAC decision. ``headers`` is an empty map for a connection;
    ``path`` is None without a ``:path``; ``sni`` is the connection's requested server name,
    "" without one (Envoy's empty name); ``ssl`` its ``SslConnectionInfo``, None without
    TLS."""

    __slots__ = ("direct_remote", "headers", "local", "path", "remote", "sni", "source", "ssl")

    def __init__(
        self,
        *,
        headers: Any,
        path: str | None,
        local: str | None,
        source: str | None,
        direct_remote: str | None,
        remote: str | None,
        sni: str = "",
        ssl: Any = None,
    ) -> None:
        self.headers = headers
        self.path = path
        self.local = parse_address(local)
        self.source = parse_address(source)  # the connection's peer (source_ip)
        self.direct_remote = parse_address(direct_remote)
        self.remote = parse_address(remote)  # after x-forwarded-for, for HTTP
        self.sni = sni
        self.ssl = ssl

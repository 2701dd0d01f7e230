"""``envoy.config.core.v3.CidrRange`` compiled into an ``ipaddress`` network."""

from __future__ import annotations

import ipaddress

from legatus.config.errors import ConfigError, join_path


def compile_cidr_range(proto, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The range at ``path`` (host bits allowed, as Envoy's CidrRange takes them); a
    malformed ``address_prefix`` is a ConfigError naming it."""
    prefix_len = proto.prefix_len.value if proto.HasField("prefix_len") else 0
    try:
        return ipaddress.ip_network(f"{proto.address_prefix}/{prefix_len}", strict=False)
    except ValueError as e:
        raise ConfigError(join_path(path, "address_prefix"), f"malformed IP range: {e}") from None

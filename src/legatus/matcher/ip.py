"""``envoy.extensions.matching.input_matchers.ip.v3.Ip``: an input matcher that holds when
the input is an IP address inside one of ``cidr_ranges`` (Envoy's IP input matcher).

An input that is not an IP address does not match and counts
``<stat_prefix>.ip_parsing_failed`` (a counter at the root of the stats, as in Envoy 1.40);
an absent input does not match and counts nothing. Ranges are kept per IP version and tried
in turn: the lists operators write are short, and a Python trie would not beat that.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from legatus.common.cidr import compile_cidr_range
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.stats.store import StatSet, counter

CONFIG_TYPE = "envoy.extensions.matching.input_matchers.ip.v3.Ip"


class IpMatcherStats(StatSet):
    ip_parsing_failed = counter()


def compile_ip_matcher(proto, path: str, store) -> Callable[[str], bool]:
    check_supported(proto, ("cidr_ranges", "stat_prefix"), path, "Ip")
    if not proto.cidr_ranges:
        raise ConfigError(join_path(path, "cidr_ranges"), "at least one CIDR range is required")
    if not proto.stat_prefix:
        raise ConfigError(join_path(path, "stat_prefix"), "a stat prefix is required")
    networks: dict[int, list] = {4: [], 6: []}
    for i, cidr in enumerate(proto.cidr_ranges):
        network = compile_cidr_range(cidr, f"{join_path(path, 'cidr_ranges')}[{i}]")
        networks[network.version].append(network)
    stats = IpMatcherStats(store.scope(f"{proto.stat_prefix}."))
    v4, v6 = tuple(networks[4]), tuple(networks[6])

    def matches(value: str) -> bool:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            stats.ip_parsing_failed.inc()
            return False
        return any(ip in network for network in (v4 if ip.version == 4 else v6))

    return matches

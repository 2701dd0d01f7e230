"""Choosing a listener's filter chain for a new connection, as Envoy does.

Envoy narrows the candidate chains one criterion at a time, in a fixed order:
destination port, destination IP, server name (SNI), transport protocol,
application protocols (ALPN), direct source IP, source type, source IP, source
port. At each step the chains that match the connection most specifically win
(an exact port over no port, the longest IP prefix, an exact server name over
the longest wildcard); chains that leave the criterion empty are used only when
no chain matches it specifically. There is no backtracking: if the winners of
one step all fail a later step, the connection gets the default chain (or none).

Server names are compared in lower case; ``*.example.com`` matches any name under
``example.com`` (``a.b.example.com`` too), the longest such wildcard first, as Envoy walks
them; other wildcards are refused. Two chains that would both take some connection are
refused, as Envoy refuses them ("overlapping matching rules").

Sans-I/O: ``FilterChainMatcher.match(ConnectionKey)`` -> chain or None.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from envoy.config.listener.v3 import listener_components_pb2

from legatus.config.errors import ConfigError
from legatus.config.supported import check_supported
from legatus.network.address import is_loopback

C = TypeVar("C")
FilterChainMatch = listener_components_pb2.FilterChainMatch
_SUPPORTED = frozenset(
    {
        "destination_port",
        "prefix_ranges",
        "direct_source_prefix_ranges",
        "source_type",
        "source_prefix_ranges",
        "source_ports",
        "server_names",
        "transport_protocol",
        "application_protocols",
    }
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionKey:
    """What a new connection offers to the matcher."""

    destination_ip: str
    destination_port: int
    source_ip: str
    source_port: int
    direct_source_ip: str = ""
    server_name: str = ""
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledMatch:
    destination_port: int | None
    prefix_ranges: tuple[Network, ...]
    server_names: tuple[str, ...]
    transport_protocol: str
    application_protocols: tuple[str, ...]
    direct_source_prefix_ranges: tuple[Network, ...]
    source_type: int
    source_prefix_ranges: tuple[Network, ...]
    source_ports: tuple[int, ...]


def _cidrs(ranges, path: str) -> tuple[Network, ...]:
    out = []
    for i, r in enumerate(ranges):
        try:
            plen = r.prefix_len.value if r.HasField("prefix_len") else None
            ip = ipaddress.ip_address(r.address_prefix)
            if plen is None:
                plen = ip.max_prefixlen
            out.append(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
        except ValueError as e:
            raise ConfigError(f"{path}[{i}]", f"malformed CIDR range: {e}") from None
    return tuple(out)


def compile_match(proto: FilterChainMatch, path: str, listener: str = "") -> CompiledMatch:
    """``listener``: the listener's address, for Envoy's "error adding listener" messages."""
    check_supported(proto, _SUPPORTED, path, "FilterChainMatch")
    for i, name in enumerate(proto.server_names):
        if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
            raise ConfigError(
                f"{path}.server_names[{i}]",
                f"error adding listener '{listener}': partial wildcards are not supported in "
                '"server_names"',
            )
    return CompiledMatch(
        destination_port=proto.destination_port.value
        if proto.HasField("destination_port")
        else None,
        prefix_ranges=_cidrs(proto.prefix_ranges, f"{path}.prefix_ranges"),
        server_names=tuple(n.lower() for n in proto.server_names),
        transport_protocol=proto.transport_protocol,
        application_protocols=tuple(proto.application_protocols),
        direct_source_prefix_ranges=_cidrs(
            proto.direct_source_prefix_ranges, f"{path}.direct_source_prefix_ranges"
        ),
        source_type=proto.source_type,
        source_prefix_ranges=_cidrs(proto.source_prefix_ranges, f"{path}.source_prefix_ranges"),
        source_ports=tuple(proto.source_ports),
    )


def _duplicate_key(m: CompiledMatch) -> tuple:
    return (
        m.destination_port,
        frozenset(m.prefix_ranges),
        frozenset(m.server_names),
        m.transport_protocol,
        frozenset(m.application_protocols),
        frozenset(m.direct_source_prefix_ranges),
        m.source_type,
        frozenset(m.source_prefix_ranges),
        frozenset(m.source_ports),
    )


def _longest_prefix(ranges: tuple[Network, ...], ip) -> int:
    """-1: the chain does not say; -2: it says and does not match; else the prefix length."""
    if not ranges:
        return -1
    best = -2
    for net in ranges:
        if ip.version == net.version and ip in net and net.prefixlen > best:
            best = net.prefixlen
    return best


def _server_name_score(names: tuple[str, ...], sni: str) -> int:
    if not names:
        return -1
    best = -2
    for n in names:
        if n == sni:
            return 1 << 16  # exact beats any wildcard
        if n.startswith("*.") and sni.endswith(n[1:]) and len(n) > best:
            best = len(n)
    return best


_EMPTY_KEY = (
    None,
    frozenset(),
    frozenset(),
    "",
    frozenset(),
    frozenset(),
    0,
    frozenset(),
    frozenset(),
)
_SAME_IP_OR_LOOPBACK = FilterChainMatch.SAME_IP_OR_LOOPBACK
_EXTERNAL = FilterChainMatch.EXTERNAL


def _leaves(m: CompiledMatch) -> itertools.product:
    """Every combination of one value per criterion: the leaves of Envoy's match tree that
    this chain occupies (an empty list is the one "any" value)."""
    return itertools.product(
        (m.destination_port,),
        m.prefix_ranges or (None,),
        frozenset(m.server_names) or (None,),
        (m.transport_protocol,),
        frozenset(m.application_protocols) or (None,),
        m.direct_source_prefix_ranges or (None,),
        (m.source_type,),
        m.source_prefix_ranges or (None,),
        m.source_ports or (None,),
    )


class FilterChainMatcher(Generic[C]):
    def __init__(
        self,
        chains: Sequence[tuple[CompiledMatch, C]],
        default: C | None,
        *,
        listener_path: str,
        listener: str = "",
        names: Sequence[str] = (),
        protos: Sequence[FilterChainMatch] = (),
    ) -> None:
        """``listener``, ``names`` and ``protos`` (the chains' names and match protos) make
        Envoy's messages for chains that clash."""
        seen: dict[tuple, int] = {}
        taken: set[tuple] = set()
        for i, (m, _) in enumerate(chains):
            # The same rules: the same proto, as Envoy compares them (before case folding).
            key = (
                protos[i].SerializeToString(deterministic=True)
                if i < len(protos)
                else _duplicate_key(m)
            )
            path = f"{listener_path}.filter_chains[{i}].filter_chain_match"
            if key in seen:
                j = seen[key]
                name = names[i] if i < len(names) else ""
                other = names[j] if j < len(names) else ""
                matcher = _match_json(protos[i]) if i < len(protos) else "{}"
                raise ConfigError(
                    path,
                    f"error adding listener '{listener}': filter chain '{name}' has the same "
                    f"matching rules defined as '{other}'. duplicate matcher is: {matcher}",
                )
            seen[key] = i
            for leaf in _leaves(m):
                if leaf in taken:
                    raise ConfigError(
                        path,
                        f"error adding listener '{listener}': multiple filter chains with "
                        "overlapping matching rules are defined",
                    )
                taken.add(leaf)
        self._chains = tuple(chains)
        self.default = default
        # The common case: one chain that matches everything. No per-connection work.
        self._only: C | None = None
        if len(chains) == 1 and _duplicate_key(chains[0][0]) == _EMPTY_KEY:
            self._only = chains[0][1]

    def chains(self) -> list[C]:
        """Every chain, the default one last (if any)."""
        out = [chain for _, chain in self._chains]
        if self.default is not None:
            out.append(self.default)
        return out

    def match(self, key: ConnectionKey) -> C | None:
        if self._only is not None:
            return self._only
        dst = ipaddress.ip_address(key.destination_ip)
        src = ipaddress.ip_address(key.source_ip)
        direct = ipaddress.ip_address(key.direct_source_ip) if key.direct_source_ip else src
        alpn = key.application_protocols
        sni = key.server_name.lower()
        steps: tuple[Callable[[CompiledMatch], int], ...] = (
            lambda m: (
                -1
                if m.destination_port is None
                else (0 if m.destination_port == key.destination_port else -2)
            ),
            lambda m: _longest_prefix(m.prefix_ranges, dst),
            lambda m: _server_name_score(m.server_names, sni),
            lambda m: (
                -1
                if not m.transport_protocol
                else (0 if m.transport_protocol == key.transport_protocol else -2)
            ),
            lambda m: (
                -1
                if not m.application_protocols
                else (0 if any(p in m.application_protocols for p in alpn) else -2)
            ),
            lambda m: _longest_prefix(m.direct_source_prefix_ranges, direct),
            lambda m: _source_type_score(m.source_type, src, dst),
            lambda m: _longest_prefix(m.source_prefix_ranges, src),
            lambda m: (
                -1 if not m.source_ports else (0 if key.source_port in m.source_ports else -2)
            ),
        )
        candidates = self._chains
        for score in steps:
            if not candidates:
                break
            scored = [(score(m), (m, c)) for m, c in candidates]
            best = max(s for s, _ in scored)
            if best == -2:
                candidates = ()
                break
            candidates = tuple(mc for s, mc in scored if s == best)
        if candidates:
            return candidates[0][1]
        return self.default


def _match_json(proto: FilterChainMatch) -> str:
    import json

    from google.protobuf import json_format

    return json.dumps(
        json_format.MessageToDict(proto, preserving_proto_field_name=True),
        separators=(",", ":"),
    )


def _source_type_score(source_type: int, src, dst) -> int:
    if source_type == FilterChainMatch.ANY:
        return -1
    local = is_loopback(src) or src == dst  # Envoy's isSameIpOrLoopback: 127.0.0.1, ::1
    if source_type == _SAME_IP_OR_LOOPBACK:
        return 0 if local else -2
    if source_type == _EXTERNAL:
        return 0 if not local else -2
    return -2

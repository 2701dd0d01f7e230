"""``envoy.http.original_ip_detection.xff``: the client is read from ``x-forwarded-for``.

Without ``xff_trusted_cidrs`` it is what a connection manager without extensions does: the
address ``xff_num_trusted_hops`` entries from the right, trusted (for the internal decision)
only when the header has that one entry. With ``xff_trusted_cidrs`` (checked against Envoy
1.40, whose protos here have no ``recurse``: it always walks):

- a peer outside the ranges is no detection, and the peer is appended to the header;
- from a trusted peer, the header is walked from the right past the trusted addresses: the
  first other one is the client; if all are trusted, the leftmost; an entry that is no IP
  ends the walk with no detection; a single entry is trusted for the internal decision.

``skip_xff_append`` (default true): false appends the peer to the header after a detection
from a trusted peer too. Setting ``xff_num_trusted_hops`` and ``xff_trusted_cidrs`` together
is Envoy's error. A range whose address does not parse is left out and a prefix length
past the address's bits taken as all of them, as Envoy's CidrRange does.
"""

from __future__ import annotations

import ipaddress

from legatus.config.errors import ConfigError
from legatus.config.supported import check_supported
from legatus.http.original_ip_detection import NOT_DETECTED, Detection, parse_ip
from legatus.registry import Category, Registry, extension

NAME = "envoy.http.original_ip_detection.xff"
CONFIG_TYPE = "envoy.extensions.http.original_ip_detection.xff.v3.XffConfig"
_SUPPORTED = ("xff_num_trusted_hops", "xff_trusted_cidrs", "skip_xff_append")
_UNTRUSTED_PEER = Detection(None, skip_xff_append=False)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class XffIpDetection:
    """One configured extension: immutable, shared by every request."""

    __slots__ = ("_no_address", "hops", "skip_xff_append", "trusted_cidrs")

    def __init__(
        self, *, hops: int = 0, trusted_cidrs: tuple[Network, ...] = (), skip_xff_append: bool
    ) -> None:
        self.hops = hops
        self.trusted_cidrs = trusted_cidrs
        self.skip_xff_append = skip_xff_append
        self._no_address = NOT_DETECTED if skip_xff_append else Detection(
            None, skip_xff_append=False
        )  # fmt: skip

    def detect(self, headers, peer) -> Detection:
        cidrs = self.trusted_cidrs
        if cidrs and (peer is None or not any(peer in cidr for cidr in cidrs)):
            return _UNTRUSTED_PEER
        xff = headers.get("x-forwarded-for")
        if xff is None:
            return self._no_address
        if cidrs:
            address, trusted = _last_untrusted(xff, cidrs)
        else:
            address, trusted = _last_address(xff, self.hops)
        if address is None:
            return self._no_address
        return Detection(address, trusted, None, self.skip_xff_append)


def _last_address(xff: str, skip: int):
    """The address ``skip`` entries from the right, and whether it is the only entry (Envoy's
    getLastAddressFromXFF, as a connection manager without extensions reads it)."""
    for _ in range(skip):
        comma = xff.rfind(",")
        if comma < 0:
            return None, False
        xff = xff[:comma]
    comma = xff.rfind(",")
    if comma >= 0 and comma + 1 < len(xff):
        xff = xff[comma + 1 :]
    return parse_ip(xff.strip(" \t")), comma < 0 and skip == 0


def _last_untrusted(xff: str, cidrs: tuple[Network, ...]):
    """The rightmost entry outside ``cidrs`` (the leftmost if all are inside), and whether
    the header has that one entry."""
    entries = xff.split(",")
    single = len(entries) == 1
    address = None
    for entry in reversed(entries):
        address = parse_ip(entry.strip(" \t"))
        if address is None:
            return None, False
        if not any(address in cidr for cidr in cidrs):
            return address, single
    return address, single


def _cidr(proto) -> Network | None:
    """Envoy's CidrRange::create for a trusted range: None when the address does not parse; a
    prefix length past the address's bits is all of them."""
    address = parse_ip(proto.address_prefix)
    if address is None:
        return None
    length = proto.prefix_len.value if proto.HasField("prefix_len") else 0
    return ipaddress.ip_network((address, min(length, address.max_prefixlen)), strict=False)


def _factory(config, _context, path: str) -> XffIpDetection:
    check_supported(config, _SUPPORTED, path, "XffConfig")
    if config.HasField("xff_trusted_cidrs") and config.xff_num_trusted_hops > 0:
        raise ConfigError(path, "Cannot set both xff_num_trusted_hops and xff_trusted_cidrs")
    cidrs = tuple(
        network
        for network in (_cidr(c) for c in config.xff_trusted_cidrs.cidrs)
        if network is not None
    )
    skip = not config.HasField("skip_xff_append") or config.skip_xff_append.value
    return XffIpDetection(
        hops=config.xff_num_trusted_hops, trusted_cidrs=cidrs, skip_xff_append=skip
    )


def register(registry: Registry) -> None:
    registry.register(extension(Category.ORIGINAL_IP_DETECTION, NAME, CONFIG_TYPE, _factory))

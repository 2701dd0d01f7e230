"""Original IP detection: how a connection manager finds the client behind its peer
(``original_ip_detection_extensions``, Envoy's ``envoy.http.original_ip_detection``).

An extension (extensions/http/original_ip_detection/) is an object with
``detect(headers, peer) -> Detection`` (``peer``: the connection's remote IP, None for a unix
socket). The connection manager asks its extensions in order, as Envoy does
(conn_manager_utility.mutate_request_headers):

- a result that rejects ends the request with its status (``rejecting_because_detection_failed``,
  an empty body, no response flag; the connection stays open);
- each result that does not skip the append adds the peer to ``x-forwarded-for`` at once
  (the node's address for a loopback peer, as ``use_remote_address`` does), success or not;
- the first address found is the client (``%DOWNSTREAM_REMOTE_ADDRESS%`` ``ip:0``), and may
  make the request internal only when its extension trusts it
  (``allow_trusted_address_checks``).

With no address found the client is the peer, never trusted. The extensions replace
``use_remote_address`` and ``xff_num_trusted_hops``: Envoy refuses a connection manager that
sets either with them, with the messages of ``check_compatible``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from legatus.config.errors import ConfigError, join_path

Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Detection:
    """One extension's answer (Envoy's OriginalIPDetectionResult)."""

    address: Ip | None  # the client found, or None
    allow_trusted_address_checks: bool = False
    reject_status: int | None = None  # reject the request with this status
    skip_xff_append: bool = True


NOT_DETECTED = Detection(None)


def parse_ip(text: str) -> Ip | None:
    """An IPv4 or IPv6 address as inet_pton reads it (Envoy's parseInternetAddressNoThrow)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return ipaddress.ip_address(packed)
    return None


def check_compatible(hcm, path: str) -> None:
    """Envoy's checks of the extensions against the connection manager's own XFF options."""
    if hcm.HasField("use_remote_address") and hcm.use_remote_address.value:
        raise ConfigError(
            join_path(path, "original_ip_detection_extensions"),
            "Original IP detection extensions and use_remote_address may not be mixed",
        )
    if hcm.xff_num_trusted_hops:
        raise ConfigError(
            join_path(path, "original_ip_detection_extensions"),
            "Original IP detection extensions and xff_num_trusted_hops may not be mixed",
        )

"""Request and response header mutation of the HTTP connection manager.

Envoy's ``ConnectionManagerUtility`` (source/common/http/conn_manager_utility.cc), checked
header by header against Envoy 1.40 (tests/differential/test_conn_manager_utility_envoy.py).
Theory of operation:

- ``compile_request_policy`` turns the HCM proto into an immutable ``HeaderPolicy`` once, at
  config time; it refuses the header fields legatus does not implement, by name.
- ``mutate_request_headers`` runs once per request, after the codec produced the headers and
  before the filter chain: hop-by-hop cleanup, x-forwarded-for / -proto / -port, the
  internal-or-external decision (x-envoy-internal), the x-envoy-* stripping of external
  requests, user agent, via, x-envoy-external-address and x-request-id. It returns the
  decision and the trusted client address for the stream info. A policy that neither trusts
  the peer (``use_remote_address``) nor adds a header of its own is ``plain`` (decided when
  compiled): its requests without x-forwarded-for take a short path of the same steps.
- ``mutate_response_headers`` runs once per response (upstream or local): hop-by-hop cleanup,
  x-request-id echo, via, date and server, and last the Proxy-Status entry of
  ``proxy_status_config`` (http/proxy_status.py).

The trust model (Envoy's): with ``use_remote_address`` the peer of the connection is the
client, unless ``xff_num_trusted_hops`` proxies in front of us appended to x-forwarded-for;
without it the client is taken from x-forwarded-for, ``xff_num_trusted_hops`` from the right.
With ``original_ip_detection_extensions`` (http/original_ip_detection.py) the extensions
find the client instead, and say whether it may be trusted; ``original_ip_rejection`` is
asked before the rest, for the extensions that reject a request. A request is internal only
when the client address came from a single-entry (or absent) x-forwarded-for (or a trusting
extension) and is in ``internal_address_config``. Unset, that list is empty in Envoy 1.40:
no address is internal by default (older Envoys took the RFC 1918 / RFC 4193 private ranges;
the ``explicit_internal_address_config`` change ended that).

Not here: the router's headers (x-envoy-expected-rq-timeout-ms, x-envoy-upstream-service-time,
x-envoy-attempt-count, :authority rewrites; ``update_authority`` below is for it), removal of
headers nominated by ``Connection`` (Envoy's HTTP/1 codec does it) and tracing's use of the
x-request-id trace bits (``use_request_id_for_trace_sampling`` is kept for the tracer).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import email.utils
import enum
import functools
import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field
from random import Random
from typing import Any, NamedTuple

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.http.forwarded_client_cert import XfccPolicy, compile_xfcc, mutate_xfcc
from legatus.http.headers import HeaderMap
from legatus.network.address import is_loopback

UUID_CONFIG = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"
_SANITIZE = XfccPolicy()  # the default: x-forwarded-client-cert removed

# HCM fields this module compiles (XFCC: see http/forwarded_client_cert.py).
HEADER_HCM_FIELDS: frozenset[str] = frozenset((
    "use_remote_address", "xff_num_trusted_hops", "skip_xff_append", "internal_address_config",
    "via", "generate_request_id", "preserve_external_request_id",
    "always_set_request_id_in_response", "request_id_extension", "server_name",
    "server_header_transformation", "scheme_header_transformation", "append_x_forwarded_port",
    "add_user_agent", "forward_client_cert_details", "set_current_client_cert_details",
    # Accepted and not acted on, as Envoy 1.40 (a not-implemented-hide field there): an IPv4
    # peer stays IPv4 in x-forwarded-for, x-envoy-external-address and the access log.
    "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
))  # fmt: skip

# Header-related HCM fields legatus does not implement yet: the HCM refuses them by name.
# (original_ip_detection_extensions and proxy_status_config are compiled by the HCM config,
# which passes them to compile_request_policy.)
UNSUPPORTED_HCM_FIELDS: tuple[str, ...] = (
    "early_header_mutation_extensions", "forward_client_cert_matcher",
    "add_proxy_protocol_connection_state",
)  # fmt: skip

# x-envoy-* request headers Envoy removes from every external request...
_EXTERNAL_STRIP = frozenset((
    "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
    "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms", "x-envoy-force-trace", "x-envoy-ip-tags",
    "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
))  # fmt: skip
# ...and these too when we are the edge (use_remote_address and external).
_EDGE_STRIP = frozenset((
    "x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node", "x-envoy-original-path", "x-envoy-original-host",
))  # fmt: skip
_EDGE_AND_EXTERNAL_STRIP = _EDGE_STRIP | _EXTERNAL_STRIP
_UPGRADE_HOP_BY_HOP = frozenset(("connection", "upgrade"))  # kept for an upgrade only
# Removed from every request and response (none is set back later, so one call removes them
# with the two above when the message is no upgrade).
_REQUEST_HOP_BY_HOP = frozenset(
    ("x-envoy-internal", "keep-alive", "proxy-connection", "transfer-encoding")
)
_RESPONSE_HOP_BY_HOP = frozenset(("transfer-encoding", "keep-alive", "proxy-connection"))
_REQUEST_HOP_BY_HOP_ALL = _UPGRADE_HOP_BY_HOP | _REQUEST_HOP_BY_HOP
_RESPONSE_HOP_BY_HOP_ALL = _UPGRADE_HOP_BY_HOP | _RESPONSE_HOP_BY_HOP
# Position 14 of a UUID (its version digit) carries the trace reason; '4' is "not traced".
_TRACE_BYTE = 14


class ServerHeaderTransformation(enum.IntEnum):
    OVERWRITE = 0
    APPEND_IF_ABSENT = 1
    PASS_THROUGH = 2


# Globals: reading an enum member through its class runs Python code in 3.11.
_OVERWRITE = ServerHeaderTransformation.OVERWRITE
_APPEND_IF_ABSENT = ServerHeaderTransformation.APPEND_IF_ABSENT


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderPolicy:
    """What the HCM does to request and response headers; compiled once per HCM config."""

    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    skip_xff_append: bool = False
    local_address: str = "127.0.0.1"  # the node's address: what XFF gets for a loopback peer
    internal_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    unix_sockets_internal: bool = False
    via: str = ""
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    pack_trace_reason: bool = True
    use_request_id_for_trace_sampling: bool = True
    server_name: str = "envoy"
    server_header_transformation: ServerHeaderTransformation = ServerHeaderTransformation.OVERWRITE
    scheme_to_overwrite: str | None = None
    append_x_forwarded_port: bool = False
    user_agent: str | None = None  # add_user_agent: the service cluster
    service_node: str = ""
    xfcc: XfccPolicy = _SANITIZE  # forward_client_cert_details and its details
    # original_ip_detection_extensions, in order (http/original_ip_detection.py).
    original_ip_detection: tuple[Any, ...] = ()
    proxy_status: Any = None  # proxy_status_config: a ProxyStatusConfig (http/proxy_status.py)
    # Derived: no use_remote_address, no original IP detection and no header of its own to
    # add or overwrite (port, scheme, user agent, via). A request without x-forwarded-for then
    # takes the short path of ``mutate_request_headers``: external, its client the peer.
    plain: bool = field(init=False, repr=False, compare=False)
    # Derived: a response gets a header of the policy's own at its end (via, Proxy-Status).
    response_extras: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = not (
            self.use_remote_address
            or self.append_x_forwarded_port
            or self.scheme_to_overwrite is not None
            or self.user_agent is not None
            or self.via
            or self.original_ip_detection
        )
        object.__setattr__(self, "plain", plain)
        object.__setattr__(self, "response_extras", bool(self.via or self.proxy_status))


class MutateResult(NamedTuple):
    """What ``mutate_request_headers`` decided (one per request)."""

    internal: bool  # x-envoy-internal: true was set
    edge: bool  # external and use_remote_address: we are the trust boundary
    # The client, for the stream info ("ip:port"; addresses from XFF have port 0).
    final_remote_address: str


# Builds a MutateResult in C: the named tuple's own __new__ is a Python function.
_new_tuple = tuple.__new__


def compile_request_policy(
    hcm,
    path: str,
    *,
    local_address_ip_version: str = "v4",
    service_cluster: str = "",
    service_node: str = "",
    original_ip_detection: tuple = (),
    proxy_status=None,
) -> HeaderPolicy:
    """Compile the header fields of an ``HttpConnectionManager`` proto (``path``: where it is).

    ``original_ip_detection`` (the extensions, made by the HCM config through the registry)
    and ``proxy_status`` (a compiled ProxyStatusConfig) join the policy as they are."""
    set_fields = {field.name for field, _ in hcm.ListFields()}
    for name in UNSUPPORTED_HCM_FIELDS:
        if name in set_fields:
            raise ConfigError(
                join_path(path, name),
                f"field '{name}' of HttpConnectionManager is not supported by legatus yet",
            )
    networks: list = []
    unix_sockets = False
    if hcm.HasField("internal_address_config"):
        iac = hcm.internal_address_config
        iac_path = join_path(path, "internal_address_config")
        check_supported(iac, ("unix_sockets", "cidr_ranges"), iac_path)
        unix_sockets = iac.unix_sockets
        for i, cidr in enumerate(iac.cidr_ranges):
            prefix_len = cidr.prefix_len.value if cidr.HasField("prefix_len") else 0
            try:
                networks.append(
                    ipaddress.ip_network(f"{cidr.address_prefix}/{prefix_len}", strict=False)
                )
            except ValueError:
                raise ConfigError(
                    f"{iac_path}.cidr_ranges[{i}]",
                    f"malformed IP address: {cidr.address_prefix}/{prefix_len}",
                ) from None
    pack_trace_reason = sampling = True
    if hcm.HasField("request_id_extension"):
        pack_trace_reason, sampling = _uuid_config(
            hcm.request_id_extension, join_path(path, "request_id_extension")
        )
    scheme = None
    if hcm.HasField("scheme_header_transformation"):
        sht = hcm.scheme_header_transformation
        check_supported(
            sht, ("scheme_to_overwrite",), join_path(path, "scheme_header_transformation")
        )
        scheme = sht.scheme_to_overwrite or None
    xfcc = compile_xfcc(hcm, path)
    add_user_agent = hcm.HasField("add_user_agent") and hcm.add_user_agent.value
    return HeaderPolicy(
        use_remote_address=hcm.HasField("use_remote_address") and hcm.use_remote_address.value,
        xff_num_trusted_hops=hcm.xff_num_trusted_hops,
        skip_xff_append=hcm.skip_xff_append,
        local_address=node_local_address(local_address_ip_version),
        internal_networks=tuple(networks),
        unix_sockets_internal=unix_sockets,
        via=hcm.via,
        generate_request_id=(
            not hcm.HasField("generate_request_id") or hcm.generate_request_id.value
        ),
        preserve_external_request_id=hcm.preserve_external_request_id,
        always_set_request_id_in_response=hcm.always_set_request_id_in_response,
        pack_trace_reason=pack_trace_reason,
        use_request_id_for_trace_sampling=sampling,
        server_name=hcm.server_name or "envoy",
        server_header_transformation=ServerHeaderTransformation(hcm.server_header_transformation),
        scheme_to_overwrite=scheme,
        append_x_forwarded_port=hcm.append_x_forwarded_port,
        user_agent=service_cluster if add_user_agent else None,
        service_node=service_node,
        xfcc=xfcc,
        original_ip_detection=tuple(original_ip_detection),
        proxy_status=proxy_status,
    )


def _uuid_config(extension, path: str) -> tuple[bool, bool]:
    from envoy.extensions.request_id.uuid.v3 import uuid_pb2

    check_supported(extension, ("typed_config",), path, "RequestIDExtension")
    any_ = extension.typed_config
    full_name = any_.type_url.rpartition("/")[2]
    if full_name != UUID_CONFIG:
        raise ConfigError(
            join_path(path, "typed_config"),
            f"request ID extension '{full_name or 'unset'}' is not supported by legatus yet "
            f"(only {UUID_CONFIG})",
        )
    config = uuid_pb2.UuidRequestIdConfig()
    any_.Unpack(config)
    pack = not config.HasField("pack_trace_reason") or config.pack_trace_reason.value
    sampling = (
        not config.HasField("use_request_id_for_trace_sampling")
        or config.use_request_id_for_trace_sampling.value
    )
    return pack, sampling


# Requests -----------------------------------------------------------------------------


def mutate_request_headers(
    policy: HeaderPolicy,
    headers: HeaderMap,
    *,
    remote_address: str,
    direct_remote_address: str | None = None,
    local_address: str | None = None,
    is_tls: bool = False,
    ssl: Any = None,
    random: Random,
    internal_only_headers: tuple[str, ...] = (),
) -> MutateResult:
    """Envoy's request mutation, in Envoy's order. Never raises on traffic.

    ``remote_address`` is the connection's peer after listener filters (proxy protocol);
    ``direct_remote_address`` the socket's peer (not used by these rules, as in Envoy);
    ``local_address`` the connection's local address (its port is x-forwarded-port);
    ``random`` a ``random.Random`` for x-request-id; ``internal_only_headers`` the route
    configuration's list, stripped from external requests. Addresses are ``ip:port``,
    ``[ip6]:port`` or a unix socket path.
    """
    if "upgrade" in headers and is_upgrade(headers):
        headers.remove_all(_REQUEST_HOP_BY_HOP)
    else:
        if not _REQUEST_HOP_BY_HOP_ALL.isdisjoint(headers):  # (mostly none: no call)
            headers.remove_all(_REQUEST_HOP_BY_HOP_ALL)
        if "te" in headers:
            _sanitize_te(headers)
    if "referer" in headers:
        _sanitize_referer(headers)
    scheme = "https" if is_tls or ssl is not None else "http"

    if policy.plain and "x-forwarded-for" not in headers:
        # The common case, straight through: the steps below that apply when the request is
        # external, its client the peer, and the policy adds no header of its own.
        if "x-forwarded-proto" not in headers:
            headers.set("x-forwarded-proto", scheme)
        if ":scheme" not in headers:
            proto = headers.get("x-forwarded-proto", "")
            headers.set(":scheme", proto if proto.lower() in ("http", "https") else scheme)
        if not _EXTERNAL_STRIP.isdisjoint(headers):
            headers.remove_all(_EXTERNAL_STRIP)
        for name in internal_only_headers:
            headers.remove(name)
        if policy.generate_request_id and "x-request-id" not in headers:
            h = ((random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET).to_bytes(16).hex()
            headers.set("x-request-id", f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        if ssl is not None or "x-forwarded-client-cert" in headers:
            mutate_xfcc(policy.xfcc, headers, ssl)
        return _new_tuple(MutateResult, (False, False, remote_address))

    xff = _single_value(headers, "x-forwarded-for")
    hops = policy.xff_num_trusted_hops
    # The trusted client: an IP from x-forwarded-for, else the peer (None: a unix socket).
    final_ip: Ip | None = None
    from_xff = False
    peer: Ip | None = None
    peer_text = ""
    if policy.use_remote_address:
        trusted_checks = xff is None
        if hops > 0 and xff is not None:
            final_ip = _last_xff_address(xff, hops - 1)[0]
            from_xff = final_ip is not None
        peer, peer_loopback, peer_text = _peer_of(remote_address)
        if final_ip is None:
            final_ip = peer
        if not policy.skip_xff_append and peer is not None:
            appended = policy.local_address if peer_loopback else peer_text
            headers.set("x-forwarded-for", f"{xff},{appended}" if xff else appended)
        # A hop we do not trust cannot tell us the scheme or port: overwrite them.
        if hops == 0 or "x-forwarded-proto" not in headers:
            headers.set("x-forwarded-proto", scheme)
        if policy.append_x_forwarded_port and (hops == 0 or "x-forwarded-port" not in headers):
            _set_forwarded_port(headers, local_address)
    else:
        trusted_checks = False
        if policy.original_ip_detection:
            final_ip, trusted_checks = _detect_original_ip(policy, headers, remote_address)
            from_xff = final_ip is not None
        elif xff is not None:
            final_ip, trusted_checks = _last_xff_address(xff, hops)
            from_xff = final_ip is not None
    if "x-forwarded-proto" not in headers:
        headers.set("x-forwarded-proto", scheme)
    if policy.append_x_forwarded_port and "x-forwarded-port" not in headers:
        _set_forwarded_port(headers, local_address)
    if policy.scheme_to_overwrite is not None:
        headers.set(":scheme", policy.scheme_to_overwrite)
        headers.set("x-forwarded-proto", policy.scheme_to_overwrite)
    if ":scheme" not in headers:
        proto = headers.get("x-forwarded-proto", "")
        headers.set(":scheme", proto if proto.lower() in ("http", "https") else scheme)

    # Internal: a trusted address from an absent or single-entry x-forwarded-for, listed in
    # internal_address_config. Without use_remote_address and without XFF: external.
    if final_ip is not None:
        internal = (
            trusted_checks and bool(policy.internal_networks) and _is_internal(policy, final_ip)
        )
    else:
        internal = policy.use_remote_address and trusted_checks and policy.unix_sockets_internal
    edge = not internal and policy.use_remote_address
    if internal:
        headers.set("x-envoy-internal", "true")
    else:
        headers.remove_all(_EDGE_AND_EXTERNAL_STRIP if edge else _EXTERNAL_STRIP)
        for name in internal_only_headers:
            headers.remove(name)

    if policy.user_agent is not None:
        headers.set("x-envoy-downstream-service-cluster", policy.user_agent)
        if not headers.get("user-agent"):
            headers.set("user-agent", policy.user_agent)
        if policy.service_node:
            headers.set("x-envoy-downstream-service-node", policy.service_node)
    if policy.via:
        headers.append_value("via", policy.via, ", ")
    if edge and final_ip is not None:
        headers.set(
            "x-envoy-external-address", peer_text if final_ip is peer else _ip_text(final_ip)
        )
    if policy.generate_request_id:
        _set_request_id(policy, headers, edge, random)
    if ssl is not None or "x-forwarded-client-cert" in headers:  # (a plaintext request
        mutate_xfcc(policy.xfcc, headers, ssl)  # without the header: nothing to do)

    if from_xff:
        final = f"[{_ip_text(final_ip)}]:0" if final_ip.version == 6 else f"{final_ip}:0"
    else:
        final = remote_address
    return _new_tuple(MutateResult, (internal, edge, final))


def _detect_original_ip(
    policy: HeaderPolicy, headers: HeaderMap, remote_address: str
) -> tuple[Ip | None, bool]:
    """The client the original IP detection extensions find, and whether it may be trusted
    (http/original_ip_detection.py): asked in order until one finds it, each that does not
    skip the append adding the peer to x-forwarded-for first. A rejection was answered
    before (``original_ip_rejection``)."""
    peer, peer_loopback, peer_text = _peer_of(remote_address)
    for extension in policy.original_ip_detection:
        result = extension.detect(headers, peer)
        if not result.skip_xff_append and peer is not None:
            appended = policy.local_address if peer_loopback else peer_text
            xff = headers.get("x-forwarded-for")
            headers.set("x-forwarded-for", f"{xff},{appended}" if xff else appended)
        if result.address is not None:
            return result.address, result.allow_trusted_address_checks
    return None, False


def original_ip_rejection(policy: HeaderPolicy, headers: HeaderMap, remote_address: str):
    """The status to reject the request with when the original IP detection extensions say
    so (an extension that rejects before one finds the client), else None. Asked before
    ``mutate_request_headers``, which then leaves the headers untouched: Envoy rejects the
    request before any of its header rules."""
    _single_value(headers, "x-forwarded-for")  # (joined, as the header rules read it)
    peer = _peer_of(remote_address)[0]
    for extension in policy.original_ip_detection:
        result = extension.detect(headers, peer)
        if result.reject_status is not None:
            return result.reject_status
        if result.address is not None:
            return None
    return None


def _set_forwarded_port(headers: HeaderMap, local_address: str | None) -> None:
    port = _port_of(local_address) if local_address else None
    if port is not None:
        headers.set("x-forwarded-port", port)


def _set_request_id(policy: HeaderPolicy, headers: HeaderMap, edge: bool, random: Random) -> None:
    current = headers.get("x-request-id")
    if current is None or (edge and not policy.preserve_external_request_id):
        headers.set("x-request-id", _uuid4_text(random.getrandbits(128)))
    elif edge and policy.pack_trace_reason and len(current) == 36:
        # A preserved external ID loses any trace reason it claims (Envoy: NotTraceable).
        headers.set("x-request-id", current[:_TRACE_BYTE] + "4" + current[_TRACE_BYTE + 1 :])


# The version (4) and variant (RFC 4122) bits, as uuid.UUID(version=4) sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def _uuid4_text(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))`` (lower-case 8-4-4-4-12, as Envoy writes its
    request IDs) without building a UUID object: it runs once per request (the request
    path spells it out inline)."""
    h = ((bits & _UUID4_CLEAR) | _UUID4_SET).to_bytes(16).hex()  # (faster than "%032x")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _sanitize_te(headers: HeaderMap) -> None:
    te = headers.get("te")
    if not te:
        return
    if any(part.strip(" \t") == "trailers" for part in te.split(",")):
        headers.set("te", "trailers")
    else:
        headers.remove("te")


# RFC 3986 characters of a query or fragment (pchar / "/" / "?"), for relative referers.
_REFERER_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%"
)
_ABSOLUTE_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)(#.*)?$", re.DOTALL)


def _sanitize_referer(headers: HeaderMap) -> None:
    values = headers.get_all("referer")
    if not values:
        return
    # Envoy's HTTP/1 codec joins a repeated referer with ","; then only the joined value counts.
    value = ",".join(values)
    if is_valid_referer(value):
        if len(values) > 1:
            headers.set("referer", value)
    else:
        headers.remove("referer")


def is_valid_referer(value: str) -> bool:
    """An absolute URL without fragment or userinfo, or a relative reference without fragment."""
    m = _ABSOLUTE_URL.match(value)
    if m is not None and m.group(2) and all(" " < c < "\x7f" for c in value):
        return len(m.group(4) or "#") == 1 and "@" not in m.group(2)  # "#" alone is no fragment
    seen_slash = False
    for c in value:
        if c == "/":
            seen_slash = True
        elif c == ":":
            if not seen_slash:  # the first segment of a relative path cannot hold ':'
                return False
        elif c not in _REFERER_CHARS:
            return False
    return True


def is_upgrade(headers: HeaderMap) -> bool:
    """Envoy's ``Utility::isUpgrade``: an upgrade header and an ``upgrade`` connection token."""
    if "upgrade" not in headers:
        return False
    connection = headers.get("connection")
    return connection is not None and any(
        token.strip().lower() == "upgrade" for token in connection.split(",")
    )


def update_authority(
    headers: HeaderMap, host: str, *, append_x_forwarded_host: bool, keep_original: bool = True
) -> None:
    """The router's host rewrite (route ``append_x_forwarded_host``): x-envoy-original-host
    (Envoy 1.40 sets it unless the router has ``suppress_envoy_headers``), x-forwarded-host
    appended with ",", then :authority. Checked against Envoy 1.40."""
    current = headers.get(":authority")
    if current:
        if keep_original:
            headers.set("x-envoy-original-host", current)
        if append_x_forwarded_host:
            headers.append_value("x-forwarded-host", current, ",")
    headers.set(":authority", host)


# Responses ----------------------------------------------------------------------------


def mutate_response_headers(
    policy: HeaderPolicy,
    response_headers: HeaderMap,
    request_headers: HeaderMap | None,
    *,
    date: str | None = None,
    info=None,
) -> None:
    """Hop-by-hop cleanup, x-request-id echo, via, then date (when given and absent) and
    server, for upstream responses and local replies alike; last the Proxy-Status entry of
    ``proxy_status_config`` for the stream (``info``, its StreamInfo) if its flags name one."""
    if (
        "upgrade" in response_headers
        and request_headers is not None
        and is_upgrade(request_headers)
        and is_upgrade(response_headers)
    ):
        if "transfer-encoding" not in response_headers and "content-length" not in response_headers:
            status = response_headers.get(":status", "")
            if not status.startswith("1"):
                response_headers.set("content-length", "0")
        response_headers.remove_all(_RESPONSE_HOP_BY_HOP)
    elif not _RESPONSE_HOP_BY_HOP_ALL.isdisjoint(response_headers):  # (mostly none: no call)
        response_headers.remove_all(_RESPONSE_HOP_BY_HOP_ALL)
    if date is not None and "date" not in response_headers:
        response_headers.set("date", date)
    transformation = policy.server_header_transformation
    if transformation is _OVERWRITE or (
        transformation is _APPEND_IF_ABSENT and "server" not in response_headers
    ):
        response_headers.set("server", policy.server_name)
    echo_id = policy.always_set_request_id_in_response
    if request_headers is not None and (echo_id or "x-envoy-force-trace" in request_headers):
        request_id = request_headers.get("x-request-id")
        if request_id is not None:
            response_headers.set("x-request-id", request_id)
    if policy.response_extras:
        if policy.via:
            response_headers.append_value("via", policy.via, ", ")
        proxy_status = policy.proxy_status
        if proxy_status is not None and info is not None and info.response_flags:
            value = proxy_status.header_value(info)
            if value is not None:
                response_headers.append_value("proxy-status", value, ", ")


_date_cache: list = [-1, ""]  # (second, text): one worker process, one event loop


def date_header(now: float | None = None) -> str:
    """The ``date`` header value (IMF-fixdate), formatted at most once per second.

    ``now`` is the wall-clock time (``time.time()`` when not given)."""
    second = int(time.time() if now is None else now)
    if second != _date_cache[0]:
        _date_cache[:] = [second, email.utils.formatdate(second, usegmt=True)]
    return _date_cache[1]


# Addresses ----------------------------------------------------------------------------

Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


def _single_value(headers: HeaderMap, name: str) -> str | None:
    """One value (a repeated header is joined with ',', as Envoy's codec does)."""
    if not headers.has_repeats:
        return headers.get(name)
    values = headers.get_all(name)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    joined = ",".join(values)
    headers.set(name, joined)
    return joined


def _last_xff_address(xff: str, skip: int) -> tuple[Ip | None, bool]:
    """Envoy's ``getLastAddressFromXFF``: (the address ``skip`` entries from the right, whether
    it is the only entry)."""
    for _ in range(skip):
        comma = xff.rfind(",")
        if comma < 0:
            return None, False
        xff = xff[:comma]
    comma = xff.rfind(",")
    if comma >= 0 and comma + 1 < len(xff):
        xff = xff[comma + 1 :]
    address = _parse_ip(xff.strip(" \t"))
    if address is None:
        return None, False
    return address, comma < 0 and skip == 0


def _parse_ip(text: str) -> Ip | None:
    """inet_pton's idea of an address (as Envoy's parseInternetAddressNoThrow)."""
    for family, factory in ((socket.AF_INET, ipaddress.IPv4Address), (socket.AF_INET6, None)):
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return factory(packed) if factory else ipaddress.IPv6Address(packed)
    return None


@functools.lru_cache(maxsize=4096)
def _ip_of(address: str) -> Ip | None:
    """The IP of an ``ip:port`` / ``[ip6]:port`` / bare address; None for a unix socket."""
    if address.startswith("["):
        return _parse_ip(address[1 : address.find("]")])
    if address.count(":") == 1:
        return _parse_ip(address.partition(":")[0])
    return _parse_ip(address)


@functools.lru_cache(maxsize=4096)
def _peer_of(address: str) -> tuple[Ip | None, bool, str]:
    """The peer's IP, whether it is loopback, and its text (per connection address: the
    ipaddress properties cost more than the lookup)."""
    ip = _ip_of(address)
    if ip is None:
        return None, False, ""
    return ip, is_loopback(ip), _ip_text(ip)


def _port_of(address: str) -> str | None:
    if address.startswith("[") or address.count(":") == 1:
        port = address.rpartition(":")[2]
        return port if port.isdigit() else None
    return None


def _ip_text(ip: Ip) -> str:
    if ip.version == 4:
        return str(ip)
    return socket.inet_ntop(socket.AF_INET6, ip.packed)  # "::ffff:1.2.3.4", as Envoy writes it


def _is_internal(policy: HeaderPolicy, ip: Ip) -> bool:
    return any(ip in network for network in policy.internal_networks)


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 26)]


class _Ifaddrs(ctypes.Structure):  # struct ifaddrs
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)), ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint), ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)), ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]  # fmt: skip


@functools.lru_cache(maxsize=2)
def node_local_address(ip_version: str = "v4") -> str:
    """Envoy's ``getLocalAddress``: the first non-loopback interface address of the family in
    getifaddrs order (``--local-address-ip-version``), else loopback. Read once, at config."""
    family = socket.AF_INET6 if ip_version == "v6" else socket.AF_INET
    fallback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return fallback
    try:
        node = head
        while node:
            entry = node.contents
            node = entry.ifa_next
            if not entry.ifa_addr or entry.ifa_addr.contents.sa_family != family:
                continue
            data = bytes(entry.ifa_addr.contents.sa_data)
            # sockaddr_in: port(2) addr(4); sockaddr_in6: port(2) flowinfo(4) addr(16).
            packed = data[2:6] if family == socket.AF_INET else data[6:22]
            ip = ipaddress.ip_address(packed)
            if not ip.is_loopback:
                return _ip_text(ip)
    finally:
        libc.freeifaddrs(head)
    return fallback

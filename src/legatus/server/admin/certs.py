"""``/certs``: the certificates of every TLS context, in Envoy's ``envoy.admin.v3.Certificates``.

One entry per TLS context: each listener filter chain with a DownstreamTlsContext (the
default chain included), then each cluster with an UpstreamTlsContext. An entry lists its
trust anchor (``ca_cert``: the first certificate of the trusted CA bundle) and its
certificates (``cert_chain``: each chain's leaf), with Envoy's fields: the file it came from
(``<inline>`` for inline bytes and for secrets from SDS files, whose files Envoy reads into
inline bytes), the serial in lower-case hex, the DNS, URI and IP SANs, whole days until it
expires, and its validity in RFC 3339.

The contexts are compiled from the running config, with the server's SDS secrets (their
current values), so a rotated SDS certificate shows at once.
"""

from __future__ import annotations

import datetime
from typing import Any

from envoy.admin.v3 import certs_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2

from legatus.server.admin.response import AdminResponse, Query, dumps, json_body, proto_dict

DOWNSTREAM = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def handle_certs(context: Any, _query: Query) -> AdminResponse:
    return json_body(dumps(proto_dict(certificates(context))))


def certificates(context: Any) -> certs_pb2.Certificates:
    """The certificates of every TLS context, listeners' filter chains first, then clusters.
    The TLS code (and ``cryptography``) is imported only when there is one: this also runs
    for ``server.days_until_first_cert_expiring`` in a proxy without TLS."""
    found: list[tuple[bool, Any]] = []  # (downstream, the context's proto)
    for listener in context.listeners():
        proto = listener.config
        chains = list(proto.filter_chains)
        if proto.HasField("default_filter_chain"):
            chains.append(proto.default_filter_chain)
        for chain in chains:
            tls = _unpack(chain.transport_socket, DOWNSTREAM, tls_pb2.DownstreamTlsContext)
            if tls is not None:
                found.append((True, tls))
    for cluster in context.clusters():
        proto = cluster.config
        if proto is None or not proto.HasField("transport_socket"):
            continue
        tls = _unpack(proto.transport_socket, UPSTREAM, tls_pb2.UpstreamTlsContext)
        if tls is not None:
            found.append((False, tls))
    out = certs_pb2.Certificates()
    if not found:
        return out
    from legatus.extensions.transport_sockets.tls.context_config import (
        compile_downstream,
        compile_upstream,
    )

    secrets = getattr(context, "secret_manager", None)
    # Whole seconds, as Envoy's ASN1 time of now: a certificate issued this second still has
    # all its days.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for downstream, tls in found:
        if downstream:
            common = _compiled(lambda tls=tls: compile_downstream(tls, "", secrets).common)
        else:
            common = _compiled(lambda tls=tls: compile_upstream(tls, "").common)
        if common is not None:
            _add(out, common, now)
    return out


def _unpack(transport_socket, type_name: str, cls):
    typed: any_pb2.Any = transport_socket.typed_config
    if typed.type_url.rsplit("/", 1)[-1] != type_name:
        return None
    message = cls()
    typed.Unpack(message)
    return message


def _compiled(compile_):
    """The compiled context; None when its files changed into something invalid since (an
    admin page, and the stats that use it, must not fail because of them)."""
    try:
        return compile_()
    except Exception:
        return None


def _add(out: certs_pb2.Certificates, common, now: datetime.datetime) -> None:
    entry = out.certificates.add()
    validation = common.validation
    if validation is not None and validation.ca_details is not None:
        _details(entry.ca_cert.add(), validation.ca_details, validation.ca_path, now)
    # A secret from an SDS file has its certificate read into inline bytes (chain_path is
    # then <inline>); a static secret and a pkcs12 bundle keep their file, as in Envoy.
    for certificate in common.certificates:
        _details(entry.cert_chain.add(), certificate.leaf, certificate.chain_path, now)


def _details(out: certs_pb2.CertificateDetails, cert, path: str, now) -> None:
    out.path = path or "<inline>"
    out.serial_number = cert.serial
    for name in cert.dns_sans:
        out.subject_alt_names.add(dns=name)
    for uri in cert.uri_sans:
        out.subject_alt_names.add(uri=uri)
    for ip in cert.ip_sans:
        out.subject_alt_names.add(ip_address=ip)
    out.days_until_expiration = max(0, int((cert.not_after - now).total_seconds() // 86400))
    out.valid_from.FromDatetime(cert.not_before)
    out.expiration_time.FromDatetime(cert.not_after)


NO_CERTIFICATES = 0xFFFFFFFF  # Envoy's server.days_until_first_cert_expiring without any


def days_until_first_cert_expiring(context: Any) -> int:
    """``server.days_until_first_cert_expiring``: the fewest days left of any certificate or
    trust anchor of any TLS context."""
    days = [
        int(d.days_until_expiration)
        for entry in certificates(context).certificates
        for d in (*entry.ca_cert, *entry.cert_chain)
    ]
    return min(days) if days else NO_CERTIFICATES

"""Envoy's ``ClientContextImpl``: one UpstreamTlsContext's ``ssl.SSLContext``, its stats and
its session cache.

Made per worker and per cluster. Without a validation context the upstream's certificate
is accepted unverified, as Envoy does; with one, OpenSSL verifies the chain and the SAN and
hash checks run after the handshake. Hostnames are not checked against the SNI (Envoy
checks SANs only when told to). Sessions are resumed as Envoy's ``max_session_keys``
(default 1) says: the last session is kept and offered by the next connection.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any

from legatus.extensions.transport_sockets.tls.cert_validator import SanMatcher, ValidationConfig
from legatus.extensions.transport_sockets.tls.context_config import ClientTlsConfig
from legatus.extensions.transport_sockets.tls.ssl_socket import SslSocket
from legatus.extensions.transport_sockets.tls.stats import HandshakeStats
from legatus.extensions.transport_sockets.tls.tls_params import apply_params
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails


def build_client_ssl_context(config: ClientTlsConfig) -> ssl.SSLContext:
    common = config.common
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    apply_params(ctx, common.params, common.params.ciphers.default_string)
    if not config.allow_renegotiation:
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if common.certificates:
        common.certificates[0].load_into(ctx)
    if common.alpn:
        ctx.set_alpn_protocols(list(common.alpn))
    validation = common.validation
    if validation is not None and validation.has_trust_anchor:
        validation.configure(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ClientContext:
    __slots__ = ("_by_sni", "_ctx", "_session", "config", "stats", "verifies_peer")

    def __init__(self, config: ClientTlsConfig, stats: HandshakeStats) -> None:
        self.config = config
        self.stats = stats
        validation = config.common.validation
        self.verifies_peer = validation is not None and validation.has_trust_anchor
        self._ctx = build_client_ssl_context(config)
        self._session: ssl.SSLSession | None = None
        self._by_sni: dict[str, ValidationConfig] = {}  # auto_sni_san_validation, per SNI

    def new_socket(self, server_name: str | None = None, host: Any = None) -> SslSocket:
        """``server_name``: an SNI chosen per request (the HTTP auto_sni), else the
        host's hostname (auto_host_sni), else the configured ``sni``."""
        sni = server_name
        if sni is None:
            hostname = getattr(getattr(host, "config", None), "hostname", "")
            sni = hostname if self.config.auto_host_sni and hostname else self.config.sni
        return SslSocket(self, server=False, server_name=sni)

    # SslSocket hooks -------------------------------------------------------------------

    def new_ssl_object(self, incoming, outgoing, server_name: str) -> ssl.SSLObject:
        return self._ctx.wrap_bio(
            incoming,
            outgoing,
            server_side=False,
            server_hostname=server_name or None,
            session=self._session,
        )

    def validation_for(self, server_name: str) -> ValidationConfig | None:
        """The validation for a connection: with auto_sni_san_validation, the configured
        SAN matchers give way to a DNS SAN matching the SNI sent (as Envoy's validator)."""
        validation = self.config.common.validation
        if not self.config.auto_sni_san_validation or not server_name or validation is None:
            return validation
        replaced = self._by_sni.get(server_name)
        if replaced is None:
            if len(self._by_sni) > 1024:
                self._by_sni.clear()
            replaced = self._by_sni[server_name] = dataclasses.replace(
                validation, san_matchers=(SanMatcher.for_dns_name(server_name),)
            )
        return replaced

    def local_certificate(self, _selected) -> CertificateDetails | None:
        certs = self.config.common.certificates
        return certs[0].leaf if certs else None

    def on_handshake(self, sock: SslSocket) -> None:
        self.remember_session(sock)

    def remember_session(self, sock: SslSocket) -> None:
        """Keep the connection's session for the next one (TLS 1.3 tickets arrive after the
        handshake, so this runs again when the connection closes)."""
        if self.config.max_session_keys <= 0:
            return
        obj = sock._obj
        if obj is None:
            return
        session = obj.session
        if session is not None and (session.has_ticket or obj.version() != "TLSv1.3"):
            self._session = session

"""Envoy's ``Ssl::ConnectionInfo``: what a TLS connection tells its filters and access logs.

A ``Connection`` carries it as ``connection.ssl`` once its handshake is done (None for a
plaintext connection, like Envoy's ``connection.ssl()``), and the stream info of a
downstream connection as ``downstream_ssl``. Certificate fields are parsed on first use.
"""

from __future__ import annotations

from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails


class SslConnectionInfo:
    __slots__ = (
        "alpn",
        "cipher",
        "local_certificate",
        "peer_certificate",
        "peer_certificate_validated",
        "server_name",
        "session_id",
        "session_reused",
        "version",
    )

    def __init__(
        self,
        *,
        version: str,
        cipher: str,
        alpn: str | None,
        server_name: str,
        session_id: str,
        session_reused: bool,
        peer_certificate: CertificateDetails | None,
        local_certificate: CertificateDetails | None,
        peer_certificate_validated: bool,
    ) -> None:
        self.version = version  # "TLSv1.3"
        self.cipher = cipher  # "TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"
        self.alpn = alpn  # the negotiated protocol, None without ALPN
        self.server_name = server_name  # SNI ("" without)
        self.session_id = session_id  # lower-case hex ("" without)
        self.session_reused = session_reused
        self.peer_certificate = peer_certificate
        self.local_certificate = local_certificate
        # The peer's chain verified against a trust anchor (Envoy's peerCertificateValidated).
        self.peer_certificate_validated = peer_certificate_validated

    @property
    def peer_certificate_presented(self) -> bool:
        return self.peer_certificate is not None

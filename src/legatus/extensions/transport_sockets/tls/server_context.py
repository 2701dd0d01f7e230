"""Envoy's ``ServerContextImpl``: one DownstreamTlsContext's ``ssl.SSLContext``s and stats.

Made per worker (SSL contexts and their session caches and ticket keys are per process).
One ``ssl.SSLContext`` per certificate and per ordering of the cipher list (see
``tls_params.CipherPolicy``), made on first use and kept: a connection picks one from its
ClientHello in ``select``, then OpenSSL does the rest.

A check made after OpenSSL completed a handshake (``max_verify_depth``) cannot keep the
session out of OpenSSL's session cache, and a TLS 1.2 client knows its session ID from the
ServerHello: the context remembers the sessions it rejected until they expire, and rejects
their resumption the same way.
"""

from __future__ import annotations

import ssl
import time

from legatus.extensions.transport_sockets.tls.context_config import ServerTlsConfig
from legatus.extensions.transport_sockets.tls.hello import ClientHello
from legatus.extensions.transport_sockets.tls.ssl_socket import SslSocket, require_sni_failure
from legatus.extensions.transport_sockets.tls.stats import HandshakeStats
from legatus.extensions.transport_sockets.tls.tls_params import apply_params
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails


def build_server_ssl_context(config: ServerTlsConfig, index: int, cipher_string: str):
    common = config.common
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_params(ctx, common.params, cipher_string)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if config.prefer_client_ciphers:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if config.disable_stateless_session_resumption:
        ctx.options |= ssl.OP_NO_TICKET
    common.certificates[index].load_into(ctx)
    if common.alpn:
        ctx.set_alpn_protocols(list(common.alpn))
    validation = common.validation
    if validation is not None and validation.has_trust_anchor:
        validation.configure(ctx)
        required = config.require_client_certificate or validation.requires_peer_certificate
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return ctx


class ServerContext:
    __slots__ = ("_contexts", "_rejected", "config", "stats", "verifies_peer")

    def __init__(self, config: ServerTlsConfig, stats: HandshakeStats) -> None:
        self.config = config
        self.stats = stats
        # Session ID -> (when it expires, in epoch seconds as OpenSSL's; the failure detail).
        self._rejected: dict[bytes, tuple[float, str]] = {}
        validation = config.common.validation
        self.verifies_peer = validation is not None and validation.has_trust_anchor
        self._contexts: dict[tuple[int, tuple[int, ...]], ssl.SSLContext] = {}
        policy = config.common.params.ciphers
        self._ssl_context(0, (0,) * len(policy.groups))  # the common case, made up front

    def _ssl_context(self, index: int, choice: tuple[int, ...]) -> ssl.SSLContext:
        key = (index, choice)
        ctx = self._contexts.get(key)
        if ctx is None:
            cipher_string = self.config.common.params.ciphers.orderings[choice]
            ctx = self._contexts[key] = build_server_ssl_context(self.config, index, cipher_string)
        return ctx

    def new_socket(self) -> SslSocket:
        return SslSocket(self, server=True)

    # SslSocket hooks -------------------------------------------------------------------

    def select(self, hello: ClientHello | None, incoming, outgoing):
        """The SSLObject for a connection whose first flight was ``hello`` (None: not a
        parseable ClientHello; OpenSSL will say what is wrong with it)."""
        config = self.config
        policy = config.common.params.ciphers
        if hello is None:
            index, choice = 0, (0,) * len(policy.groups)
        else:
            if config.require_sni and not hello.server_name:
                raise require_sni_failure()
            if hello.ocsp_requested:
                counters = self.stats.counters
                counters.ocsp_staple_requests.inc()
                counters.ocsp_staple_omitted.inc()
            index = config.choose_certificate(hello.server_name, hello.ecdsa_capable())
            choice = policy.choice_for(hello.cipher_suites)
        ctx = self._ssl_context(index, choice)
        return ctx.wrap_bio(incoming, outgoing, server_side=True), index

    def validation_for(self, _server_name: str):
        return self.config.common.validation

    def local_certificate(self, index) -> CertificateDetails | None:
        if index is None:
            return None
        return self.config.common.certificates[index].leaf

    def reject_session(self, session: ssl.SSLSession | None, detail: str) -> None:
        if session is None or not session.id:
            return
        now = time.time()
        rejected = self._rejected
        for sid in [sid for sid, (expiry, _) in rejected.items() if expiry <= now]:
            del rejected[sid]
        rejected[session.id] = (session.time + session.timeout, detail)

    def rejected_session(self, session: ssl.SSLSession | None) -> str | None:
        """The failure detail of a session this context rejected (None: not rejected)."""
        if session is None or not self._rejected:
            return None
        entry = self._rejected.get(session.id)
        return entry[1] if entry is not None else None

    def on_handshake(self, sock: SslSocket) -> None:
        """Nothing to keep: resumption state is the client context's (remember_session)."""

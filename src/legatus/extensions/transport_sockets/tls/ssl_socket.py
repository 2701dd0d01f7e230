"""The TLS layer of one connection, sans-I/O: Envoy's ``SslSocket`` over memory BIOs.

``SslSocket`` owns an ``ssl.SSLObject`` between two ``ssl.MemoryBIO``s: ciphertext goes in
with ``receive(data)`` (which returns the plaintext it decrypted), plaintext goes out with
``send(data)``, and ``outgoing()`` hands over the ciphertext to put on the wire. It never
touches a socket; ``transport.TlsTransport`` is the asyncio glue.

States (one transition function, ``_to``)::

    CLIENT_HELLO ──> HANDSHAKE ──> OPEN ──> SHUTDOWN_SENT
         │               │          │            │
         └───────────────┴──────────┴────────────┴──> FAILED

A server starts in CLIENT_HELLO: it collects the client's first flight until the
ClientHello is whole (``hello.ClientHelloParser``), so that the server context can choose
the certificate (by SNI and ECDSA support) and the cipher ordering (BoringSSL's
equal-preference groups) before OpenSSL sees a byte, as Envoy's certificate selection
callback does. A client starts in HANDSHAKE with its ClientHello already in ``outgoing()``.

At the end of the handshake the checks Envoy runs in its verify callback (SANs, pinned
hashes) run on the peer certificate, then the handshake is counted (Envoy's logHandshake:
``handshake``, ``session_reused``, ``ciphers.*``, ``versions.*``, ``curves.*``,
``no_certificate``) and ``info`` describes the connection. A failure raises ``TlsFailure``
from ``receive``: the state is FAILED, the failure is counted, and ``outgoing()`` holds any
alert OpenSSL produced; the caller sends it and closes.
"""

from __future__ import annotations

import contextlib
import enum
import ssl
from typing import Any

from legatus.extensions.transport_sockets.tls.cert_validator import verified_chain_length
from legatus.extensions.transport_sockets.tls.connection_info import SslConnectionInfo
from legatus.extensions.transport_sockets.tls.errors import (
    NO_CERT,
    VERIFY_ERROR,
    TlsFailure,
    failure_reason,
    from_ssl_error,
    post_handshake_failure,
)
from legatus.extensions.transport_sockets.tls.hello import (
    SIGNATURE_ALGORITHMS,
    ClientHelloParser,
    HandshakeReader,
    ParseState,
)
from legatus.extensions.transport_sockets.tls.tls_params import GROUP_NAMES
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails

_READ_SIZE = 65536
# A fatal unknown_ca alert record, in the clear, for each version that sends one in the clear
# before the server's Finished.
_UNKNOWN_CA = {
    version: bytes((21, 3, minor, 0, 2, 2, 48))
    for version, minor in (("TLSv1", 1), ("TLSv1.1", 2), ("TLSv1.2", 3))
}


class SslState(enum.Enum):
    CLIENT_HELLO = "client_hello"
    HANDSHAKE = "handshake"
    OPEN = "open"
    SHUTDOWN_SENT = "shutdown_sent"
    FAILED = "failed"


_S = SslState
_TRANSITIONS = {
    _S.CLIENT_HELLO: frozenset({_S.HANDSHAKE, _S.FAILED}),
    _S.HANDSHAKE: frozenset({_S.OPEN, _S.FAILED}),
    _S.OPEN: frozenset({_S.SHUTDOWN_SENT, _S.FAILED}),
    _S.SHUTDOWN_SENT: frozenset({_S.FAILED}),
    _S.FAILED: frozenset(),
}
_HANDSHAKE, _OPEN, _SHUTDOWN_SENT, _FAILED, _CLIENT_HELLO = (
    _S.HANDSHAKE, _S.OPEN, _S.SHUTDOWN_SENT, _S.FAILED, _S.CLIENT_HELLO
)  # fmt: skip
_WantRead = ssl.SSLWantReadError
_ZeroReturn = ssl.SSLZeroReturnError
_SSLError = ssl.SSLError


class SslSocket:
    """See the module docstring. ``context`` is a ``ServerContext`` or a ``ClientContext``
    (their ``new_session`` / ``on_handshake`` hooks); ``server_name`` is a client's SNI."""

    __slots__ = (
        "_context",
        "_hello",
        "_in",
        "_obj",
        "_out",
        "_queued",
        "_rx",
        "_selected",
        "_stashed",
        "_tx",
        "info",
        "peer_closed",
        "server",
        "server_name",
        "state",
    )  # fmt: skip

    def __init__(self, context: Any, *, server: bool, server_name: str = "") -> None:
        self._context = context
        self.server = server
        self.server_name = server_name
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._queued: list[bytes] = []  # plaintext sent before the handshake completed
        self._stashed: list[bytes] = []  # ciphertext read out of the BIO, not handed over yet
        # What the handshake shows in the clear, each way (the group, TLS 1.2's peer
        # certificates and signature algorithm): see hello.HandshakeReader.
        self._rx: HandshakeReader | None = HandshakeReader()
        self._tx: HandshakeReader | None = HandshakeReader() if server else None
        self._selected: Any = None  # the server's chosen certificate
        self.info: SslConnectionInfo | None = None
        self.peer_closed = False  # the peer's close_notify arrived
        self._obj: ssl.SSLObject | None = None
        if server:
            self.state = _CLIENT_HELLO
            self._hello: ClientHelloParser | None = ClientHelloParser()
        else:
            self.state = _HANDSHAKE
            self._hello = None
            self._obj = context.new_ssl_object(self._in, self._out, server_name)
            self._step_handshake()

    def _to(self, new: SslState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"TLS socket: {self.state.value} -> {new.value}")
        self.state = new

    # Bytes in ------------------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return the plaintext it completed (maybe b"")."""
        state = self.state
        if state is _OPEN or state is _SHUTDOWN_SENT:
            self._in.write(data)
            return self._read()
        if state is _CLIENT_HELLO:
            return self._on_client_hello_bytes(data)
        if state is _HANDSHAKE:
            self._in.write(data)
            rx = self._rx
            if rx is not None:
                rx.feed(data)
            if self._step_handshake():
                return self._read()
            return b""
        return b""

    def receive_eof(self) -> None:
        """The TCP peer closed. Before the handshake completes this fails the socket with no
        counted error (Envoy: a syscall EOF leaves the error queue empty)."""
        if self.state is _CLIENT_HELLO or self.state is _HANDSHAKE:
            self.state = _FAILED
            raise TlsFailure("", "eof")

    def _on_client_hello_bytes(self, data: bytes) -> bytes:
        parser = self._hello
        self._in.write(data)
        self._rx.feed(data)
        state = parser.feed(data)
        if state is ParseState.NEED_MORE:
            return b""
        self._hello = None
        hello = parser.hello if state is ParseState.DONE else None
        if hello is not None:
            self.server_name = hello.server_name
        context = self._context
        try:
            self._obj, self._selected = context.select(hello, self._in, self._out)
        except TlsFailure as failure:
            self._fail(failure)
        self._to(_HANDSHAKE)
        if self._step_handshake():
            return self._read()
        return b""

    def _step_handshake(self) -> bool:
        """Drive the handshake; True once it completed (and the socket is OPEN)."""
        try:
            self._obj.do_handshake()
        except _WantRead:
            return False
        except _SSLError as e:
            self._fail(from_ssl_error(e, self._peer_chain(), self._trusted()))
        self._on_handshake_done()
        return True

    def _peer_chain(self) -> tuple[bytes, ...]:
        rx = self._rx
        return rx.certificates if rx is not None else ()

    def _trusted(self) -> bytes:
        validation = self._context.validation_for(self.server_name)
        return validation.ca_pem if validation is not None else b""

    def _on_handshake_done(self) -> None:
        obj = self._obj
        context = self._context
        der = obj.getpeercert(binary_form=True)
        peer = CertificateDetails(der) if der else None
        if peer is not None:
            validation = context.validation_for(self.server_name)
            if validation is not None:
                if self.server and validation.max_intermediates is not None:
                    self._check_depth(obj, validation)
                detail = validation.verify_leaf(peer, context.stats.counters)
                if detail is not None:
                    self._fail(post_handshake_failure(detail))
        if self.server:
            self._stash_output()  # the reader sees what the server wrote so far
            group = self._tx.group
        else:
            group = self._rx.group
        sigalg = self._rx.signature_algorithm
        self._rx = self._tx = None
        session = obj.session
        info = self.info = SslConnectionInfo(
            version=obj.version() or "",
            cipher=(obj.cipher() or ("",))[0],
            alpn=obj.selected_alpn_protocol(),
            server_name=self.server_name,
            session_id=session.id.hex()
            if session is not None and obj.version() != "TLSv1.3"
            else "",
            session_reused=obj.session_reused,
            peer_certificate=peer,
            local_certificate=context.local_certificate(self._selected),
            peer_certificate_validated=peer is not None and context.verifies_peer,
        )
        stats = context.stats
        counters = stats.counters
        counters.handshake.inc()
        if info.session_reused:
            counters.session_reused.inc()
        stats.value("ciphers", info.cipher)
        stats.value("versions", info.version)
        if group is not None:
            stats.value("curves", GROUP_NAMES.get(group, "unknown_ssl_curve"))
        if sigalg is not None:
            stats.value("sigalgs", SIGNATURE_ALGORITHMS.get(sigalg, "unknown_ssl_algorithm"))
        if peer is None:
            counters.no_certificate.inc()
        self._to(_OPEN)
        context.on_handshake(self)
        queued, self._queued = self._queued, []
        for chunk in queued:
            obj.write(chunk)

    def _check_depth(self, obj: ssl.SSLObject, validation) -> None:
        """A server's ``max_verify_depth`` (see cert_validator): the verified chain's length,
        or, on a resumed session, the verdict on the handshake that made it."""
        context = self._context
        session = obj.session
        if obj.session_reused:
            detail = context.rejected_session(session)
        else:
            detail = validation.chain_too_deep(verified_chain_length(obj))
            if detail is not None and obj.version() != "TLSv1.3":  # 1.3 resumes by tickets
                context.reject_session(session, detail)
        if detail is not None:
            self._reject_verified(obj, detail)

    def _reject_verified(self, obj: ssl.SSLObject, detail: str) -> None:
        """Fail a handshake OpenSSL completed as Envoy fails it during the handshake: what
        OpenSSL wrote last (a TLS 1.2 server's Finished, TLS 1.3 session tickets) is dropped,
        and a TLS 1.2 (or older) client gets the fatal unknown_ca alert in its place, so
        that its own handshake fails; a TLS 1.3 client sees the connection close."""
        if self._out.pending:
            self._out.read()
        self._rx = self._tx = None
        alert = _UNKNOWN_CA.get(obj.version() or "")
        if alert is not None and not obj.session_reused:
            self._stashed = [alert]
        self._fail(TlsFailure(failure_reason(["CERTIFICATE_VERIFY_FAILED"], detail),
                              VERIFY_ERROR))  # fmt: skip

    def _read(self) -> bytes:
        obj, incoming = self._obj, self._in
        chunks: list[bytes] = []
        while True:
            try:
                chunk = obj.read(_READ_SIZE)
            except _WantRead:
                break
            except _ZeroReturn:
                self.peer_closed = True
                break
            except _SSLError as e:
                self._fail(from_ssl_error(e))
            if not chunk:  # SSL_read's clean end: the peer's close_notify
                self.peer_closed = True
                break
            chunks.append(chunk)
            if not incoming.pending and not obj.pending():
                break
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _fail(self, failure: TlsFailure) -> None:
        """Count ``failure`` (Envoy's drainErrorQueue) and raise it."""
        self.state = _FAILED
        counters = self._context.stats.counters
        counter = failure.counter
        if counter is None:
            counters.connection_error.inc()
        elif counter == NO_CERT:
            counters.fail_verify_no_cert.inc()
        elif counter == VERIFY_ERROR:
            counters.fail_verify_error.inc()
        raise failure

    # Bytes out -----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` (queued until the handshake completes)."""
        state = self.state
        if state is _OPEN:
            try:
                self._obj.write(data)
            except _SSLError as e:
                self._fail(from_ssl_error(e))
        elif state is _HANDSHAKE or state is _CLIENT_HELLO:
            self._queued.append(data)

    @property
    def queued_bytes(self) -> int:
        return sum(map(len, self._queued)) if self._queued else 0

    def shutdown(self) -> None:
        """Queue our close_notify (Envoy's shutdownSsl); reading may go on."""
        if self.state is not _OPEN:
            return
        self._to(_SHUTDOWN_SENT)
        with contextlib.suppress(_WantRead, _SSLError):
            self._obj.unwrap()

    def outgoing(self) -> bytes:
        if self._stashed:
            self._stash_output()
            data, self._stashed = b"".join(self._stashed), []
            return data
        out = self._out
        if not out.pending:
            return b""
        data = out.read()
        tx = self._tx
        if tx is not None:
            tx.feed(data)
        return data

    def _stash_output(self) -> None:
        out = self._out
        if out.pending:
            data = out.read()
            tx = self._tx
            if tx is not None:
                tx.feed(data)
            self._stashed.append(data)


def require_sni_failure() -> TlsFailure:
    """``require_sni`` and a ClientHello without SNI: BoringSSL's select-certificate
    callback fails the handshake (counted as connection_error)."""
    return TlsFailure(failure_reason(["CONNECTION_REJECTED"]))

"""Sans-I/O readers of the TLS handshake messages that travel in the clear.

``ClientHelloParser`` takes a connection's first bytes, in any slicing, and reports the
ClientHello's SNI, ALPN list, offered versions, cipher suites, signature algorithms, groups
and OCSP request, without consuming anything: the bytes it saw still go to the TLS stack
(or, when they are not TLS, to the plaintext chain). The TLS inspector listener filter uses
it to pick a filter chain; the server TLS socket uses it to pick the certificate and the
cipher ordering before OpenSSL sees the hello, which is where BoringSSL's certificate
selection callback runs in Envoy.

``HandshakeReader`` follows one direction of a handshake while it is in the clear and keeps
the key-exchange group, and in TLS 1.2 the peer's certificates and signature algorithm.
Envoy's ``ssl.curves.*`` and ``ssl.sigalgs.*`` come from BoringSSL calls (SSL_get_curve_id,
SSL_get_peer_signature_algorithm) that Python's ``ssl`` lacks, and its verification errors
name the depth of the failing certificate, which Python does not report; legatus reads
what it can off the wire.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

_HANDSHAKE = 22
_CHANGE_CIPHER_SPEC = 20
_CLIENT_HELLO = 1
_SERVER_HELLO = 2
_CERTIFICATE = 11
_SERVER_KEY_EXCHANGE = 12
_CERTIFICATE_VERIFY = 15

_EXT_SERVER_NAME = 0
_EXT_STATUS_REQUEST = 5
_EXT_SUPPORTED_GROUPS = 10
_EXT_SIGNATURE_ALGORITHMS = 13
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_EXT_KEY_SHARE = 51

TLS1_3 = 0x0304
DEFAULT_MAX_CLIENT_HELLO = 64 * 1024  # Envoy's TLS_MAX_CLIENT_HELLO


class ParseState(enum.Enum):
    NEED_MORE = 0
    """Feed more bytes."""
    DONE = 1
    """A whole ClientHello was read: ``hello`` holds it."""
    NOT_TLS = 2
    """The bytes are not a TLS handshake (plaintext, or a malformed hello)."""
    TOO_LARGE = 3
    """No complete ClientHello within the size limit."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str  # "" when the client sent no SNI
    alpn: tuple[str, ...]
    versions: tuple[int, ...]  # supported_versions, else the legacy version
    cipher_suites: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    groups: tuple[int, ...]
    ocsp_requested: bool
    has_alpn: bool

    @property
    def offers_tls13(self) -> bool:
        return TLS1_3 in self.versions

    def ecdsa_capable(self) -> bool:
        """Whether the client can take a P-256 ECDSA certificate (the only ECDSA kind Envoy
        serves): it signs with ecdsa_secp256r1_sha256, knows P-256 when it lists groups, and
        below TLS 1.3 offers an ECDHE-ECDSA suite (Envoy's getClientEcdsaCapabilities)."""
        if 0x0403 not in self.signature_algorithms:
            return False
        if self.groups and 0x0017 not in self.groups:
            return False
        return self.offers_tls13 or any(c in _ECDSA_SUITES for c in self.cipher_suites)


_ECDSA_SUITES = frozenset({0xC009, 0xC00A, 0xC023, 0xC024, 0xC02B, 0xC02C, 0xCCA9})


class ClientHelloParser:
    """Reads records of type handshake until the ClientHello is whole. ``feed`` returns the
    state; ``bytes_processed`` is how much of the input the hello took (Envoy's
    ``tls_inspector.bytes_processed``)."""

    __slots__ = ("_buffer", "_handshake", "_max", "_offset", "bytes_fed", "bytes_processed",
                 "hello", "state")  # fmt: skip

    def __init__(self, max_size: int = DEFAULT_MAX_CLIENT_HELLO) -> None:
        self._max = max_size
        self._buffer = bytearray()
        self._offset = 0  # the next record starts here
        self._handshake = bytearray()
        self.hello: ClientHello | None = None
        self.state = ParseState.NEED_MORE
        self.bytes_processed = 0
        self.bytes_fed = 0

    def feed(self, data: bytes) -> ParseState:
        if self.state is not ParseState.NEED_MORE:
            return self.state
        self.bytes_fed += len(data)
        buf = self._buffer
        buf += data
        while True:
            start = self._offset
            if len(buf) - start < 5:
                break
            content_type, major = buf[start], buf[start + 1]
            length = int.from_bytes(buf[start + 3 : start + 5], "big")
            if content_type != _HANDSHAKE or major != 3 or length == 0 or length > 16384 + 2048:
                return self._finish(ParseState.NOT_TLS)
            if len(buf) - start - 5 < length:
                break
            self._handshake += buf[start + 5 : start + 5 + length]
            self._offset = start + 5 + length
            hs = self._handshake
            if hs[0] != _CLIENT_HELLO:
                return self._finish(ParseState.NOT_TLS)
            if len(hs) >= 4:
                body_length = int.from_bytes(hs[1:4], "big")
                if len(hs) >= 4 + body_length:
                    hello = _parse_client_hello(bytes(hs[4 : 4 + body_length]))
                    if hello is None:
                        return self._finish(ParseState.NOT_TLS)
                    self.hello = hello
                    self.bytes_processed = self._offset
                    return self._finish(ParseState.DONE)
        head = buf[self._offset : self._offset + 2]
        if head and (head[0] != _HANDSHAKE or (len(head) > 1 and head[1] != 3)):
            return self._finish(ParseState.NOT_TLS)
        if len(buf) >= self._max:
            return self._finish(ParseState.TOO_LARGE)
        return self.state

    def _finish(self, state: ParseState) -> ParseState:
        self.state = state
        if state is not ParseState.DONE:
            self.bytes_processed = len(self._buffer)
        self._buffer = bytearray()
        self._handshake = bytearray()
        return state


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vector(self, length_bytes: int) -> bytes:
        n = self.u8() if length_bytes == 1 else self.u16()
        return self.take(n)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _u16_list(data: bytes) -> tuple[int, ...]:
    """Big-endian 16-bit values (an odd last byte is ignored), in one C call: a browser's
    hello lists dozens of suites, groups and algorithms, on every handshake."""
    n = len(data) >> 1
    return struct.unpack(f">{n}H", data[: n << 1]) if n else ()


def _parse_client_hello(body: bytes) -> ClientHello | None:
    try:
        r = _Reader(body)
        legacy_version = r.u16()
        r.take(32)
        r.vector(1)  # session id
        suites = _u16_list(r.vector(2))
        r.vector(1)  # compression methods
        server_name = ""
        alpn: tuple[str, ...] = ()
        has_alpn = False
        versions: tuple[int, ...] = (legacy_version,)
        sigalgs: tuple[int, ...] = ()
        groups: tuple[int, ...] = ()
        ocsp = False
        if r.left:
            extensions = _Reader(r.vector(2))
            while extensions.left:
                kind = extensions.u16()
                data = extensions.vector(2)
                if kind == _EXT_SERVER_NAME:
                    server_name = _server_name(data)
                elif kind == _EXT_ALPN:
                    parsed = _alpn(data)
                    if parsed is not None:
                        alpn, has_alpn = parsed, True
                elif kind == _EXT_SUPPORTED_VERSIONS:
                    v = _Reader(data).vector(1)
                    versions = _u16_list(v)
                elif kind == _EXT_SIGNATURE_ALGORITHMS:
                    sigalgs = _u16_list(_Reader(data).vector(2))
                elif kind == _EXT_SUPPORTED_GROUPS:
                    groups = _u16_list(_Reader(data).vector(2))
                elif kind == _EXT_STATUS_REQUEST:
                    ocsp = bool(data) and data[0] == 1
    except ValueError:
        return None
    return ClientHello(
        server_name=server_name,
        alpn=alpn,
        versions=versions,
        cipher_suites=suites,
        signature_algorithms=sigalgs,
        groups=groups,
        ocsp_requested=ocsp,
        has_alpn=has_alpn,
    )


def _server_name(data: bytes) -> str:
    names = _Reader(_Reader(data).vector(2))
    while names.left:
        kind = names.u8()
        name = names.vector(2)
        if kind == 0:
            return name.decode("ascii", "replace")
    return ""


def _alpn(data: bytes) -> tuple[str, ...] | None:
    """The protocol list; None when malformed (left for the TLS stack to refuse, as Envoy's
    inspector leaves it)."""
    outer = _Reader(data)
    try:
        listed = _Reader(outer.vector(2))
    except ValueError:
        return None
    if outer.left or listed.left < 2:
        return None
    out = []
    while listed.left:
        name = listed.vector(1)
        if not name:
            return None
        out.append(name.decode("latin-1"))
    return tuple(out)


class HandshakeReader:
    """Follows one direction of a handshake while it is in the clear, and keeps what Envoy
    reports that Python's ``ssl`` does not: the key-exchange group (from the ServerHello's
    key_share in TLS 1.3, the ServerKeyExchange in TLS 1.2), and, in TLS 1.2 only, the
    certificates the peer sent (its Certificate message) and the peer's signature algorithm
    (ServerKeyExchange from a server, CertificateVerify from a client). It stops at the first
    record that is not a handshake record: from there on everything is encrypted."""

    __slots__ = ("_buffer", "_handshake", "certificates", "done", "group",
                 "signature_algorithm", "tls13")  # fmt: skip

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._handshake = bytearray()
        self.group: int | None = None
        self.signature_algorithm: int | None = None
        self.certificates: tuple[bytes, ...] = ()  # DER, the sender's order
        self.tls13 = False
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 5:
                length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
                if len(buf) - pos - 5 < length:
                    break
                content_type = buf[pos]
                if content_type != _HANDSHAKE:
                    if content_type == _CHANGE_CIPHER_SPEC and self.tls13:
                        pos += 5 + length  # TLS 1.3's compatibility CCS after a retry request
                        continue
                    self._stop()
                    return
                self._handshake += buf[pos + 5 : pos + 5 + length]
                pos += 5 + length
                if self._messages():
                    return
        except ValueError:
            self._stop()
            return
        del buf[:pos]

    def _messages(self) -> bool:
        hs = self._handshake
        while len(hs) >= 4:
            kind = hs[0]
            length = int.from_bytes(hs[1:4], "big")
            if len(hs) < 4 + length:
                return False
            body = bytes(hs[4 : 4 + length])
            del hs[: 4 + length]
            if kind == _SERVER_HELLO:
                retry = self._server_hello(body)
                if self.tls13 and not retry:
                    self._stop()  # the rest of the server's flight is encrypted
                    return True
            elif kind == _CERTIFICATE:
                self.certificates = _certificate_list(body)
            elif kind == _SERVER_KEY_EXCHANGE:
                r = _Reader(body)
                if r.u8() == 3:  # named_curve
                    self.group = r.u16()
                    r.vector(1)  # the public key
                    if r.left >= 2:
                        self.signature_algorithm = r.u16()
            elif kind == _CERTIFICATE_VERIFY and len(body) >= 2:
                self.signature_algorithm = int.from_bytes(body[:2], "big")
        return False

    def _server_hello(self, body: bytes) -> bool:
        """Read a ServerHello; True for a HelloRetryRequest (the real one follows)."""
        r = _Reader(body)
        r.u16()
        random = r.take(32)
        r.vector(1)
        r.u16()  # cipher suite
        r.u8()  # compression
        retry = random == _HELLO_RETRY_REQUEST
        if not r.left:
            return retry
        extensions = _Reader(r.vector(2))
        share = None
        while extensions.left:
            kind = extensions.u16()
            data = extensions.vector(2)
            if kind == _EXT_SUPPORTED_VERSIONS and len(data) == 2:
                self.tls13 = int.from_bytes(data, "big") == TLS1_3
            elif kind == _EXT_KEY_SHARE and len(data) >= 2:
                share = int.from_bytes(data[:2], "big")
        if self.tls13 and not retry:
            self.group = share
        return retry

    def _stop(self) -> None:
        self.done = True
        self._buffer = bytearray()
        self._handshake = bytearray()


def _certificate_list(body: bytes) -> tuple[bytes, ...]:
    """A TLS 1.2 Certificate message: a 24-bit-length list of 24-bit-length DER certs."""
    r = _Reader(body)
    total = int.from_bytes(r.take(3), "big")
    listed = _Reader(r.take(total))
    out = []
    while listed.left:
        n = int.from_bytes(listed.take(3), "big")
        out.append(listed.take(n))
    return tuple(out)


# The TLS SignatureScheme names BoringSSL gives them (SSL_get_signature_algorithm_name with
# the curve), for ssl.sigalgs.*.
SIGNATURE_ALGORITHMS = {
    0x0201: "rsa_pkcs1_sha1",
    0x0203: "ecdsa_sha1",
    0x0401: "rsa_pkcs1_sha256",
    0x0403: "ecdsa_secp256r1_sha256",
    0x0501: "rsa_pkcs1_sha384",
    0x0503: "ecdsa_secp384r1_sha384",
    0x0601: "rsa_pkcs1_sha512",
    0x0603: "ecdsa_secp521r1_sha512",
    0x0804: "rsa_pss_rsae_sha256",
    0x0805: "rsa_pss_rsae_sha384",
    0x0806: "rsa_pss_rsae_sha512",
    0x0807: "ed25519",
    0xFF01: "rsa_pkcs1_md5_sha1",
}


# The random value that marks a TLS 1.3 HelloRetryRequest (RFC 8446 4.1.3).
_HELLO_RETRY_REQUEST = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)

"""TLS failures as Envoy reports them: stats and the transport failure reason.

Envoy drains BoringSSL's error queue after a failed handshake (SslSocket::drainErrorQueue)
and writes ``TLS_error:|<code>:<library>:<function>:<reason>[:<detail>]:TLS_error_end``,
where the code is BoringSSL's packed error (library 16 for SSL, shifted by 24, plus the
reason number) and the function is always ``OPENSSL_internal``. That text is what
``%UPSTREAM_TRANSPORT_FAILURE_REASON%`` and the 503 ``UF`` body show.

legatus runs OpenSSL, whose reason *names* mostly equal BoringSSL's; the few that differ are
mapped to BoringSSL's name for the same condition, and every known name gets BoringSSL's
number, so that the text matches Envoy's. A reason BoringSSL has no name for keeps OpenSSL's
name with the bare SSL library code.

``TlsFailure`` carries what a failed handshake means for stats: which ``ssl.*`` counter it
is (``fail_verify_no_cert``, ``fail_verify_error``, or ``connection_error`` when none of the
counted causes applies, as Envoy counts it).
"""

from __future__ import annotations

import ssl

_ERR_LIB_SSL = 16

# BoringSSL's SSL_R_* reason numbers (include/openssl/ssl.h) for the reasons a handshake
# or a record can fail with.
_REASONS_TEXT = """
APP_DATA_IN_HANDSHAKE 100 BAD_ALERT 102 BAD_CHANGE_CIPHER_SPEC 103 BAD_ECC_CERT 107
BAD_HANDSHAKE_RECORD 109 BAD_LENGTH 111 BAD_PACKET_LENGTH 112 BAD_SIGNATURE 114
CCS_RECEIVED_EARLY 124 CERTIFICATE_VERIFY_FAILED 125 CERT_CB_ERROR 126
CLIENTHELLO_PARSE_FAILED 131 CLIENTHELLO_TLSEXT 132 CONNECTION_REJECTED 133 DECODE_ERROR 137
DECRYPTION_FAILED 138 DECRYPTION_FAILED_OR_BAD_RECORD_MAC 139 DIGEST_CHECK_FAILED 142
ENCRYPTED_LENGTH_TOO_LONG 146 ERROR_IN_RECEIVED_CIPHER_LIST 148 ERROR_PARSING_EXTENSION 149
EXCESSIVE_MESSAGE_SIZE 150 EXTRA_DATA_IN_MESSAGE 151 HANDSHAKE_FAILURE_ON_CLIENT_HELLO 154
HTTPS_PROXY_REQUEST 155 HTTP_REQUEST 156 INAPPROPRIATE_FALLBACK 157 INVALID_MESSAGE 159
LENGTH_MISMATCH 162 MISSING_EXTENSION 164 NO_CERTIFICATES_RETURNED 172
NO_CERTIFICATE_ASSIGNED 173 NO_CERTIFICATE_SET 174 NO_CIPHERS_AVAILABLE 175
NO_CIPHER_MATCH 177 NO_PRIVATE_KEY_ASSIGNED 181 NO_RENEGOTIATION 182 NO_SHARED_CIPHER 184
PARSE_TLSEXT 190 PEER_DID_NOT_RETURN_A_CERTIFICATE 192 PROTOCOL_IS_SHUTDOWN 194
RECORD_LENGTH_MISMATCH 199 RECORD_TOO_LARGE 200 RENEGOTIATION_MISMATCH 202
SERVERHELLO_TLSEXT 207 SSL_HANDSHAKE_FAILURE 215 UNEXPECTED_EXTENSION 222
UNEXPECTED_MESSAGE 223 UNEXPECTED_RECORD 225 UNKNOWN_ALERT_TYPE 227
UNKNOWN_CERTIFICATE_TYPE 228 UNKNOWN_CIPHER_RETURNED 229 UNKNOWN_PROTOCOL 233
UNKNOWN_SSL_VERSION 234 UNSAFE_LEGACY_RENEGOTIATION_DISABLED 236 UNSUPPORTED_CIPHER 237
UNSUPPORTED_ELLIPTIC_CURVE 239 UNSUPPORTED_PROTOCOL 240 WRONG_CERTIFICATE_TYPE 241
WRONG_CIPHER_RETURNED 242 WRONG_CURVE 243 WRONG_MESSAGE_TYPE 244 WRONG_SIGNATURE_TYPE 245
WRONG_SSL_VERSION 246 WRONG_VERSION_NUMBER 247 X509_LIB 248 SHUTDOWN_WHILE_IN_INIT 250
NO_COMMON_SIGNATURE_ALGORITHMS 253 DOWNGRADE_DETECTED 254 EXCESS_HANDSHAKE_DATA 255
DUPLICATE_EXTENSION 257 MISSING_KEY_SHARE 258 INVALID_ALPN_PROTOCOL 259
NO_SHARED_GROUP 266 NO_SUPPORTED_VERSIONS_ENABLED 280 HANDSHAKE_NOT_COMPLETE 284
APPLICATION_DATA_ON_SHUTDOWN 291 TLS13_DOWNGRADE 297 KEY_USAGE_BIT_INCORRECT 302
NO_APPLICATION_PROTOCOL 307
SSLV3_ALERT_CLOSE_NOTIFY 1000 SSLV3_ALERT_UNEXPECTED_MESSAGE 1010
SSLV3_ALERT_BAD_RECORD_MAC 1020 TLSV1_ALERT_DECRYPTION_FAILED 1021
TLSV1_ALERT_RECORD_OVERFLOW 1022 SSLV3_ALERT_DECOMPRESSION_FAILURE 1030
SSLV3_ALERT_HANDSHAKE_FAILURE 1040 SSLV3_ALERT_NO_CERTIFICATE 1041
SSLV3_ALERT_BAD_CERTIFICATE 1042 SSLV3_ALERT_UNSUPPORTED_CERTIFICATE 1043
SSLV3_ALERT_CERTIFICATE_REVOKED 1044 SSLV3_ALERT_CERTIFICATE_EXPIRED 1045
SSLV3_ALERT_CERTIFICATE_UNKNOWN 1046 SSLV3_ALERT_ILLEGAL_PARAMETER 1047
TLSV1_ALERT_UNKNOWN_CA 1048 TLSV1_ALERT_ACCESS_DENIED 1049 TLSV1_ALERT_DECODE_ERROR 1050
TLSV1_ALERT_DECRYPT_ERROR 1051 TLSV1_ALERT_EXPORT_RESTRICTION 1060
TLSV1_ALERT_PROTOCOL_VERSION 1070 TLSV1_ALERT_INSUFFICIENT_SECURITY 1071
TLSV1_ALERT_INTERNAL_ERROR 1080 TLSV1_ALERT_INAPPROPRIATE_FALLBACK 1086
TLSV1_ALERT_USER_CANCELLED 1090 TLSV1_ALERT_NO_RENEGOTIATION 1100
TLSV1_ALERT_UNSUPPORTED_EXTENSION 1110 TLSV1_ALERT_CERTIFICATE_UNOBTAINABLE 1111
TLSV1_ALERT_UNRECOGNIZED_NAME 1112 TLSV1_ALERT_BAD_CERTIFICATE_STATUS_RESPONSE 1113
TLSV1_ALERT_BAD_CERTIFICATE_HASH_VALUE 1114 TLSV1_ALERT_UNKNOWN_PSK_IDENTITY 1115
TLSV1_ALERT_CERTIFICATE_REQUIRED 1116 TLSV1_ALERT_NO_APPLICATION_PROTOCOL 1120
"""
_tokens = _REASONS_TEXT.split()
BORINGSSL_REASONS: dict[str, int] = {
    _tokens[i]: int(_tokens[i + 1]) for i in range(0, len(_tokens), 2)
}
del _tokens

# OpenSSL's name -> BoringSSL's, where the same condition is named differently.
_OPENSSL_TO_BORINGSSL = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "TLSV1_ALERT_CERTIFICATE_REQUIRED",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "TLSV1_ALERT_NO_APPLICATION_PROTOCOL",
    "NO_SUITABLE_KEY_SHARE": "NO_SHARED_GROUP",
    "NO_PROTOCOLS_AVAILABLE": "NO_SUPPORTED_VERSIONS_ENABLED",
    "UNSUPPORTED_PROTOCOL": "UNSUPPORTED_PROTOCOL",
    "PACKET_LENGTH_TOO_LONG": "RECORD_TOO_LARGE",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "NO_COMMON_SIGNATURE_ALGORITHMS",
    "BAD_KEY_SHARE": "BAD_ECPOINT",
    "TLSV1_ALERT_UNKNOWN_CA": "TLSV1_ALERT_UNKNOWN_CA",
    "WRONG_CERTIFICATE_TYPE": "WRONG_CERTIFICATE_TYPE",
}

# Which ssl.* counter a failure counts (Envoy's drainErrorQueue, with the verify stats its
# validator counts): anything else is connection_error.
NO_CERT = "fail_verify_no_cert"
VERIFY_ERROR = "fail_verify_error"


class TlsFailure(Exception):
    """A failed TLS handshake or record: ``reason`` is Envoy's transport failure text,
    ``counter`` the ssl.* counter it counts (None: connection_error)."""

    def __init__(self, reason: str, counter: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counter = counter


def _entry(name: str) -> str:
    name = _OPENSSL_TO_BORINGSSL.get(name, name)
    code = (_ERR_LIB_SSL << 24) | BORINGSSL_REASONS.get(name, 0)
    return f"|{code}:SSL routines:OPENSSL_internal:{name}"


def failure_reason(entry_names: list[str], detail: str | None = None) -> str:
    """``TLS_error:|...:TLS_error_end`` for the given OpenSSL reason names."""
    text = "TLS_error:" + "".join(_entry(n) for n in entry_names)
    if detail:
        text += ":" + detail
    return text + ":TLS_error_end"


def from_ssl_error(
    error: ssl.SSLError, peer_chain: tuple[bytes, ...] = (), trusted_pem: bytes = b""
) -> TlsFailure:
    """The TlsFailure for an exception of Python's ``ssl`` module. ``peer_chain``: the
    certificates the peer sent, when the handshake showed them (TLS 1.2), to name the depth
    of a chain verification error as Envoy does."""
    reason = error.reason or "SSL_HANDSHAKE_FAILURE"
    if isinstance(error, ssl.SSLCertVerificationError):
        from legatus.extensions.transport_sockets.tls.cert_validator import error_depth

        message = error.verify_message or "certificate verify failed"
        depth = error_depth(error.verify_code, peer_chain, trusted_pem)
        # Envoy: "verify cert failed: X509_verify_cert: certificate verification error at
        # depth <n>: <message>". Python does not report the depth: it is worked out from
        # the chain the peer sent when that was in the clear, and left out otherwise.
        where = f" at depth {depth}" if depth is not None else ""
        detail = f"verify cert failed: X509_verify_cert: certificate verification error{where}: "
        return TlsFailure(
            failure_reason(["CERTIFICATE_VERIFY_FAILED"], detail + message), VERIFY_ERROR
        )
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return TlsFailure(
            failure_reason([reason], "peer did not provide required client certificate"), NO_CERT
        )
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return TlsFailure(failure_reason([reason]), VERIFY_ERROR)
    return TlsFailure(failure_reason([reason]))


def post_handshake_failure(detail: str) -> TlsFailure:
    """A leaf check that failed after the handshake (SANs, hash): Envoy fails these in its
    verify callback, so its reason is a CERTIFICATE_VERIFY_FAILED with the detail."""
    return TlsFailure(failure_reason(["CERTIFICATE_VERIFY_FAILED"], detail), "post_handshake")

"""Envoy's TLS command operators (``%DOWNSTREAM_TLS_VERSION%``, ``%UPSTREAM_PEER_SUBJECT%``...).

They read the connection's ``SslConnectionInfo`` from the stream info (``downstream_ssl``,
``upstream_ssl``): unset (``-``, JSON null) on a plaintext connection, as in Envoy. Formats
follow Envoy's connection info: subjects and issuers in RFC 2253 order, SANs of one type
joined with ``,``, fingerprints and serials in lower-case hex, the peer certificate
URL-encoded PEM, validity times with the START_TIME default format (or the one given).

The peer's certificate chain (``..._PEER_CHAIN_*``) and OTHERNAME SANs are not available
from Python's ``ssl`` module and stay unimplemented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from legatus.access_log.date_formatter import DEFAULT_UTC, NEWLINE, DateFormatter
from legatus.access_log.providers import Factory, Provider, Syntax, simple, string
from legatus.config.errors import ConfigError


def _joined(values) -> str | None:
    return ",".join(values) if values else None


def _cert_field(side: str, which: str, get: Callable[[Any], str | None]) -> Provider:
    """A field of the ``which`` ("peer"/"local") certificate on ``side``'s connection."""
    attr = f"{side}_ssl"
    cert_attr = f"{which}_certificate"

    def read(info) -> str | None:
        ssl = getattr(info, attr)
        if ssl is None:
            return None
        cert = getattr(ssl, cert_attr)
        return None if cert is None else get(cert)

    return string(read)


def _connection_field(side: str, get: Callable[[Any], str | None]) -> Provider:
    attr = f"{side}_ssl"

    def read(info) -> str | None:
        ssl = getattr(info, attr)
        return None if ssl is None else (get(ssl) or None)

    return string(read)


def _validity(side: str, end: bool) -> Factory:
    """``..._PEER_CERT_V_START(format)`` / ``_V_END``: a time in the START_TIME format."""
    attr = f"{side}_ssl"

    def factory(sub: str, _max_length, path: str) -> Provider:
        if NEWLINE.search(sub):
            raise ConfigError(path, "Invalid header configuration. Format string contains newline.")
        try:
            formatter = DateFormatter(sub or DEFAULT_UTC, local=False)
        except ValueError as e:
            raise ConfigError(path, f"invalid time format '{sub}': {e}") from None
        render = formatter.format

        def read(info) -> str | None:
            ssl = getattr(info, attr)
            cert = None if ssl is None else ssl.peer_certificate
            if cert is None:
                return None
            when = cert.not_after if end else cert.not_before
            return render(when.timestamp())

        return string(read)

    return factory


def _transport_failure(info) -> str | None:
    reason = info.downstream_transport_failure_reason
    return reason.replace(" ", "_") if reason else None


def _side_operators(side: str) -> dict[str, tuple[Syntax, Factory]]:
    s = side.upper()
    only = Syntax.COMMAND_ONLY
    table: dict[str, tuple[Syntax, Factory]] = {
        f"{s}_TLS_VERSION": (only, simple(_connection_field(side, lambda c: c.version))),
        f"{s}_TLS_CIPHER": (only, simple(_connection_field(side, lambda c: c.cipher))),
        f"{s}_TLS_SESSION_ID": (only, simple(_connection_field(side, lambda c: c.session_id))),
        f"{s}_PEER_SUBJECT": (only, simple(_cert_field(side, "peer", lambda c: c.subject))),
        f"{s}_PEER_ISSUER": (only, simple(_cert_field(side, "peer", lambda c: c.issuer))),
        f"{s}_PEER_CERT": (only, simple(_cert_field(side, "peer",
                                                    lambda c: c.url_encoded_pem))),
        f"{s}_PEER_URI_SAN": (only, simple(_cert_field(side, "peer",
                                                       lambda c: _joined(c.uri_sans)))),
        f"{s}_PEER_DNS_SAN": (only, simple(_cert_field(side, "peer",
                                                       lambda c: _joined(c.dns_sans)))),
        f"{s}_PEER_IP_SAN": (only, simple(_cert_field(side, "peer",
                                                      lambda c: _joined(c.ip_sans)))),
        f"{s}_LOCAL_URI_SAN": (only, simple(_cert_field(side, "local",
                                                        lambda c: _joined(c.uri_sans)))),
        f"{s}_LOCAL_DNS_SAN": (only, simple(_cert_field(side, "local",
                                                        lambda c: _joined(c.dns_sans)))),
        f"{s}_LOCAL_IP_SAN": (only, simple(_cert_field(side, "local",
                                                       lambda c: _joined(c.ip_sans)))),
        f"{s}_PEER_CERT_V_START": (Syntax.PARAMS_OPTIONAL, _validity(side, end=False)),
        f"{s}_PEER_CERT_V_END": (Syntax.PARAMS_OPTIONAL, _validity(side, end=True)),
    }  # fmt: skip
    return table


TLS_OPERATORS: dict[str, tuple[Syntax, Factory]] = {
    **_side_operators("downstream"),
    **_side_operators("upstream"),
    "DOWNSTREAM_PEER_EMAIL_SAN": (
        Syntax.COMMAND_ONLY,
        simple(_cert_field("downstream", "peer", lambda c: _joined(c.email_sans))),
    ),
    "DOWNSTREAM_LOCAL_EMAIL_SAN": (
        Syntax.COMMAND_ONLY,
        simple(_cert_field("downstream", "local", lambda c: _joined(c.email_sans))),
    ),
    "DOWNSTREAM_LOCAL_SUBJECT": (
        Syntax.COMMAND_ONLY,
        simple(_cert_field("downstream", "local", lambda c: c.subject)),
    ),
    "DOWNSTREAM_PEER_FINGERPRINT_256": (
        Syntax.COMMAND_ONLY,
        simple(_cert_field("downstream", "peer", lambda c: c.sha256)),
    ),
    "DOWNSTREAM_PEER_FINGERPRINT_1": (
        Syntax.COMMAND_ONLY,
        simple(_cert_field("downstream", "peer", lambda c: c.sha1)),
    ),
    "DOWNSTREAM_PEER_SERIAL": (
        Syntax.COMMAND_ONLY,
        simple(_cert_field("downstream", "peer", lambda c: c.serial)),
    ),
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON": (
        Syntax.COMMAND_ONLY,
        simple(string(_transport_failure)),
    ),
}

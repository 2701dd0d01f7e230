"""``<scope>.ssl.*``: Envoy's SslStats, and the per-value counters of a handshake.

The scope is the listener's (``listener.<address>.ssl.``) for downstream contexts and the
cluster's (``cluster.<name>.ssl.``) for upstream ones, shared by every context under it, as
in Envoy. ``ciphers.<name>``, ``versions.<name>`` and ``curves.<name>`` are made on first
use of each value and kept in a dict, so a handshake costs a lookup, not a name built.

``ssl.sigalgs.<name>`` (the peer's signature algorithm) is absent: the peer signs inside the
encrypted part of a TLS 1.3 handshake and Python's ``ssl`` does not report the algorithm
(docs/tls.md).
"""

from __future__ import annotations

from legatus.stats.store import Counter, Scope, StatSet, counter


class SslStats(StatSet):
    connection_error = counter()
    handshake = counter()
    session_reused = counter()
    no_certificate = counter()
    fail_verify_no_cert = counter()
    fail_verify_error = counter()
    fail_verify_san = counter()
    fail_verify_cert_hash = counter()
    ocsp_staple_failed = counter()
    ocsp_staple_omitted = counter()
    ocsp_staple_responses = counter()
    ocsp_staple_requests = counter()


class SocketFactoryStats(StatSet):
    """``<scope>.server_ssl_socket_factory.*`` / ``client_ssl_socket_factory.*``."""

    ssl_context_update_by_sds = counter()
    upstream_context_secrets_not_ready = counter()
    downstream_context_secrets_not_ready = counter()


class HandshakeStats:
    """The ssl.* counters of one scope, with the per-value ones."""

    __slots__ = ("_by_value", "_scope", "counters")

    def __init__(self, scope: Scope) -> None:
        self._scope = scope.scope("ssl.")
        self.counters = SslStats(self._scope)
        self._by_value: dict[tuple[str, str], Counter] = {}

    def value(self, family: str, name: str) -> None:
        """Count one ``ssl.<family>.<name>`` (ciphers, versions, curves)."""
        key = (family, name)
        c = self._by_value.get(key)
        if c is None:
            c = self._by_value[key] = self._scope.counter(f"{family}.{name}")
        c.inc()

"""``DownstreamTlsContext`` and ``UpstreamTlsContext``, compiled once into frozen configs.

Everything that can be wrong with a TLS context is found here, at config time, with Envoy's
messages where Envoy has one; what Python's ``ssl`` module cannot honour is refused by
field name (see docs/tls.md for the list and why):

- ``session_timeout``: no SSL_CTX_set_timeout in Python's ``ssl``;
- ``session_ticket_keys`` / ``session_ticket_keys_sds_secret_config``: no way to install
  ticket keys (each worker process keeps OpenSSL's own random key);
- ``disable_stateful_session_resumption``: no way to turn OpenSSL's session cache off;
- ``ocsp_staple`` and ``ocsp_staple_policy: MUST_STAPLE``: no OCSP stapling;
- signature algorithms, custom handshakers, key logging, certificate providers,
  ``enforce_rsa_key_usage``; a client context with several certificates (as Envoy).

A context on SDS secrets is rebuilt, as Envoy rebuilds it, when any of them changes, from
every secret's current value; each secret checks the whole context before it takes a new
value (``_checker``), so one that cannot make a context is refused there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.transport_sockets.tls.cert_validator import (
    ValidationConfig,
    compile_validation,
)
from legatus.extensions.transport_sockets.tls.certificate import (
    TlsCertificate,
    compile_certificate,
    is_empty,
)
from legatus.extensions.transport_sockets.tls.secret_manager import (
    SecretManager,
    SecretProvider,
    set_checker,
)
from legatus.extensions.transport_sockets.tls.tls_params import (
    TlsParams,
    compile_alpn,
    compile_tls_params,
)

DownstreamTlsContext = tls_pb2.DownstreamTlsContext
UpstreamTlsContext = tls_pb2.UpstreamTlsContext

_COMMON = (
    "tls_params",
    "tls_certificates",
    "tls_certificate_sds_secret_configs",
    "validation_context",
    "validation_context_sds_secret_config",
    "combined_validation_context",
    "alpn_protocols",
)
_DOWNSTREAM = (
    "common_tls_context",
    "require_client_certificate",
    "require_sni",
    "disable_stateless_session_resumption",
    "ocsp_staple_policy",
    "full_scan_certs_on_sni_mismatch",
    "prefer_client_ciphers",
)
_UPSTREAM = ("common_tls_context", "sni", "allow_renegotiation", "max_session_keys",
             "auto_host_sni", "auto_sni_san_validation")  # fmt: skip
_WHY = {
    "session_timeout": "Python's ssl module cannot set the session lifetime",
    "session_ticket_keys": "Python's ssl module cannot install session ticket keys",
    "session_ticket_keys_sds_secret_config": "Python's ssl module cannot install session "
    "ticket keys",
    "disable_stateful_session_resumption": "Python's ssl module cannot turn OpenSSL's "
    "session cache off",
    "enforce_rsa_key_usage": "OpenSSL does not enforce the RSA key usage in TLS",
}


def _check(message, supported, path: str, what: str) -> None:
    allowed = frozenset(supported)
    for field, _ in message.ListFields():
        if field.name not in allowed:
            why = _WHY.get(field.name)
            text = f"field '{field.name}' of {what} is not supported by legatus"
            raise ConfigError(join_path(path, field.name), f"{text}: {why}" if why else text)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonTlsConfig:
    params: TlsParams
    certificates: tuple[TlsCertificate, ...]
    validation: ValidationConfig | None
    alpn: tuple[str, ...]
    # SDS: where the certificates and the validation context come from (empty/None when
    # inline), the default half of a combined validation context, and the path for messages.
    certificate_providers: tuple[SecretProvider, ...] = ()
    validation_provider: SecretProvider | None = None
    validation_default: Any = None
    path: str = ""

    @property
    def uses_sds(self) -> bool:
        return bool(self.certificate_providers) or self.validation_provider is not None

    @property
    def ready(self) -> bool:
        """Whether every SDS secret has a value (one over xDS may not have arrived yet):
        until then the context cannot be made, as Envoy's SSL socket factory has none."""
        return all(_ready(p) for p in self._providers())

    def _providers(self) -> tuple[SecretProvider, ...]:
        validation = self.validation_provider
        return (*self.certificate_providers, *((validation,) if validation is not None else ()))

    def refreshed(self) -> CommonTlsConfig:
        """This config with the providers' current secrets (after an SDS update)."""
        certificates, validation = _from_providers(self, _current)
        return dataclasses.replace(
            self,
            certificates=certificates if self.certificate_providers else self.certificates,
            validation=validation if self.validation_provider is not None else self.validation,
        )


def _ready(provider: SecretProvider) -> bool:
    return getattr(provider, "ready", True)


def _current(provider: SecretProvider):
    return provider.current


def _applied(provider: SecretProvider):
    return provider.secret


def _from_providers(config: CommonTlsConfig, pick) -> tuple:
    """The certificates and validation of ``config``'s providers, each secret ``pick``ed
    (those of a secret over xDS that has not arrived yet are left out)."""
    path = config.path
    certificates = tuple(
        compile_certificate(pick(p).tls_certificate, path, name=p.name)
        for p in config.certificate_providers
        if _ready(p)
    )
    validation = None
    if config.validation_provider is not None and _ready(config.validation_provider):
        secret = pick(config.validation_provider)
        proto = secret.validation_context
        default = config.validation_default
        if default is not None:  # combined: the secret merged into the default, as Envoy
            merged = type(default)()
            merged.CopyFrom(default)
            merged.MergeFrom(proto)
            proto = merged
        validation = compile_validation(proto, path, name=secret.name)
    return certificates, validation


def _compile_common(proto, path: str, *, server: bool, secrets: Any = None) -> CommonTlsConfig:
    _check(proto, _COMMON, path, "CommonTlsContext")
    if secrets is None:
        secrets = SecretManager()  # file SDS only: no static secrets were given
    providers: tuple[SecretProvider, ...] = ()
    certificates: tuple[TlsCertificate, ...] = ()
    if proto.tls_certificate_sds_secret_configs:
        if proto.tls_certificates and server:
            raise ConfigError(
                join_path(path, "tls_certificate_sds_secret_configs"),
                "SDS and non-SDS TLS certificates may not be mixed in server contexts",
            )
        providers = tuple(
            secrets.provider(c, f"{path}.tls_certificate_sds_secret_configs[{i}]",
                             "tls_certificate")
            for i, c in enumerate(proto.tls_certificate_sds_secret_configs)
        )  # fmt: skip
    else:
        certificates = _inline_certificates(proto.tls_certificates, path, server=server)
    which = proto.WhichOneof("validation_context_type")
    validation_provider = None
    default = None
    validation = None
    if which == "validation_context":
        validation = compile_validation(
            proto.validation_context, join_path(path, "validation_context")
        )
    elif which == "validation_context_sds_secret_config":
        validation_provider = secrets.provider(
            proto.validation_context_sds_secret_config, join_path(path, which),
            "validation_context",
        )  # fmt: skip
    elif which == "combined_validation_context":
        vpath = join_path(path, which)
        combined = proto.combined_validation_context
        check_supported(
            combined, ("default_validation_context", "validation_context_sds_secret_config"),
            vpath, "CombinedCertificateValidationContext",
        )  # fmt: skip
        default = combined.default_validation_context
        validation_provider = secrets.provider(
            combined.validation_context_sds_secret_config,
            join_path(vpath, "validation_context_sds_secret_config"),
            "validation_context",
        )
    elif which is not None:
        raise ConfigError(join_path(path, which), f"{which} is not supported by legatus")
    config = CommonTlsConfig(
        params=compile_tls_params(proto.tls_params, join_path(path, "tls_params"), server=server),
        certificates=certificates,
        validation=validation,
        alpn=compile_alpn(proto.alpn_protocols, path),
        certificate_providers=providers,
        validation_provider=validation_provider,
        validation_default=default,
        path=path,
    )
    if not config.uses_sds:
        return config
    sds = (*providers, *((validation_provider,) if validation_provider is not None else ()))
    for provider in sds:
        set_checker(provider, _context_key(config), _checker(config), _promoter(sds))
    try:
        return config.refreshed()
    except ConfigError:
        # A secret whose files last failed to reload (Envoy keeps that value, so the next
        # rebuild of the context fails too): the context in use has the values last applied.
        if all(p.current is p.secret for p in sds):
            raise
        certificates, validation = _from_providers(config, _applied)
        return dataclasses.replace(
            config,
            certificates=certificates or config.certificates,
            validation=validation if validation_provider is not None else config.validation,
        )


def _context_key(config: CommonTlsConfig) -> tuple:
    """What tells one context's check from another's on a shared secret (a context compiled
    again, for /certs, adds no second check)."""
    default = config.validation_default
    return (config.path, tuple(id(p) for p in config.certificate_providers),
            id(config.validation_provider),
            default.SerializeToString() if default is not None else b"")  # fmt: skip


def _checker(config: CommonTlsConfig):
    """Whether ``secret`` as the new value of ``updated`` still makes a context: Envoy
    rebuilds the whole context on any of its secrets' updates, with the others' current
    values."""

    def check(updated: SecretProvider, secret) -> None:
        _from_providers(
            dataclasses.replace(
                config,
                certificate_providers=tuple(
                    p for p in config.certificate_providers if p is updated or _ready(p)
                ),
                validation_provider=(
                    config.validation_provider
                    if config.validation_provider is updated
                    or (
                        config.validation_provider is not None
                        and _ready(config.validation_provider)
                    )
                    else None
                ),
            ),
            lambda p: secret if p is updated else p.current,
        )

    return check


def _promoter(providers: tuple[SecretProvider, ...]):
    def promote() -> None:
        for provider in providers:
            provider.promote()

    return promote


def _inline_certificates(protos, path: str, *, server: bool) -> tuple[TlsCertificate, ...]:
    """``tls_certificates``. One that names nothing is refused in a server context and, as
    Envoy does, means no client certificate in a client context."""
    out = []
    for i, proto in enumerate(protos):
        cpath = f"{path}.tls_certificates[{i}]"
        if is_empty(proto):
            if server:
                raise ConfigError(cpath, "Server TlsCertificates must have a certificate specified")
            continue
        out.append(compile_certificate(proto, cpath))
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTlsConfig:
    common: CommonTlsConfig
    require_client_certificate: bool
    require_sni: bool
    disable_stateless_session_resumption: bool
    full_scan_certs_on_sni_mismatch: bool
    prefer_client_ciphers: bool
    # SNI pattern ("www.x" or ".x" for *.x) -> certificate indexes, RSA before ECDSA, the
    # earlier certificate first for a name two of them share (Envoy's server_names_map).
    server_names: dict[str, tuple[int, ...]]

    def refreshed(self) -> ServerTlsConfig:
        """This config with its SDS secrets' current values."""
        common = self.common.refreshed()
        return dataclasses.replace(
            self, common=common, server_names=_server_names(common.certificates)
        )

    def choose_certificate(self, sni: str, ecdsa_capable: bool) -> int:
        """Envoy's DefaultTlsCertificateSelector::findTlsContext (without OCSP stapling)."""
        certs = self.common.certificates
        if len(certs) == 1:
            return 0
        selected: int | None = None
        candidate: int | None = None

        def consider(i: int) -> bool:
            nonlocal selected, candidate
            is_ecdsa = certs[i].leaf.key_kind == "ecdsa"
            if ecdsa_capable == is_ecdsa:
                selected = i
                return True
            if ecdsa_capable and candidate is None:
                candidate = i  # RSA, kept in case no ECDSA certificate fits
            return False

        def from_map(name: str) -> None:
            for i in self.server_names.get(name, ()):
                if consider(i):
                    return

        if sni:
            from_map(sni)
            if selected is None:
                selected = candidate
            if selected is None:
                dot = sni.find(".", 1)
                if dot != -1 and dot < len(sni) - 1:
                    from_map(sni[dot:])
            if selected is None:
                selected = candidate
            if selected is None and not self.full_scan_certs_on_sni_mismatch:
                selected = 0
        if selected is None:
            candidate = None
            has_rsa = any(c.leaf.key_kind == "rsa" for c in certs)
            if ecdsa_capable or has_rsa:
                for i in range(len(certs)):
                    if consider(i):
                        break
            if selected is None:
                selected = candidate if candidate is not None else 0
        return selected


def _server_names(certificates: tuple[TlsCertificate, ...]) -> dict[str, tuple[int, ...]]:
    by_name: dict[str, dict[str, int]] = {}
    for i, cert in enumerate(certificates):
        leaf = cert.leaf
        names = leaf.dns_sans if leaf.has_san_extension else (
            (leaf.common_name,) if leaf.common_name else ()
        )  # fmt: skip
        kind = leaf.key_kind
        for name in names:
            pattern = name[1:] if name.startswith("*.") else name
            by_name.setdefault(pattern, {}).setdefault(kind, i)
    order = {"rsa": 0, "ecdsa": 1}
    return {
        name: tuple(i for _, i in sorted(kinds.items(), key=lambda kv: order.get(kv[0], 2)))
        for name, kinds in by_name.items()
    }


def compile_downstream(
    proto: DownstreamTlsContext, path: str, secrets: Any = None
) -> ServerTlsConfig:
    _check(proto, _DOWNSTREAM, path, "DownstreamTlsContext")
    if proto.ocsp_staple_policy == DownstreamTlsContext.MUST_STAPLE:
        raise ConfigError(
            join_path(path, "ocsp_staple_policy"),
            "ocsp_staple_policy MUST_STAPLE is not supported by legatus: Python's ssl module "
            "cannot staple OCSP responses",
        )
    common = _compile_common(proto.common_tls_context, join_path(path, "common_tls_context"),
                             server=True, secrets=secrets)  # fmt: skip
    if not common.certificates and common.ready:
        raise ConfigError(
            join_path(path, "common_tls_context.tls_certificates"),
            "No TLS certificates found for server context",
        )
    require_client = (
        proto.require_client_certificate.value
        if proto.HasField("require_client_certificate")
        else False
    )
    if (
        require_client
        and common.ready
        and (common.validation is None or not common.validation.has_trust_anchor)
    ):
        raise ConfigError(
            join_path(path, "require_client_certificate"),
            "require_client_certificate needs a validation_context with a trusted_ca in "
            "legatus: Python's ssl module verifies every client certificate it accepts",
        )
    return ServerTlsConfig(
        common=common,
        require_client_certificate=require_client,
        require_sni=proto.require_sni.value if proto.HasField("require_sni") else False,
        disable_stateless_session_resumption=proto.disable_stateless_session_resumption,
        full_scan_certs_on_sni_mismatch=(
            proto.full_scan_certs_on_sni_mismatch.value
            if proto.HasField("full_scan_certs_on_sni_mismatch")
            else False
        ),
        prefer_client_ciphers=proto.prefer_client_ciphers,
        server_names=_server_names(common.certificates),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTlsConfig:
    common: CommonTlsConfig
    sni: str
    allow_renegotiation: bool
    max_session_keys: int
    auto_host_sni: bool  # the SNI is the upstream host's hostname, when it has one
    auto_sni_san_validation: bool  # the peer must have a DNS SAN matching the SNI sent


def compile_upstream(proto: UpstreamTlsContext, path: str, secrets: Any = None) -> ClientTlsConfig:
    _check(proto, _UPSTREAM, path, "UpstreamTlsContext")
    if "\0" in proto.sni:
        raise ConfigError(join_path(path, "sni"), "SNI names containing NULL-byte are not allowed")
    common = _compile_common(proto.common_tls_context, join_path(path, "common_tls_context"),
                             server=False, secrets=secrets)  # fmt: skip
    if len(common.certificates) > 1 or len(common.certificate_providers) > 1:
        raise ConfigError(
            join_path(path, "common_tls_context.tls_certificates"),
            "Multiple TLS certificates are not supported for client contexts",
        )
    if (
        proto.auto_sni_san_validation
        and common.ready
        and (common.validation is None or not common.validation.ca_pem)
    ):
        raise ConfigError(
            join_path(path, "auto_sni_san_validation"),
            "'auto_sni_san_validation' was configured without configuring a trusted CA",
        )
    return ClientTlsConfig(
        common=common,
        auto_host_sni=proto.auto_host_sni,
        auto_sni_san_validation=proto.auto_sni_san_validation,
        sni=proto.sni,
        allow_renegotiation=proto.allow_renegotiation,
        max_session_keys=(
            proto.max_session_keys.value if proto.HasField("max_session_keys") else 1
        ),
    )


__all__ = [
    "ClientTlsConfig",
    "CommonTlsConfig",
    "ServerTlsConfig",
    "check_supported",
    "compile_downstream",
    "compile_upstream",
]

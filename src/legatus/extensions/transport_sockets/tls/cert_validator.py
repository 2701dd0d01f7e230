"""``CertificateValidationContext``: Envoy's default certificate validator.

Split in two, because Python's ``ssl`` offers no verify callback:

- the chain (``trusted_ca``, ``crl``, ``allow_expired_certificate``, ``system_root_certs``)
  is verified by OpenSSL during the handshake, configured as Envoy configures BoringSSL's
  store (partial chains allowed, CRL checks on the chain or the leaf only);
- the checks Envoy runs in its verify callback on the leaf (``match_typed_subject_alt_names``
  with Envoy's StringMatcher and DNS-wildcard semantics, ``verify_certificate_hash``,
  ``verify_certificate_spki``) run right after the handshake, before any byte of the
  connection is used; a failure counts the same stat and closes the connection with the
  same failure reason as Envoy's.

``max_verify_depth`` has no store setting in Python's ``ssl`` either. Envoy 1.40 applies it
to server contexts only (a cluster's is accepted and has no effect), as BoringSSL's verify
depth set to one less than the value (at least 0): the most intermediates between the leaf
and the trust anchor, the first trusted certificate on the way up (partial chains are
allowed). OpenSSL builds the same verified chain; its length is checked right after the
handshake (``chain_too_deep``), with Envoy's stat and failure reason.

What Python's ``ssl`` cannot express is refused at config time: a validation context
without a trust anchor that still asks for a peer certificate (pinning by hash or SPKI
alone, ``ACCEPT_UNTRUSTED``), custom validators, certificate providers, SCT requirements
and OTHER_NAME SANs. ``watched_directory`` matters to a validation context delivered by SDS
from a file (``secret_files``); anywhere else, as in Envoy, it changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from dataclasses import dataclass

from cryptography import x509

from legatus.common.matchers import StringMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.transport_sockets.tls.certificate import (
    _memory_file,
    data_source_path,
    read_source,
)
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails, san_text

X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL's X509_V_FLAG_NO_CHECK_TIME

_SUPPORTED = (
    "trusted_ca",
    "system_root_certs",
    "verify_certificate_spki",
    "verify_certificate_hash",
    "match_typed_subject_alt_names",
    "match_subject_alt_names",
    "crl",
    "allow_expired_certificate",
    "only_verify_leaf_cert_crl",
    "trust_chain_verification",
    "watched_directory",
    "max_verify_depth",
)
MAX_VERIFY_DEPTH = 100  # the API's bound

_SAN_TYPES = {1: x509.RFC822Name, 2: x509.DNSName, 3: x509.UniformResourceIdentifier,
              4: x509.IPAddress}  # fmt: skip


def dns_name_match(dns_name: str, pattern: str) -> bool:
    """Envoy's Utility::dnsNameMatch: equal ignoring ASCII case, or ``pattern`` is
    ``*.<rest>`` and ``dns_name`` is one label followed by ``.<rest>``."""
    name, pat = dns_name.lower(), pattern.lower()
    if name == pat:
        return True
    if len(pat) > 1 and pat.startswith("*.") and len(name) > len(pat) - 1:
        offset = len(name) - len(pat) + 1
        return "." not in name[:offset] and name[offset:] == pat[1:]
    return False


class SanMatcher:
    """One ``SubjectAltNameMatcher``: a SAN type and a StringMatcher."""

    __slots__ = ("dns_exact", "kind", "matcher")

    def __init__(self, kind: type, matcher_proto, path: str) -> None:
        self.kind = kind
        self.matcher = StringMatcher(matcher_proto, path)
        # An exact DNS matcher follows DNS wildcard semantics (the SAN may be *.x).
        self.dns_exact = (
            matcher_proto.exact
            if kind is x509.DNSName and matcher_proto.WhichOneof("match_pattern") == "exact"
            else None
        )

    @classmethod
    def for_dns_name(cls, name: str) -> SanMatcher:
        """Envoy's DnsExactStringSanMatcher: a DNS SAN equal to ``name`` (wildcards in the
        certificate's SAN honoured), for auto_sni_san_validation."""
        from envoy.type.matcher.v3 import string_pb2

        return cls(x509.DNSName, string_pb2.StringMatcher(exact=name), "")

    def matches(self, name: x509.GeneralName) -> bool:
        if not isinstance(name, self.kind):
            return False
        san = san_text(name)
        if self.dns_exact is not None:
            return dns_name_match(self.dns_exact, san)
        return self.matcher.matches(san)


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationConfig:
    """A compiled CertificateValidationContext."""

    name: str  # Envoy's: ``unnamed_ca_cert_<8 hex>`` or the secret's name
    ca_pem: bytes  # trusted_ca (certificates and any CRLs in it); b"" when none
    ca_path: str
    system_roots: bool
    crl_pem: bytes
    crl_check_all: bool
    allow_expired: bool
    san_matchers: tuple[SanMatcher, ...]
    cert_hashes: tuple[bytes, ...]
    spki_hashes: tuple[bytes, ...]
    ca_details: CertificateDetails | None
    # max_verify_depth as BoringSSL applies it: the most intermediates; None: no limit.
    max_intermediates: int | None = None

    @property
    def has_trust_anchor(self) -> bool:
        return bool(self.ca_pem) or self.system_roots

    @property
    def requires_peer_certificate(self) -> bool:
        """Envoy asks for and requires a peer certificate when it must check its SANs or
        hash, even without require_client_certificate."""
        return bool(self.san_matchers or self.cert_hashes or self.spki_hashes)

    def configure(self, ctx: ssl.SSLContext) -> None:
        """Load the trust anchors and CRLs into ``ctx`` and set the store's flags."""
        flags = ctx.verify_flags | ssl.VERIFY_X509_PARTIAL_CHAIN
        if self.ca_pem:
            with _memory_file(self.ca_pem) as ca:
                ctx.load_verify_locations(cafile=ca)
        if self.system_roots:
            ctx.load_default_certs()
        crls = self.crl_pem or (b"-----BEGIN X509 CRL-----" in self.ca_pem)
        if self.crl_pem:
            with _memory_file(self.crl_pem) as crl:
                ctx.load_verify_locations(cafile=crl)
        if crls:
            flags |= ssl.VERIFY_CRL_CHECK_CHAIN if self.crl_check_all else ssl.VERIFY_CRL_CHECK_LEAF
        if self.allow_expired:
            flags |= X509_V_FLAG_NO_CHECK_TIME
        ctx.verify_flags = flags

    def chain_too_deep(self, verified_length: int) -> str | None:
        """The error detail when a verified chain (leaf to trust anchor, ``verified_length``
        certificates) has more intermediates than ``max_verify_depth`` allows, else None.
        BoringSSL stops building the chain one certificate past the limit, finds no trusted
        issuer there and says so, at that depth."""
        limit = self.max_intermediates
        if limit is None or verified_length - 2 <= limit:
            return None
        return (
            "verify cert failed: X509_verify_cert: certificate verification error at depth "
            f"{limit + 1}: unable to get local issuer certificate"
        )

    def verify_leaf(self, leaf: CertificateDetails, stats) -> str | None:
        """Envoy's DefaultCertValidator::verifyCertificate on the (chain-verified) leaf: None
        when it passes, else the error detail, with the failure counted in ``stats``."""
        if self.san_matchers:
            names = leaf.general_names
            if not any(m.matches(n) for m in self.san_matchers for n in names):
                stats.fail_verify_san.inc()
                sans = ", ".join(leaf.sans_for_logging())
                return f"verify cert failed: SAN matcher, certificate SANs are [{sans}]"
        if self.cert_hashes or self.spki_hashes:
            ok = (self.cert_hashes and bytes.fromhex(leaf.sha256) in self.cert_hashes) or (
                self.spki_hashes and leaf.spki_sha256 in self.spki_hashes
            )
            if not ok:
                stats.fail_verify_cert_hash.inc()
                return "verify cert failed: cert hash and spki"
        return None


def verified_chain_length(obj: ssl.SSLObject) -> int:
    """How many certificates OpenSSL's verified chain of the peer has (0: none, as on a
    resumed session). ``get_verified_chain`` is public from Python 3.13; before, it is the
    C object's."""
    get = getattr(obj, "get_verified_chain", None) or obj._sslobj.get_verified_chain
    chain = get()
    return len(chain) if chain else 0


def _can_see_verified_chain() -> bool:
    if hasattr(ssl.SSLObject, "get_verified_chain"):
        return True
    native = getattr(getattr(ssl, "_ssl", None), "_SSLSocket", None)
    return native is not None and hasattr(native, "get_verified_chain")


CAN_SEE_VERIFIED_CHAIN = _can_see_verified_chain()


# OpenSSL verification error codes whose depth can be worked out from the chain.
_SELF_SIGNED_LEAF = 18
_SELF_SIGNED_IN_CHAIN = 19
_NO_LOCAL_ISSUER = 20
_NO_ISSUER = 2
_LEAF_SIGNATURE = 21
_NOT_YET_VALID = 9
_EXPIRED = 10


def error_depth(code: int, peer_chain: tuple[bytes, ...], trusted_pem: bytes) -> int | None:
    """The depth OpenSSL's X509_verify_cert reports for error ``code``, from the chain the
    peer sent (leaf first) and the trust anchors: the chain is built as OpenSSL builds it
    (each certificate's issuer looked up by name among the peer's certificates, then among
    the anchors). None when the chain was not seen or the error's position cannot be told
    from it."""
    if code == _SELF_SIGNED_LEAF:
        return 0
    if not peer_chain:
        return None
    try:
        sent = [x509.load_der_x509_certificate(der) for der in peer_chain]
        anchors = x509.load_pem_x509_certificates(trusted_pem) if trusted_pem else []
    except ValueError:
        return None
    chain = [sent[0]]
    pool = sent[1:]
    while chain[-1].issuer != chain[-1].subject:
        issuer = next((c for c in pool if c.subject == chain[-1].issuer), None)
        if issuer is None:
            anchor = next((c for c in anchors if c.subject == chain[-1].issuer), None)
            if anchor is not None:
                chain.append(anchor)
            break
        pool.remove(issuer)
        chain.append(issuer)
    if code in (_NO_LOCAL_ISSUER, _NO_ISSUER, _LEAF_SIGNATURE, _SELF_SIGNED_IN_CHAIN):
        return len(chain) - 1
    if code in (_EXPIRED, _NOT_YET_VALID):
        import datetime

        now = datetime.datetime.now(datetime.UTC)
        for depth in range(len(chain) - 1, -1, -1):  # OpenSSL checks from the top down
            cert = chain[depth]
            if code == _EXPIRED and cert.not_valid_after_utc < now:
                return depth
            if code == _NOT_YET_VALID and cert.not_valid_before_utc > now:
                return depth
    return None


def validation_name(proto) -> str:
    import hashlib

    if proto.HasField("trusted_ca"):
        digest = hashlib.sha256(proto.trusted_ca.inline_bytes).hexdigest()[:8]
        return f"unnamed_ca_cert_{digest}"
    return "unnamed_ca_cert"


def compile_validation(proto, path: str, *, name: str | None = None) -> ValidationConfig:
    check_supported(proto, _SUPPORTED, path, "CertificateValidationContext")
    if proto.trust_chain_verification != 0:
        raise ConfigError(
            join_path(path, "trust_chain_verification"),
            "trust_chain_verification ACCEPT_UNTRUSTED is not supported by legatus: Python's "
            "ssl module cannot accept a peer certificate whose chain does not verify",
        )
    ca_pem = b""
    ca_path = ""
    ca_details = None
    if proto.HasField("trusted_ca"):
        ca_path = data_source_path(proto.trusted_ca)
        ca_pem = read_source(
            proto.trusted_ca,
            join_path(path, "trusted_ca"),
            "Failed to load trusted CA certificates from {}",
        )
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            cas = []
        if not cas:
            raise ConfigError(
                join_path(path, "trusted_ca"),
                f"Failed to load trusted CA certificates from {ca_path}",
            )
        from cryptography.hazmat.primitives import serialization

        ca_details = CertificateDetails(cas[0].public_bytes(serialization.Encoding.DER))
    crl_pem = b""
    if proto.HasField("crl"):
        crl_path = data_source_path(proto.crl)
        crl_pem = read_source(proto.crl, join_path(path, "crl"), "Failed to load CRL from {}")
        try:
            x509.load_pem_x509_crl(crl_pem)
        except ValueError:
            raise ConfigError(
                join_path(path, "crl"), f"Failed to load CRL from {crl_path}"
            ) from None
    matchers = []
    for i, m in enumerate(proto.match_typed_subject_alt_names):
        mpath = f"{path}.match_typed_subject_alt_names[{i}]"
        kind = _SAN_TYPES.get(m.san_type)
        if kind is None:
            raise ConfigError(
                f"{mpath}.san_type",
                f"SAN type {type(m).SanType.Name(m.san_type)} is not supported by legatus "
                "(DNS, URI, EMAIL and IP_ADDRESS are)",
            )
        matchers.append(SanMatcher(kind, m.matcher, f"{mpath}.matcher"))
    for i, m in enumerate(proto.match_subject_alt_names):
        # The deprecated untyped form: Envoy matches it against every SAN type.
        for kind in (x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name,
                     x509.IPAddress):  # fmt: skip
            matchers.append(SanMatcher(kind, m, f"{path}.match_subject_alt_names[{i}]"))
    hashes = []
    for i, h in enumerate(proto.verify_certificate_hash):
        text = h.replace(":", "") if len(h) == 95 else h
        try:
            decoded = bytes.fromhex(text)
        except ValueError:
            decoded = b""
        if len(decoded) != 32:
            raise ConfigError(
                f"{path}.verify_certificate_hash[{i}]", f"Invalid hex-encoded SHA-256 {text}"
            )
        hashes.append(decoded)
    spkis = []
    for i, h in enumerate(proto.verify_certificate_spki):
        try:
            decoded = base64.b64decode(h, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != 32:
            raise ConfigError(
                f"{path}.verify_certificate_spki[{i}]", f"Invalid base64-encoded SHA-256 {h}"
            )
        spkis.append(decoded)
    max_intermediates = None
    if proto.HasField("max_verify_depth"):
        depth = proto.max_verify_depth.value
        if depth > MAX_VERIFY_DEPTH:
            raise ConfigError(
                join_path(path, "max_verify_depth"),
                f"value must be less than or equal to {MAX_VERIFY_DEPTH}",
            )
        if not CAN_SEE_VERIFIED_CHAIN:
            raise ConfigError(
                join_path(path, "max_verify_depth"),
                "max_verify_depth is not supported by legatus on this Python: its ssl module "
                "does not show the verified chain",
            )
        max_intermediates = max(depth - 1, 0)
    config = ValidationConfig(
        name=name or validation_name(proto),
        ca_pem=ca_pem,
        ca_path=ca_path,
        system_roots=proto.HasField("system_root_certs"),
        crl_pem=crl_pem,
        crl_check_all=not proto.only_verify_leaf_cert_crl,
        allow_expired=proto.allow_expired_certificate,
        san_matchers=tuple(matchers),
        cert_hashes=tuple(hashes),
        spki_hashes=tuple(spkis),
        ca_details=ca_details,
        max_intermediates=max_intermediates,
    )
    if not config.has_trust_anchor and config.requires_peer_certificate:
        raise ConfigError(
            join_path(path, "trusted_ca"),
            "a validation context that checks the peer certificate (SANs, hash or SPKI) "
            "needs a trusted_ca in legatus: Python's ssl module cannot accept a certificate "
            "without verifying its chain",
        )
    return config

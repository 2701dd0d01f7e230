"""What Envoy reads out of a certificate, read the way Envoy prints it.

``CertificateDetails`` parses a DER certificate once, on first use (the peer certificate of
a connection is parsed only if something asks: an access log, a SAN check, XFCC). Formats
follow Envoy's ``Tls::Utility``: subjects and issuers as OpenSSL's RFC 2253 printing
(``CN=client,OU=eng,O=example``), serials as lower-case hex of the serial's bytes
(BoringSSL's BN_bn2hex), fingerprints as lower-case hex digests of the DER, SANs by type.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from functools import cached_property
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

# OpenSSL's short names for the attribute types it prints by name (obj_dat.h).
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.STREET_ADDRESS: "street",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.USER_ID: "UID",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.INITIALS: "initials",
}
_RFC2253_SPECIAL = frozenset(',+"\\<>;')


def _escape_value(value: str) -> str:
    """OpenSSL's ASN1_STRFLGS_RFC2253 escaping: RFC 2253 specials with a backslash, control
    characters and the UTF-8 bytes of non-ASCII characters as \\XX."""
    out = []
    raw = value.encode("utf-8")
    last = len(raw) - 1
    for i, b in enumerate(raw):
        c = chr(b)
        if b >= 0x80 or b < 0x20 or b == 0x7F:
            out.append(f"\\{b:02X}")
        elif c in _RFC2253_SPECIAL or (i == 0 and c in "# ") or (i == last and c == " "):
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def rfc2253(name: x509.Name) -> str:
    """``X509_NAME_print_ex(..., XN_FLAG_RFC2253)``: RDNs last to first, ``,``-separated."""
    parts = []
    for rdn in reversed(name.rdns):
        attrs = []
        for attr in rdn:
            key = _SHORT_NAMES.get(attr.oid, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            attrs.append(f"{key}={_escape_value(value)}")
        parts.append("+".join(attrs))
    return ",".join(parts)


def serial_hex(serial: int) -> str:
    if serial == 0:
        return "0"
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


class CertificateDetails:
    """A certificate as Envoy's connection info reports it. Parsed lazily."""

    __slots__ = ("__dict__", "der")

    def __init__(self, der: bytes) -> None:
        self.der = der

    @cached_property
    def cert(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @cached_property
    def subject(self) -> str:
        return rfc2253(self.cert.subject)

    @cached_property
    def issuer(self) -> str:
        return rfc2253(self.cert.issuer)

    @cached_property
    def serial(self) -> str:
        return serial_hex(self.cert.serial_number)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @cached_property
    def sha1(self) -> str:
        return hashlib.sha1(self.der).hexdigest()

    @cached_property
    def spki_sha256(self) -> bytes:
        spki = self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).digest()

    @property
    def not_before(self) -> datetime.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    @cached_property
    def _general_names(self) -> list[x509.GeneralName]:
        try:
            ext = self.cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        except x509.ExtensionNotFound:
            return []
        return list(ext.value)

    @property
    def has_san_extension(self) -> bool:
        try:
            self.cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        except x509.ExtensionNotFound:
            return False
        return True

    def _sans(self, kind) -> tuple[str, ...]:
        return tuple(san_text(g) for g in self._general_names if isinstance(g, kind))

    @cached_property
    def dns_sans(self) -> tuple[str, ...]:
        return self._sans(x509.DNSName)

    @cached_property
    def uri_sans(self) -> tuple[str, ...]:
        return self._sans(x509.UniformResourceIdentifier)

    @cached_property
    def email_sans(self) -> tuple[str, ...]:
        return self._sans(x509.RFC822Name)

    @cached_property
    def ip_sans(self) -> tuple[str, ...]:
        return self._sans(x509.IPAddress)

    @property
    def general_names(self) -> list[x509.GeneralName]:
        return self._general_names

    @cached_property
    def common_name(self) -> str:
        names = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    @cached_property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @cached_property
    def url_encoded_pem(self) -> str:
        """Envoy's urlEncodedPemEncodedPeerCertificate (XFCC ``Cert``, %..._PEER_CERT%)."""
        return quote(self.pem, safe="-_.~")

    @cached_property
    def key_kind(self) -> str:
        """``"rsa"``, ``"ecdsa"`` (with its curve in ``ec_curve``) or ``"other"``."""
        key = self.cert.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            return "rsa"
        if isinstance(key, ec.EllipticCurvePublicKey):
            return "ecdsa"
        return "other"

    @cached_property
    def key_bits(self) -> int:
        key = self.cert.public_key()
        return getattr(key, "key_size", 0)

    @cached_property
    def ec_curve(self) -> str:
        key = self.cert.public_key()
        return key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else ""

    def sans_for_logging(self) -> list[str]:
        """Envoy's getCertificateSansForLogging: every DNS, URI, e-mail and IP SAN, in the
        certificate's order, as text."""
        return [san_text(g) for g in self._general_names if isinstance(g, _LOGGED)]


_LOGGED = (x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name, x509.IPAddress)


def san_text(name: x509.GeneralName) -> str:
    """A SAN as Envoy's generalNameAsString writes it (IPv6 in full form, as inet_ntop)."""
    value = name.value
    if isinstance(name, x509.IPAddress):
        return str(value) if not isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network) \
            else str(value.network_address)  # fmt: skip
    return str(value)

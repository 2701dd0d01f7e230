"""Certificates for TLS tests, made with ``cryptography``: a CA that issues leaf certificates
with any SAN types (DNS, URI, e-mail, IP), key types (RSA, ECDSA P-256), serials, validity
windows and CRLs, written to PEM files where a config needs a filename.

trustme covers the common case (``trustme.CA().issue_cert("localhost")``); this module is for
what trustme cannot express: URI and e-mail SANs, expired certificates, chosen serials,
revocation lists and a second, unrelated CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)


def _key(kind: str):
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(value: str) -> x509.GeneralName:
    if "://" in value:
        return x509.UniformResourceIdentifier(value)
    if "@" in value:
        return x509.RFC822Name(value)
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


@dataclass
class Leaf:
    """An issued certificate: PEM chain (leaf first) and key, and the parsed leaf."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``<name>.pem`` (the chain) and ``<name>.key``; return their paths."""
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.chain_pem)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


class CA:
    def __init__(self, name: str = "legatus test CA", *, key: str = "rsa") -> None:
        self.key = _key(key)
        self.name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "legatus tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        *sans: str,
        common_name: str | None = None,
        organizational_unit: str | None = None,
        key: str = "rsa",
        serial: int | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        client: bool = True,
        server: bool = True,
    ) -> Leaf:
        leaf_key = _key(key)
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "legatus tests")]
        if organizational_unit:
            attributes.append(
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit)
            )
        if common_name:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                                  (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.name)
            .public_key(leaf_key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(not_before or _NOW - datetime.timedelta(days=1))
            .not_valid_after(not_after or _NOW + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return Leaf(cert=cert, cert_pem=cert_pem, key_pem=_pem_key(leaf_key), chain_pem=cert_pem)

    def crl(self, *revoked: Leaf) -> bytes:
        """A PEM CRL from this CA revoking ``revoked``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(_NOW - datetime.timedelta(days=1))
            .next_update(_NOW + datetime.timedelta(days=30))
        )
        for leaf in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(leaf.cert.serial_number)
                .revocation_date(_NOW - datetime.timedelta(hours=1))
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def expired(ca: CA, *sans: str, **kwargs) -> Leaf:
    """A certificate whose validity ended yesterday."""
    return ca.issue(
        *sans,
        not_before=_NOW - datetime.timedelta(days=30),
        not_after=_NOW - datetime.timedelta(days=1),
        **kwargs,
    )

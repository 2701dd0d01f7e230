"""``TlsCertificate``: a certificate chain and its private key, checked as Envoy checks them.

Envoy reads the DataSources when it builds the context and refuses what BoringSSL will not
load, with its messages (a key that does not match, a chain that is not PEM, an ECDSA key on
another curve than P-256, an RSA key under 2048 bits). A DataSource that cannot be read (a
missing file, an unset environment variable) reads as empty there, so it fails as a missing
certificate or key would. legatus reads the bytes once into a ``TlsCertificate`` and loads
those very bytes into each ``ssl.SSLContext``: Python's ``load_cert_chain`` only takes
paths, so the PEM goes through an anonymous in-memory file (``memfd_create``) rather than a
temporary file on disk, and a file rewritten between the check and the load cannot slip a
different key in.

``pkcs12`` (a PKCS#12 bundle instead of ``certificate_chain`` and ``private_key``) is
opened with ``cryptography`` as BoringSSL opens it: the certificate whose key the bundle
holds is the leaf, the other certificates follow it in the chain, in the bundle's order.
``watched_directory`` only matters to a certificate delivered by SDS from a file (see
``secret_files``); here, as in Envoy, it changes nothing. Neither does a DataSource's own
``watched_directory``: Envoy reads TLS DataSources once, without watching them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails

INLINE = "<inline>"


def data_source_path(source) -> str:
    """How Envoy names a DataSource in messages and ``/certs``: the filename or ``<inline>``."""
    return source.filename if source.WhichOneof("specifier") == "filename" else INLINE


def read_source(source, path: str, missing: str) -> bytes:
    """The bytes of a DataSource; ``missing`` is Envoy's message for a file it cannot read
    (``Failed to load trusted CA certificates from {}``)."""
    which = source.WhichOneof("specifier")
    if which == "filename":
        try:
            with open(source.filename, "rb") as f:
                return f.read()
        except OSError:
            raise ConfigError(
                join_path(path, "filename"), missing.format(source.filename)
            ) from None
    if which == "inline_bytes":
        return source.inline_bytes
    if which == "inline_string":
        return source.inline_string.encode()
    if which == "environment_variable":
        value = os.environ.get(source.environment_variable)
        if value is None:
            raise ConfigError(
                join_path(path, "environment_variable"),
                f"Environment variable doesn't exist: {source.environment_variable}",
            )
        return value.encode()
    return b""


def read_or_empty(source) -> bytes:
    """A TlsCertificate's DataSource as Envoy reads it: what cannot be read is empty."""
    try:
        return read_source(source, "", "{}")
    except ConfigError:
        return b""


def _source_path(source, data: bytes) -> str:
    """Envoy's name for a TlsCertificate DataSource in messages: the filename, else
    ``<inline>`` when it has bytes, else empty."""
    if source.WhichOneof("specifier") == "filename":
        return source.filename
    return INLINE if data else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCertificate:
    name: str  # Envoy's: ``unnamed_cert_<8 hex of sha256(inline bytes)>`` or the secret's
    chain_pem: bytes
    key_pem: bytes
    password: bytes | None
    chain_path: str  # filename or "<inline>"
    leaf: CertificateDetails

    def load_into(self, ctx: ssl.SSLContext) -> None:
        # No password is an empty one: OpenSSL must not ask for one on a terminal.
        with _memory_file(self.chain_pem) as chain, _memory_file(self.key_pem) as key:
            ctx.load_cert_chain(chain, key, password=self.password or b"")


@contextlib.contextmanager
def _memory_file(data: bytes):
    fd = os.memfd_create("legatus-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def certificate_name(proto) -> str:
    """Envoy's name for an inline TlsCertificate (stats, ``/certs``): ``unnamed_cert_`` and
    the first 8 hex digits of the SHA-256 of the chain's ``inline_bytes`` (of nothing, for
    a file or an inline string, as Envoy computes it)."""
    digest = hashlib.sha256(proto.certificate_chain.inline_bytes).hexdigest()
    return f"unnamed_cert_{digest[:8]}"


_SUPPORTED = ("certificate_chain", "private_key", "password", "pkcs12", "watched_directory")


def is_empty(proto) -> bool:
    """A TlsCertificate that names no certificate: Envoy refuses it in a server context and
    leaves a client context without a client certificate."""
    return not (proto.HasField("certificate_chain") or proto.HasField("private_key")
                or proto.HasField("pkcs12") or proto.HasField("private_key_provider"))  # fmt: skip


def compile_certificate(proto, path: str, *, name: str | None = None) -> TlsCertificate:
    if proto.HasField("pkcs12"):
        for field in ("certificate_chain", "private_key", "private_key_provider"):
            if proto.HasField(field):
                raise ConfigError(
                    join_path(path, field),
                    f"Certificate configuration can't have both pkcs12 and {field}",
                )
    check_supported(proto, _SUPPORTED, path, "TlsCertificate")
    password = read_or_empty(proto.password) if proto.HasField("password") else b""
    if proto.HasField("pkcs12"):
        data = read_or_empty(proto.pkcs12)
        if data:
            return _from_pkcs12(proto, data, password, path, name)
        # Nothing to read: Envoy goes on as if there were no bundle, with no chain either.
        raise ConfigError(join_path(path, "pkcs12"), "Failed to load certificate chain from ")
    chain_pem = read_or_empty(proto.certificate_chain)
    key_pem = read_or_empty(proto.private_key)
    chain_path = _source_path(proto.certificate_chain, chain_pem)
    key_path = _source_path(proto.private_key, key_pem)
    if not key_pem:
        raise ConfigError(
            join_path(path, "private_key"),
            f"Failed to load incomplete private key from path: {key_path}",
        )
    if not chain_pem:
        raise ConfigError(
            join_path(path, "certificate_chain"),
            f"Failed to load incomplete certificate from {chain_path}: certificate chain not set",
        )
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(
            join_path(path, "certificate_chain"),
            f"Failed to load certificate chain from {chain_path}",
        )
    leaf = CertificateDetails(certs[0].public_bytes(serialization.Encoding.DER))
    if leaf.key_kind == "ecdsa" and leaf.ec_curve != "secp256r1":
        raise ConfigError(
            join_path(path, "certificate_chain"),
            f"Failed to load certificate chain from {chain_path}, only P-256 ECDSA "
            "certificates are supported",
        )
    _check_rsa_size(leaf, join_path(path, "certificate_chain"), chain_path)
    certificate = TlsCertificate(
        name=name or certificate_name(proto),
        chain_pem=chain_pem,
        key_pem=key_pem,
        password=password or None,
        chain_path=chain_path,
        leaf=leaf,
    )
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        certificate.load_into(probe)
    except ssl.SSLError as e:
        raise ConfigError(
            join_path(path, "private_key"),
            f"Failed to load private key from {key_path}, Cause: {_cause(e, key_pem, password)}",
        ) from None
    return certificate


def _check_rsa_size(leaf: CertificateDetails, path: str, source_path: str) -> None:
    if leaf.key_kind == "rsa" and leaf.key_bits < 2048:
        raise ConfigError(
            path,
            f"Failed to load certificate chain from {source_path}, only RSA certificates with "
            "2048-bit or larger keys are supported",
        )


def _from_pkcs12(proto, data: bytes, password: bytes, path: str, name: str | None):
    """A ``pkcs12`` bundle, refused with Envoy's messages: one that does not open (not
    PKCS#12, a wrong or missing password) and one without a key and its certificate. Unlike
    a PEM chain, any ECDSA curve OpenSSL can sign with is taken, as BoringSSL takes it."""
    source_path = data_source_path(proto.pkcs12)
    ppath = join_path(path, "pkcs12")
    try:
        key, cert, others = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError:
        raise ConfigError(ppath, f"Failed to load pkcs12 from {source_path}") from None
    certs = ([cert] if cert is not None else []) + list(others)
    leaf_cert = None
    if key is not None:
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        leaf_cert = next((c for c in certs if c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == public), None)  # fmt: skip
    if leaf_cert is None:
        raise ConfigError(ppath, f"Failed to load certificate from {source_path}")
    leaf = CertificateDetails(leaf_cert.public_bytes(serialization.Encoding.DER))
    _check_rsa_size(leaf, ppath, source_path)
    chain = [leaf_cert, *(c for c in certs if c is not leaf_cert)]
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    certificate = TlsCertificate(
        name=name or certificate_name(proto),
        chain_pem=chain_pem,
        key_pem=key_pem,
        password=None,
        chain_path=source_path,
        leaf=leaf,
    )
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        certificate.load_into(probe)
    except ssl.SSLError:  # a key OpenSSL cannot use for TLS
        raise ConfigError(ppath, f"Failed to load private key from {source_path}") from None
    return certificate


def _cause(error: ssl.SSLError, key_pem: bytes, password: bytes) -> str:
    """An OpenSSL load error in the shape of Envoy's ``Cause:`` (BoringSSL's
    ``error:<code>:<library>:OPENSSL_internal:<REASON>``) for the usual causes. Python's
    ``ssl`` says only "PEM lib" for a key it cannot decrypt: ``cryptography`` tells why."""
    if error.reason == "KEY_VALUES_MISMATCH":
        return "error:0b000074:X.509 certificate routines:OPENSSL_internal:KEY_VALUES_MISMATCH"
    try:
        serialization.load_pem_private_key(key_pem, password or None)
    except TypeError:  # encrypted, and no password given
        return "error:09000068:PEM routines:OPENSSL_internal:BAD_PASSWORD_READ"
    except ValueError as e:
        if "decrypt" in str(e).lower():
            return "error:1e000065:Cipher functions:OPENSSL_internal:BAD_DECRYPT"
    except UnsupportedAlgorithm:  # told as the usual unreadable key
        pass
    return "error:0900006e:PEM routines:OPENSSL_internal:NO_START_LINE"

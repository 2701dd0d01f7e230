"""``TlsCertificate``: a certificate chain and its private key, checked as Envoy checks them.

Envoy reads the DataSources when it builds the context and refuses what BoringSSL will not
load, with its messages (a key that does not match, a chain that is not PEM, an ECDSA key on
another curve than P-256, an RSA key under 2048 bits). legatus reads the bytes once into a
``TlsCertificate`` and loads those very bytes into each ``ssl.SSLContext``: Python's
``load_cert_chain`` only takes paths, so the PEM goes through an anonymous in-memory file
(``memfd_create``) rather than a temporary file on disk, and a file rewritten between the
check and the load cannot slip a different key in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.transport_sockets.tls.x509_info import CertificateDetails

INLINE = "<inline>"


def data_source_path(source) -> str:
    """How Envoy names a DataSource in messages and ``/certs``: the filename or ``<inline>``."""
    return source.filename if source.WhichOneof("specifier") == "filename" else INLINE


def read_source(source, path: str, missing: str) -> bytes:
    """The bytes of a DataSource; ``missing`` is Envoy's message for a file it cannot read
    (``Failed to load incomplete certificate from path: {}``)."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCertificate:
    name: str  # Envoy's: ``unnamed_cert_<8 hex of sha256(inline bytes)>`` or the secret's
    chain_pem: bytes
    key_pem: bytes
    password: bytes | None
    chain_path: str  # filename or "<inline>"
    leaf: CertificateDetails

    def load_into(self, ctx: ssl.SSLContext) -> None:
        with _memory_file(self.chain_pem) as chain, _memory_file(self.key_pem) as key:
            ctx.load_cert_chain(chain, key, password=self.password)


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


_SUPPORTED = ("certificate_chain", "private_key", "password")


def compile_certificate(proto, path: str, *, name: str | None = None) -> TlsCertificate:
    check_supported(proto, _SUPPORTED, path, "TlsCertificate")
    chain_source = proto.certificate_chain
    key_source = proto.private_key
    chain_path = data_source_path(chain_source)
    key_path = data_source_path(key_source)
    chain_pem = read_source(
        chain_source,
        join_path(path, "certificate_chain"),
        "Failed to load incomplete certificate from path: {}",
    )
    key_pem = read_source(
        key_source,
        join_path(path, "private_key"),
        "Failed to load incomplete private key from path: {}",
    )
    password = None
    if proto.HasField("password"):
        password = read_source(
            proto.password, join_path(path, "password"), "Failed to load password from path: {}"
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
    if leaf.key_kind == "rsa" and leaf.key_bits < 2048:
        raise ConfigError(
            join_path(path, "certificate_chain"),
            f"Failed to load certificate chain from {chain_path}, only RSA certificates with "
            "2048-bit or larger keys are supported",
        )
    certificate = TlsCertificate(
        name=name or certificate_name(proto),
        chain_pem=chain_pem,
        key_pem=key_pem,
        password=password,
        chain_path=chain_path,
        leaf=leaf,
    )
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        certificate.load_into(probe)
    except ssl.SSLError as e:
        raise ConfigError(
            join_path(path, "private_key"),
            f"Failed to load private key from {key_path}, Cause: {_cause(e)}",
        ) from None
    return certificate


def _cause(error: ssl.SSLError) -> str:
    """An OpenSSL load error in the shape of Envoy's ``Cause:`` (BoringSSL's
    ``error:<code>:<library>:OPENSSL_internal:<REASON>``) for the two usual causes."""
    if error.reason == "KEY_VALUES_MISMATCH":
        return "error:0b000074:X.509 certificate routines:OPENSSL_internal:KEY_VALUES_MISMATCH"
    return "error:0900006e:PEM routines:OPENSSL_internal:NO_START_LINE"

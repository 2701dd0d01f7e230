"""Certificate sources and chain depth: PKCS#12 bundles and TlsCertificate DataSources compiled
with Envoy 1.40's messages, ``watched_directory`` accepted where it has no effect, and
``max_verify_depth`` checked on a server ``SslSocket`` against Python's TLS client in memory
(the TLS 1.2 alert, the TLS 1.3 close, a rejected session that comes back)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.extensions.transport_sockets.tls.context_config import (
    DownstreamTlsContext,
    UpstreamTlsContext,
    compile_downstream,
    compile_upstream,
)
from legatus.extensions.transport_sockets.tls.errors import TlsFailure
from legatus.extensions.transport_sockets.tls.ssl_socket import SslState
from tests.support.certs import CA
from tests.unit.extensions.transport_sockets.tls_helpers import (
    cert_entry,
    client_context,
    server_context,
)

NOW = datetime.datetime.now(datetime.UTC)


def _intermediate(parent: CA, name: str) -> CA:
    ca = CA.__new__(CA)
    ca.key = ec.generate_private_key(ec.SECP256R1())
    ca.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca.cert = (
        x509.CertificateBuilder()
        .subject_name(ca.name)
        .issuer_name(parent.name)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(parent.key, hashes.SHA256())
    )
    ca.cert_pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    return ca


@pytest.fixture(scope="module")
def pki():
    root = CA("root")
    int1 = _intermediate(root, "int1")
    int2 = _intermediate(int1, "int2")
    return root, int1, int2


def _p12(leaf, extra=(), password: bytes | None = None) -> str:
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())  # fmt: skip
    extra_certs = [c.cert for c in extra] or None
    data = pkcs12.serialize_key_and_certificates(b"x", key, leaf.cert, extra_certs, encryption)
    return base64.b64encode(data).decode()


def _downstream(*certificates, **common):
    config = {"common_tls_context": {"tls_certificates": list(certificates), **common}}
    return compile_downstream(parse(config, DownstreamTlsContext), "tls")


def _error(*certificates, upstream: bool = False) -> ConfigError:
    config = {"common_tls_context": {"tls_certificates": list(certificates)}}
    with pytest.raises(ConfigError) as e:
        if upstream:
            compile_upstream(parse(config, UpstreamTlsContext), "tls")
        else:
            compile_downstream(parse(config, DownstreamTlsContext), "tls")
    return e.value


# PKCS#12 ----------------------------------------------------------------------------------


def test_pkcs12_leaf_key_and_chain(pki):
    _, int1, _ = pki
    leaf = int1.issue("localhost", common_name="bundled")
    config = _downstream({"pkcs12": {"inline_bytes": _p12(leaf, [int1], b"pw")},
                          "password": {"inline_string": "pw"}})  # fmt: skip
    cert = config.common.certificates[0]
    assert cert.leaf.common_name == "bundled"
    assert cert.chain_path == "<inline>"
    chain = x509.load_pem_x509_certificates(cert.chain_pem)
    assert [c.subject for c in chain] == [leaf.cert.subject, int1.name]
    assert cert.password is None  # the key is held decrypted, as BoringSSL holds it


def test_pkcs12_errors_as_envoy(pki, tmp_path):
    root, int1, _ = pki
    leaf = int1.issue("localhost")
    with_password = _p12(leaf, password=b"pw")
    e = _error({"pkcs12": {"inline_bytes": with_password}})
    assert (e.path, e.message) == ("tls.common_tls_context.tls_certificates[0].pkcs12",
                                   "Failed to load pkcs12 from <inline>")  # fmt: skip
    e = _error({"pkcs12": {"inline_bytes": with_password}, "password": {"inline_string": "no"}})
    assert e.message == "Failed to load pkcs12 from <inline>"
    path = tmp_path / "b.p12"
    path.write_bytes(base64.b64decode(_p12(leaf)))
    e = _error({"pkcs12": {"filename": str(path)}, "password": {"inline_string": "x"}})
    assert e.message == f"Failed to load pkcs12 from {path}"  # a password it does not need
    e = _error({"pkcs12": {"filename": str(tmp_path / "none.p12")}})
    assert e.message == "Failed to load certificate chain from "  # unreadable reads as empty
    e = _error({"pkcs12": {"filename": str(path)}, "private_key": {"inline_string": "k"}})
    assert e.message == "Certificate configuration can't have both pkcs12 and private_key"
    certs_only = pkcs12.serialize_key_and_certificates(
        None, None, None, [root.cert], serialization.NoEncryption())  # fmt: skip
    e = _error({"pkcs12": {"inline_bytes": base64.b64encode(certs_only).decode()}})
    assert e.message == "Failed to load certificate from <inline>"
    small_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    small = (x509.CertificateBuilder().subject_name(root.name).issuer_name(root.name)
             .public_key(small_key.public_key()).serial_number(1)
             .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
             .sign(root.key, hashes.SHA256()))  # fmt: skip
    data = pkcs12.serialize_key_and_certificates(b"x", small_key, small, None,
                                                 serialization.NoEncryption())  # fmt: skip
    e = _error({"pkcs12": {"inline_bytes": base64.b64encode(data).decode()}})
    assert e.message == ("Failed to load certificate chain from <inline>, only RSA certificates "
                         "with 2048-bit or larger keys are supported")  # fmt: skip


def test_pkcs12_takes_any_ecdsa_curve(pki):
    """Unlike a PEM chain (P-256 only), a bundle's ECDSA key may be on P-384, as in Envoy."""
    root, _, _ = pki
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(root.name).issuer_name(root.name)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .sign(root.key, hashes.SHA256()))  # fmt: skip
    data = pkcs12.serialize_key_and_certificates(b"x", key, cert, None,
                                                 serialization.NoEncryption())  # fmt: skip
    config = _downstream({"pkcs12": {"inline_bytes": base64.b64encode(data).decode()}})
    assert config.common.certificates[0].leaf.ec_curve == "secp384r1"


# PEM sources: what cannot be read is empty, with Envoy's messages ---------------------------


def test_incomplete_certificates_as_envoy(pki, tmp_path):
    _, int1, _ = pki
    leaf = int1.issue("localhost")
    cert_path, key_path = leaf.write(tmp_path, "l")
    missing = str(tmp_path / "missing")
    cases = [
        ({"certificate_chain": {"filename": str(cert_path)},
          "private_key": {"filename": missing}},
         f"Failed to load incomplete private key from path: {missing}"),
        ({"certificate_chain": {"filename": missing}, "private_key": {"filename": str(key_path)}},
         f"Failed to load incomplete certificate from {missing}: certificate chain not set"),
        ({"private_key": {"filename": str(key_path)}},
         "Failed to load incomplete certificate from : certificate chain not set"),
        ({"certificate_chain": {"environment_variable": "LEGATUS_TEST_UNSET"},
          "private_key": {"filename": str(key_path)}},
         "Failed to load incomplete certificate from : certificate chain not set"),
        ({"certificate_chain": {"filename": str(cert_path)}},
         "Failed to load incomplete private key from path: "),
        ({"password": {"inline_string": "x"}},
         "Server TlsCertificates must have a certificate specified"),
    ]  # fmt: skip
    for certificate, message in cases:
        assert _error(certificate).message == message, certificate


def test_encrypted_key_causes_as_envoy(pki, tmp_path):
    _, int1, _ = pki
    leaf = int1.issue("localhost")
    key = serialization.load_pem_private_key(leaf.key_pem, None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw"))  # fmt: skip
    entry = {"certificate_chain": {"inline_string": leaf.chain_pem.decode()},
             "private_key": {"inline_string": encrypted.decode()}}  # fmt: skip
    _downstream({**entry, "password": {"inline_string": "pw"}})
    e = _error({**entry, "password": {"inline_string": "bad"}})
    assert e.message.endswith("Cause: error:1e000065:Cipher functions:OPENSSL_internal:BAD_DECRYPT")
    e = _error({**entry, "password": {"filename": str(tmp_path / "missing")}})
    assert e.message.endswith("Cause: error:09000068:PEM routines:OPENSSL_internal:"
                              "BAD_PASSWORD_READ")  # fmt: skip


def test_an_empty_certificate_is_no_client_certificate(pki):
    config = compile_upstream(parse({"common_tls_context": {"tls_certificates": [
        {"password": {"inline_string": "x"}}]}}, UpstreamTlsContext), "tls")  # fmt: skip
    assert config.common.certificates == ()


def test_watched_directory_outside_sds_changes_nothing(pki, tmp_path):
    """As in Envoy: it matters to secrets from SDS files only (see test_secret_files)."""
    _, int1, _ = pki
    leaf = int1.issue("localhost", common_name="watched")
    entry = {**cert_entry(leaf), "watched_directory": {"path": str(tmp_path)}}
    config = _downstream(entry, validation_context={
        "trusted_ca": {"inline_string": int1.cert_pem.decode()},
        "watched_directory": {"path": str(tmp_path)}})  # fmt: skip
    assert config.common.certificates[0].leaf.common_name == "watched"
    assert config.common.validation.ca_pem == int1.cert_pem


# max_verify_depth -------------------------------------------------------------------------


def test_max_verify_depth_config(pki):
    root, int1, _ = pki
    leaf = int1.issue("localhost")

    def compiled(depth):
        return _downstream(cert_entry(leaf), validation_context={
            "trusted_ca": {"inline_string": root.cert_pem.decode()},
            "max_verify_depth": depth}).common.validation  # fmt: skip

    assert [compiled(d).max_intermediates for d in (0, 1, 2, 100)] == [0, 0, 1, 99]
    v = compiled(2)
    assert v.chain_too_deep(3) is None  # leaf, one intermediate, the anchor
    assert v.chain_too_deep(4) == (
        "verify cert failed: X509_verify_cert: certificate verification error at depth 2: "
        "unable to get local issuer certificate"
    )
    with pytest.raises(ConfigError) as e:
        compiled(101)
    assert e.value.message == "value must be less than or equal to 100"


@pytest.fixture
def deep_client(pki, tmp_path):
    """A client certificate under int2: leaf, int2, int1, then the root."""
    _, int1, int2 = pki
    leaf = int2.issue("client.example.com", common_name="deep")
    chain, key = tmp_path / "deep.pem", tmp_path / "deep.key"
    chain.write_bytes(leaf.cert_pem + int2.cert_pem + int1.cert_pem)
    key.write_bytes(leaf.key_pem)
    return str(chain), str(key)


def _depth_server(pki, depth: int, *, anchor=None, **extra):
    root, int1, _ = pki
    server = int1.issue("localhost")
    return server_context({
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [cert_entry(server)],
            "validation_context": {
                "trusted_ca": {"inline_string": (anchor or root).cert_pem.decode()},
                "max_verify_depth": depth}},
        **extra,
    })  # fmt: skip


def _client_ctx(pki, cert, max_version) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's chain is not what is tested
    ctx.load_cert_chain(*cert)
    ctx.maximum_version = max_version
    return ctx


@dataclasses.dataclass
class Run:
    client: ssl.SSLObject
    client_error: ssl.SSLError | None = None
    failure: TlsFailure | None = None  # the server's
    sent_after_failure: bytes = b""  # what the server sent the client once it failed


def _run(sock, ctx: ssl.SSLContext, session=None) -> Run:
    """Pump a handshake between ``sock`` (a server SslSocket) and Python's client."""
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    run = Run(ctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session))
    for _ in range(8):
        try:
            run.client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            run.client_error = e
            break
        data = c_out.read()
        if data and run.failure is None:
            try:
                sock.receive(data)
            except TlsFailure as failure:
                run.failure = failure
                out = sock.outgoing()
                run.sent_after_failure = out
                c_in.write(out)
                continue
        c_in.write(sock.outgoing())
    return run


def _stats(store, prefix="listener.test.ssl."):
    return {s.name[len(prefix):]: s.value for s in store
            if s.name.startswith(prefix) and s.value}  # fmt: skip


def test_too_deep_tls12_client_gets_unknown_ca(pki, deep_client):
    ctx, store = _depth_server(pki, 2)  # one intermediate: int2, int1 is one too many
    sock = ctx.new_socket()
    run = _run(sock, _client_ctx(pki, deep_client, ssl.TLSVersion.TLSv1_2))
    assert sock.state is SslState.FAILED
    # In place of the server's Finished, a fatal unknown_ca alert in the clear: the client's
    # handshake fails, as with Envoy.
    assert run.sent_after_failure == bytes.fromhex("15030300020230")
    assert run.client_error.reason == "TLSV1_ALERT_UNKNOWN_CA"
    assert run.failure.reason == (
        "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
        "verify cert failed: X509_verify_cert: certificate verification error at depth 2: "
        "unable to get local issuer certificate:TLS_error_end"
    )
    assert _stats(store) == {"fail_verify_error": 1}


def test_too_deep_tls13_client_sees_no_ticket(pki, deep_client):
    ctx, store = _depth_server(pki, 1)
    sock = ctx.new_socket()
    run = _run(sock, _client_ctx(pki, deep_client, ssl.TLSVersion.TLSv1_3))
    assert run.failure is not None and run.client_error is None  # the client is done first
    assert run.sent_after_failure == b""  # the session tickets OpenSSL wrote are dropped
    assert _stats(store) == {"fail_verify_error": 1}


def test_deep_enough_and_partial_chains_pass(pki, deep_client):
    _, _, int2 = pki
    for depth, anchor in ((3, None), (0, int2)):  # a trusted int2 is the anchor, at depth 1
        ctx, store = _depth_server(pki, depth, anchor=anchor)
        sock = ctx.new_socket()
        _run(sock, _client_ctx(pki, deep_client, ssl.TLSVersion.TLSv1_3))
        assert sock.state is SslState.OPEN, depth
        assert _stats(store)["handshake"] == 1


def test_a_rejected_session_does_not_resume(pki, tmp_path):
    """OpenSSL caches a TLS 1.2 session before the depth check: its resumption is refused."""
    _, int1, _ = pki
    ctx, store = _depth_server(pki, 2, disable_stateless_session_resumption=True)
    leaf = int1.issue("client.example.com")
    chain, key = tmp_path / "c.pem", tmp_path / "c.key"
    chain.write_bytes(leaf.cert_pem + int1.cert_pem)
    key.write_bytes(leaf.key_pem)
    client_ctx = _client_ctx(pki, (str(chain), str(key)), ssl.TLSVersion.TLSv1_2)
    sock = ctx.new_socket()
    client = _run(sock, client_ctx).client
    assert sock.state is SslState.OPEN
    detail = "verify cert failed: a session rejected before"
    ctx.reject_session(sock._obj.session, detail)  # as if its chain had been too deep
    again = ctx.new_socket()
    run = _run(again, client_ctx, session=client.session)
    assert again.state is SslState.FAILED and detail in run.failure.reason
    assert _stats(store)["fail_verify_error"] == 1
    # An accepted session resumes.
    other = ctx.new_socket()
    client = _run(other, client_ctx).client
    resumed = ctx.new_socket()
    _run(resumed, client_ctx, session=client.session)
    assert resumed.state is SslState.OPEN and resumed.info.session_reused


def test_cluster_max_verify_depth_has_no_effect(pki, tmp_path):
    """Envoy 1.40 sets the verify depth on server contexts only: a client context takes a
    chain deeper than its max_verify_depth."""
    root, int1, int2 = pki
    leaf = int2.issue("localhost")
    chain, key = tmp_path / "s.pem", tmp_path / "s.key"
    chain.write_bytes(leaf.cert_pem + int2.cert_pem + int1.cert_pem)
    key.write_bytes(leaf.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain, key)
    validation = {"trusted_ca": {"inline_string": root.cert_pem.decode()}, "max_verify_depth": 0}
    ctx, store = client_context(
        {"sni": "localhost", "common_tls_context": {"validation_context": validation}}
    )
    sock = ctx.new_socket()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(5):
        s_in.write(sock.outgoing())
        with contextlib.suppress(ssl.SSLWantReadError):
            s.do_handshake()
        data = s_out.read()
        if data:
            sock.receive(data)
    assert sock.state is SslState.OPEN
    assert _stats(store, "cluster.test.ssl.")["handshake"] == 1

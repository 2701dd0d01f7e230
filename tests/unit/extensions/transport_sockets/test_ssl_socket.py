"""The server and client ``SslSocket`` (sans-I/O) against Python's own TLS peers in memory:
handshakes, stats as Envoy counts them, certificate selection, verification failures."""

from __future__ import annotations

import contextlib
import ssl

import pytest

from legatus.extensions.transport_sockets.tls.errors import TlsFailure
from legatus.extensions.transport_sockets.tls.ssl_socket import SslState
from tests.support.certs import CA
from tests.unit.extensions.transport_sockets.tls_helpers import (
    cert_entry,
    client_context,
    handshake,
    python_client,
    server_context,
)


@pytest.fixture(scope="module")
def ca():
    return CA()


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue("localhost", "*.example.com", common_name="localhost")


def _stats(store, prefix="listener.test.ssl."):
    return {
        s.name[len(prefix):]: s.value
        for s in store
        if s.name.startswith(prefix) and s.value
    }  # fmt: skip


def test_handshake_alpn_and_stats(ca, leaf):
    ctx, store = server_context(
        {"common_tls_context": {"tls_certificates": [cert_entry(leaf)],
                                "alpn_protocols": ["h2", "http/1.1"]}}
    )  # fmt: skip
    sock = ctx.new_socket()
    client, c_in, c_out = python_client(ca=ca.cert_pem, alpn=["http/1.1"], sni="www.example.com")
    handshake(sock, client, c_in, c_out)
    assert sock.state is SslState.OPEN
    info = sock.info
    assert info.alpn == "http/1.1"
    assert info.server_name == "www.example.com"
    assert info.version == "TLSv1.3"
    assert info.local_certificate.subject == "CN=localhost,O=legatus tests"
    assert info.peer_certificate is None
    assert _stats(store) == {
        "handshake": 1,
        "no_certificate": 1,
        "versions.TLSv1.3": 1,
        f"ciphers.{info.cipher}": 1,
        "curves.X25519": 1,
    }
    # Application data both ways.
    client.write(b"ping")
    assert sock.receive(c_out.read()) == b"ping"
    sock.send(b"pong")
    c_in.write(sock.outgoing())
    assert client.read(100) == b"pong"


def test_equal_preference_group_follows_the_client(ca, leaf):
    """Envoy's default [ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]: the
    client's order decides within the group; AES256 only if it offers neither."""
    ctx, _store = server_context({"common_tls_context": {"tls_certificates": [cert_entry(leaf)]}})
    for offer, want in [
        ("ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"),
        ("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-GCM-SHA256"),
        ("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
        ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
    ]:
        sock = ctx.new_socket()
        client, c_in, c_out = python_client(max_version=ssl.TLSVersion.TLSv1_2, ciphers=offer)
        handshake(sock, client, c_in, c_out)
        assert sock.info.cipher == want, offer


def test_certificate_by_sni_and_key_type(ca):
    rsa_a = ca.issue("a.example.com", common_name="rsa-a")
    ecdsa_a = ca.issue("a.example.com", common_name="ecdsa-a", key="ecdsa")
    rsa_b = ca.issue("*.b.example.com", common_name="rsa-b")
    ctx, _ = server_context(
        {"common_tls_context": {"tls_certificates": [cert_entry(c) for c in (rsa_a, ecdsa_a,
                                                                            rsa_b)]}}
    )  # fmt: skip

    def served(sni, **kwargs):
        sock = ctx.new_socket()
        client, c_in, c_out = python_client(sni=sni, **kwargs)
        handshake(sock, client, c_in, c_out)
        return sock.info.local_certificate.common_name

    assert served("a.example.com") == "ecdsa-a"  # an ECDSA-capable client gets ECDSA
    assert served("a.example.com", max_version=ssl.TLSVersion.TLSv1_2,
                  ciphers="ECDHE-RSA-AES128-GCM-SHA256") == "rsa-a"  # fmt: skip
    assert served("x.b.example.com") == "rsa-b"  # wildcard
    assert served("nothing.test") == "rsa-a"  # SNI matches nothing: the first certificate
    # no SNI: a full scan for the first one that fits the client
    assert served(None) == "ecdsa-a"


def test_mtls_accept_and_stats(ca, leaf, tmp_path):
    client_leaf = ca.issue("spiffe://example.com/client", common_name="client")
    ctx, store = server_context(
        {
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [cert_entry(leaf)],
                "validation_context": {
                    "trusted_ca": {"inline_string": ca.cert_pem.decode()},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": "spiffe://example.com/"}}
                    ],
                },
            },
        }
    )
    sock = ctx.new_socket()
    client, c_in, c_out = python_client(ca=ca.cert_pem, cert=client_leaf.write(tmp_path, "c"))
    handshake(sock, client, c_in, c_out)
    assert sock.state is SslState.OPEN
    peer = sock.info.peer_certificate
    assert peer.uri_sans == ("spiffe://example.com/client",)
    assert peer.subject == "CN=client,O=legatus tests"
    assert sock.info.peer_certificate_validated
    assert "no_certificate" not in _stats(store)


def _failing(ctx, **client_kwargs) -> TlsFailure:
    sock = ctx.new_socket()
    client, c_in, c_out = python_client(**client_kwargs)
    with pytest.raises(TlsFailure) as failure:
        for _ in range(6):
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                pass
            data = c_out.read()
            if data:
                sock.receive(data)
            c_in.write(sock.outgoing())
    assert sock.state is SslState.FAILED
    return failure.value


def _mtls(ca, leaf, **validation):
    return server_context(
        {
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [cert_entry(leaf)],
                "validation_context": {
                    "trusted_ca": {"inline_string": ca.cert_pem.decode()},
                    **validation,
                },
            },
        }
    )


def test_mtls_rejections_are_counted_as_envoy(ca, leaf, tmp_path):
    ctx, store = _mtls(ca, leaf)
    failure = _failing(ctx)  # no client certificate
    assert failure.reason == (
        "TLS_error:|268435648:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE:"
        "peer did not provide required client certificate:TLS_error_end"
    )
    rogue = CA("rogue CA").issue("client", common_name="rogue").write(tmp_path, "rogue")
    failure = _failing(ctx, cert=rogue)
    assert failure.reason.startswith(
        "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
        "verify cert failed: X509_verify_cert: certificate verification error"
    )
    assert failure.reason.endswith("unable to get local issuer certificate:TLS_error_end")
    assert _stats(store) == {"fail_verify_no_cert": 1, "fail_verify_error": 1}


def test_san_and_hash_mismatch(ca, leaf, tmp_path):
    other = ca.issue("spiffe://other/x", "dns.example.com", common_name="other")
    paths = other.write(tmp_path, "other")
    ctx, store = _mtls(
        ca, leaf,
        match_typed_subject_alt_names=[{"san_type": "URI", "matcher": {"exact": "spiffe://a"}}],
    )  # fmt: skip
    failure = _failing(ctx, cert=paths)
    assert failure.reason == (
        "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:"
        "verify cert failed: SAN matcher, certificate SANs are [spiffe://other/x, "
        "dns.example.com]:TLS_error_end"
    )
    assert _stats(store) == {"fail_verify_san": 1}
    ctx, store = _mtls(ca, leaf, verify_certificate_hash=["ab" * 32])
    _failing(ctx, cert=paths)
    assert _stats(store) == {"fail_verify_cert_hash": 1}
    ctx, store = _mtls(ca, leaf, verify_certificate_hash=[other.cert.fingerprint(
        __import__("cryptography.hazmat.primitives.hashes").hazmat.primitives.hashes.SHA256()
    ).hex()])  # fmt: skip
    sock = ctx.new_socket()
    client, c_in, c_out = python_client(cert=paths)
    handshake(sock, client, c_in, c_out)
    assert sock.state is SslState.OPEN


def test_plaintext_is_a_connection_error(ca, leaf):
    ctx, store = server_context({"common_tls_context": {"tls_certificates": [cert_entry(leaf)]}})
    sock = ctx.new_socket()
    with pytest.raises(TlsFailure) as failure:
        sock.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "HTTP_REQUEST" in failure.value.reason
    assert failure.value.reason.startswith("TLS_error:|268435612:")
    assert _stats(store) == {"connection_error": 1}


def test_version_and_curve_restrictions(ca, leaf):
    ctx, store = server_context(
        {"common_tls_context": {
            "tls_certificates": [cert_entry(leaf)],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "ecdh_curves": ["P-256"]},
        }}
    )  # fmt: skip
    _failing(ctx, max_version=ssl.TLSVersion.TLSv1_2)
    _failing(ctx, curve="X25519")
    sock = ctx.new_socket()
    client, c_in, c_out = python_client(curve="prime256v1")
    handshake(sock, client, c_in, c_out)
    assert _stats(store) == {
        "connection_error": 2, "handshake": 1, "no_certificate": 1, "versions.TLSv1.3": 1,
        f"ciphers.{sock.info.cipher}": 1, "curves.P-256": 1,
    }  # fmt: skip


def test_require_sni(ca, leaf):
    ctx, store = server_context(
        {"require_sni": True, "common_tls_context": {"tls_certificates": [cert_entry(leaf)]}}
    )
    _failing(ctx, sni=None)
    assert _stats(store) == {"connection_error": 1}


def test_client_socket_against_python_server(ca, leaf, tmp_path):
    cert, key = leaf.write(tmp_path, "srv")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.set_alpn_protocols(["h2"])
    ctx, store = client_context(
        {"sni": "localhost", "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "validation_context": {
                "trusted_ca": {"inline_string": ca.cert_pem.decode()},
                "match_typed_subject_alt_names": [{"san_type": "DNS",
                                                   "matcher": {"exact": "x.example.com"}}],
            }}}
    )  # fmt: skip
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
    assert sock.info.alpn == "h2"
    assert sock.info.server_name == "localhost"
    # The exact DNS matcher follows the certificate's wildcard SAN, as Envoy's.
    assert sock.info.peer_certificate.dns_sans == ("localhost", "*.example.com")
    assert _stats(store, "cluster.test.ssl.")["handshake"] == 1


def _client_handshake(sock, server_ctx):
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    names = []
    server_ctx.sni_callback = lambda obj, name, _ctx: names.append(name)
    for _ in range(5):
        s_in.write(sock.outgoing())
        with contextlib.suppress(ssl.SSLWantReadError):
            s.do_handshake()
        data = s_out.read()
        if data:
            sock.receive(data)
    return names


class _Host:
    def __init__(self, hostname):
        self.config = type("C", (), {"hostname": hostname})()


def test_auto_host_sni_and_auto_sni_san_validation(ca, leaf, tmp_path):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*leaf.write(tmp_path, "srv"))
    ctx, store = client_context(
        {"auto_host_sni": True, "auto_sni_san_validation": True, "common_tls_context": {
            "validation_context": {"trusted_ca": {"inline_string": ca.cert_pem.decode()}}}}
    )  # fmt: skip
    sock = ctx.new_socket(host=_Host("www.example.com"))
    assert _client_handshake(sock, server) == ["www.example.com"]
    assert sock.state is SslState.OPEN  # *.example.com covers it
    sock = ctx.new_socket(host=_Host("nope.example.org"))
    with pytest.raises(TlsFailure) as failure:
        _client_handshake(sock, server)
    assert "verify cert failed: SAN matcher" in failure.value.reason
    assert _stats(store, "cluster.test.ssl.")["fail_verify_san"] == 1


def test_tls12_peer_chain_gives_the_depth_and_sigalg(ca, leaf, tmp_path):
    """TLS 1.2 shows the certificates and the signature algorithm in the clear: the depth of
    a verification error and ssl.sigalgs.* are reported as Envoy reports them."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*CA("unknown CA").issue("localhost").write(tmp_path, "unknown"))
    ctx, store = client_context(
        {"common_tls_context": {"validation_context": {
            "trusted_ca": {"inline_string": ca.cert_pem.decode()}}}}
    )  # fmt: skip
    with pytest.raises(TlsFailure) as failure:
        _client_handshake(ctx.new_socket(), server)
    assert failure.value.reason == (
        "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify "
        "cert failed: X509_verify_cert: certificate verification error at depth 0: unable to "
        "get local issuer certificate:TLS_error_end"
    )
    good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    good.load_cert_chain(*leaf.write(tmp_path, "srv"))
    sock = ctx.new_socket()
    _client_handshake(sock, good)
    assert sock.state is SslState.OPEN
    assert _stats(store, "cluster.test.ssl.")["sigalgs.rsa_pss_rsae_sha256"] == 1

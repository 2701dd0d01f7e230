"""The sans-I/O readers of cleartext handshake messages (hello.py), fed by real OpenSSL."""

from __future__ import annotations

import contextlib
import ssl

import pytest

from legatus.extensions.transport_sockets.tls.hello import (
    ClientHelloParser,
    HandshakeReader,
    ParseState,
)
from tests.support.certs import CA


def _client_hello(*, sni="example.com", alpn=("h2", "http/1.1"), max_version=None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version:
        ctx.maximum_version = max_version
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_client_hello_sni_alpn_versions():
    parser = ClientHelloParser()
    assert parser.feed(_client_hello()) is ParseState.DONE
    hello = parser.hello
    assert hello.server_name == "example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.offers_tls13
    assert 0xC02F in hello.cipher_suites  # ECDHE-RSA-AES128-GCM-SHA256
    assert 0x001D in hello.groups  # X25519
    assert hello.ecdsa_capable()
    assert parser.bytes_processed == len(_client_hello())


def test_client_hello_byte_by_byte_and_without_sni_or_alpn():
    data = _client_hello(sni=None, alpn=None, max_version=ssl.TLSVersion.TLSv1_2)
    parser = ClientHelloParser()
    states = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert states[-1] is ParseState.DONE
    assert set(states[:-1]) == {ParseState.NEED_MORE}
    assert parser.hello.server_name == ""
    assert parser.hello.alpn == () and not parser.hello.has_alpn
    assert not parser.hello.offers_tls13


def test_client_hello_split_across_records():
    data = _client_hello()
    body = data[5:]
    # The same handshake message in two records.
    half = len(body) // 2
    split = (
        bytes([22, 3, 1]) + half.to_bytes(2, "big") + body[:half]
        + bytes([22, 3, 1]) + (len(body) - half).to_bytes(2, "big") + body[half:]
    )  # fmt: skip
    parser = ClientHelloParser()
    assert parser.feed(split) is ParseState.DONE
    assert parser.hello.server_name == "example.com"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x02", b"\x17\x03\x03\x00\x05"])
def test_not_tls(data):
    assert ClientHelloParser().feed(data) is ParseState.NOT_TLS


def test_too_large():
    parser = ClientHelloParser(max_size=100)
    # A record header announcing a big record, then bytes that never complete it.
    assert parser.feed(bytes([22, 3, 1, 0x40, 0x00]) + b"\x01" * 200) is ParseState.TOO_LARGE


@pytest.mark.parametrize(
    ("version", "curve", "group"),
    [
        (ssl.TLSVersion.TLSv1_3, "X25519", 0x001D),
        (ssl.TLSVersion.TLSv1_3, "prime256v1", 0x0017),
        (ssl.TLSVersion.TLSv1_2, "X25519", 0x001D),
        (ssl.TLSVersion.TLSv1_2, "secp384r1", 0x0018),
    ],
)
def test_server_hello_group(tmp_path, version, curve, group):
    ca = CA()
    cert, key = ca.issue("localhost").write(tmp_path, "srv")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.set_ecdh_curve(curve)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.maximum_version = version
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    reader = HandshakeReader()
    for _ in range(4):
        for obj in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        flight = s_out.read()
        reader.feed(flight[:7])  # in pieces, as TCP may deliver it
        reader.feed(flight[7:])
        c_in.write(flight)
    assert reader.done
    assert reader.group == group

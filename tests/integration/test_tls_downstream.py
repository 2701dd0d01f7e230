"""Downstream TLS (envoy.transport_sockets.tls on a filter chain) end to end: a legatus
process, real TLS clients (curl, httpx, Python's ssl), real sockets."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import start_proxy, wait_for
from tests.support.tls import (
    TlsFiles,
    client_context,
    downstream_tls,
    tls_connect,
)
from tests.support.upstreams import EchoServer, tcp_proxy_config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return TlsFiles.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def upstream():
    server = HttpUpstream()
    yield server
    server.close()


def _https_proxy(tmp_path, files, upstream, transport_socket, **kwargs):
    config = http_proxy_config(upstream.port, **kwargs)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = (
        transport_socket
    )
    return start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])


def _ssl_stats(proxy) -> dict:
    return {
        k.split(".ssl.", 1)[1]: v
        for k, v in proxy.stats().items()
        if k.startswith("listener.127.0.0.1_") and ".ssl." in k and v
    }


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True,
                          text=True)  # fmt: skip


def test_https_with_curl_and_httpx(tmp_path, files, upstream):
    proxy = _https_proxy(tmp_path, files, upstream, downstream_tls(files.server))
    try:
        port = proxy.listener_port("http")
        r = _curl("--cacert", str(files.ca_path), "--resolve", f"localhost:{port}:127.0.0.1",
                  f"https://localhost:{port}/echo")  # fmt: skip
        assert r.returncode == 0, r.stderr
        echoed = json.loads(r.stdout)
        headers = dict(echoed["headers"])
        assert headers["x-forwarded-proto"] == "https"
        with httpx.Client(verify=client_context(files)) as client:
            for _ in range(3):  # keep-alive over one TLS connection
                resp = client.get(f"https://localhost:{port}/echo")
                assert resp.status_code == 200
        stats = _ssl_stats(proxy)
        assert stats["handshake"] == 2
        assert stats["no_certificate"] == 2
        assert stats["versions.TLSv1.3"] == 2
    finally:
        proxy.stop()


def test_mtls_accept_and_reject(tmp_path, files, upstream):
    proxy = _https_proxy(
        tmp_path, files, upstream,
        downstream_tls(files.server, ca=files.ca_path, require_client=True),
    )  # fmt: skip
    try:
        port = proxy.listener_port("http")
        base = ["--cacert", str(files.ca_path), "--resolve", f"localhost:{port}:127.0.0.1"]
        url = f"https://localhost:{port}/echo"
        ok = _curl(*base, "--cert", str(files.client[0]), "--key", str(files.client[1]), url)
        assert ok.returncode == 0, ok.stderr
        no_cert = _curl(*base, url)
        assert no_cert.returncode != 0
        rogue = _curl(*base, "--cert", str(files.rogue[0]), "--key", str(files.rogue[1]), url)
        assert rogue.returncode != 0
        wait_for(lambda: _ssl_stats(proxy).get("fail_verify_error") == 1, what="verify error")
        stats = _ssl_stats(proxy)
        assert stats["handshake"] == 1
        assert stats["fail_verify_no_cert"] == 1
        assert "connection_error" not in stats
        assert "no_certificate" not in stats
    finally:
        proxy.stop()


def test_failed_handshake_closes_only_that_connection(tmp_path, files):
    """A TLS echo through tcp_proxy keeps working while other connections fail their
    handshakes; each failure is counted."""
    echo = EchoServer()
    config = tcp_proxy_config(upstream_port=echo.port)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = (
        downstream_tls(files.server)
    )
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        good = tls_connect(port, client_context(files))
        good.sendall(b"hello")
        assert good.recv(100) == b"hello"
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
                plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = plain.recv(100)  # an alert, then the close
                assert data[:1] in (b"\x15", b"")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # connects and leaves: not a TLS error (Envoy: no error, nothing counted)
        payload = bytes(range(256)) * 4096  # 1 MiB, both ways
        received = bytearray()

        def read():
            while len(received) < len(payload):
                chunk = good.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        good.sendall(payload)
        reader.join(10)
        assert bytes(received) == payload
        wait_for(lambda: _ssl_stats(proxy).get("connection_error") == 3, what="errors counted")
        stats = _ssl_stats(proxy)
        assert stats["handshake"] == 1
        good.close()
    finally:
        proxy.stop()
        echo.close()


def test_tcp_proxy_half_close_over_tls(tmp_path, files):
    """The client's close_notify reaches the upstream as a FIN; the echo server's FIN
    comes back as our close_notify and the connection ends cleanly."""
    echo = EchoServer()
    config = tcp_proxy_config(upstream_port=echo.port)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = (
        downstream_tls(files.server)
    )
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        conn = tls_connect(port, client_context(files))
        conn.sendall(b"last words")
        assert conn.recv(100) == b"last words"
        # Our close_notify: the proxy half-closes the upstream, whose FIN comes back as the
        # proxy's close_notify (unwrap returns once it arrived), then a FIN.
        raw = conn.unwrap()
        raw.settimeout(5)
        assert raw.recv(100) == b""
        raw.close()
        wait_for(
            lambda: proxy.stats().get("cluster.backend.upstream_cx_destroy_remote") == 1,
            what="upstream closed by the echo server",
        )
    finally:
        proxy.stop()
        echo.close()


def test_version_and_cipher_restrictions(tmp_path, files, upstream):
    proxy = _https_proxy(
        tmp_path, files, upstream,
        downstream_tls(files.server, params={
            "tls_maximum_protocol_version": "TLSv1_2",
            "cipher_suites": ["ECDHE-RSA-AES256-GCM-SHA384"],
        }),
    )  # fmt: skip
    try:
        port = proxy.listener_port("http")
        conn = tls_connect(port, client_context(files))
        assert conn.version() == "TLSv1.2"
        assert conn.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
        conn.close()
        ctx = client_context(files)
        ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        with pytest.raises(ssl.SSLError):
            tls_connect(port, ctx)
        ctx = client_context(files)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        with pytest.raises(ssl.SSLError):
            tls_connect(port, ctx)
        wait_for(lambda: _ssl_stats(proxy).get("connection_error") == 2, what="rejections")
        assert _ssl_stats(proxy)["ciphers.ECDHE-RSA-AES256-GCM-SHA384"] == 1
    finally:
        proxy.stop()


def test_alpn_is_negotiated_and_exposed(tmp_path, files, upstream):
    proxy = _https_proxy(
        tmp_path, files, upstream, downstream_tls(files.server, alpn=["h2", "http/1.1"])
    )
    try:
        port = proxy.listener_port("http")
        conn = tls_connect(port, client_context(files, alpn=["http/1.1"]))
        assert conn.selected_alpn_protocol() == "http/1.1"
        conn.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.2)
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        conn.close()
    finally:
        proxy.stop()


def test_certificates_by_sni_and_key_type(tmp_path, files, upstream):
    proxy = _https_proxy(
        tmp_path, files, upstream, downstream_tls(files.server, files.server_ecdsa)
    )
    try:
        port = proxy.listener_port("http")
        ecdsa = tls_connect(port, client_context(files), "www.example.com")
        assert "ECDSA" in ecdsa.cipher()[0] or ecdsa.version() == "TLSv1.3"
        peer = ecdsa.getpeercert()
        assert dict(x[0] for x in peer["subject"])["commonName"] == "localhost-ecdsa"
        ecdsa.close()
        ctx = client_context(files, max_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        rsa = tls_connect(port, ctx, "www.example.com")
        assert dict(x[0] for x in rsa.getpeercert()["subject"])["commonName"] == "localhost"
        rsa.close()
    finally:
        proxy.stop()


INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
        "TlsInspector"
    },
}
DIRECT = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"


def _direct(body: str) -> dict:
    return {"name": "envoy.filters.network.direct_response",
            "typed_config": {"@type": DIRECT, "response": {"inline_string": body}}}  # fmt: skip


def _sni_listener(files: TlsFiles, a, b, **extra) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "sni",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "listener_filters": [INSPECTOR],
            "filter_chains": [
                {"filter_chain_match": {"server_names": ["a.example.com"]},
                 "filters": [_direct("chain a\n")], "transport_socket": downstream_tls(a)},
                {"filter_chain_match": {"server_names": ["*.example.com"]},
                 "filters": [_direct("chain b\n")], "transport_socket": downstream_tls(b)},
                {"filter_chain_match": {"transport_protocol": "raw_buffer"},
                 "filters": [_direct("plaintext\n")]},
            ],
            **extra,
        }]},
    }  # fmt: skip


def test_sni_picks_the_filter_chain_with_curl(tmp_path, files):
    a = files.ca.issue("a.example.com", common_name="cert-a").write(files.dir, "sni_a")
    b = files.ca.issue("*.example.com", common_name="cert-b").write(files.dir, "sni_b")
    proxy = start_proxy(_sni_listener(files, a, b), tmp_path / "legatus",
                        args=["--concurrency", "1"])  # fmt: skip
    try:
        port = proxy.listener_port("sni")
        for host, body in (("a.example.com", "chain a\n"), ("b.example.com", "chain b\n"),
                           ("c.example.com", "chain b\n")):  # fmt: skip
            # direct_response writes during the handshake: the bytes follow the handshake.
            conn = tls_connect(port, client_context(files), host)
            data = b""
            while chunk := conn.recv(100):
                data += chunk
            conn.close()
            assert data.decode() == body, host
            r = _curl("-v", "--cacert", str(files.ca_path), "--resolve",
                      f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/")  # fmt: skip
            cert = "cert-a" if host == "a.example.com" else "cert-b"
            assert f"CN={cert}" in r.stderr, r.stderr
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"hello")
            assert plain.recv(100) == b"plaintext\n"
        stats = proxy.stats()
        assert stats["tls_inspector.sni_found"] >= 6
        assert stats["tls_inspector.tls_not_found"] == 1
    finally:
        proxy.stop()


def test_listener_filters_timeout(tmp_path, files):
    a = files.ca.issue("a.example.com").write(files.dir, "t_a")
    config = _sni_listener(files, a, a, listener_filters_timeout="0.2s")
    config["static_resources"]["listeners"][0]["filter_chains"].pop(1)
    proxy = start_proxy(config, tmp_path / "closing", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("sni")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            assert silent.recv(100) == b""  # closed when the inspector gives up
        wait_for(lambda: proxy.stats().get("listener.127.0.0.1_0.downstream_pre_cx_timeout")
                 == 1, what="pre_cx_timeout")  # fmt: skip
        assert proxy.stats()["listener.127.0.0.1_0.downstream_pre_cx_active"] == 0
    finally:
        proxy.stop()
    listener = config["static_resources"]["listeners"][0]
    listener["continue_on_listener_filters_timeout"] = True
    proxy = start_proxy(config, tmp_path / "continuing", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("sni")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            # A server-first protocol: after the timeout it gets the plaintext chain.
            assert silent.recv(100) == b"plaintext\n"
        assert proxy.stats()["listener.127.0.0.1_0.downstream_pre_cx_timeout"] == 1
    finally:
        proxy.stop()


def test_trustme_certificates_inline(tmp_path, upstream):
    """A certificate from trustme, given inline (inline_string and inline_bytes), served to
    httpx with trustme's CA as its only trust anchor."""
    import base64
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    transport_socket = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"inline_string": chain.decode()},
                "private_key": {"inline_bytes": base64.b64encode(
                    cert.private_key_pem.bytes()).decode()},
            }]},
        },
    }  # fmt: skip
    config = http_proxy_config(upstream.port)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = (
        transport_socket
    )
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("http")
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
        with httpx.Client(verify=ctx) as client:
            assert client.get(f"https://localhost:{port}/").status_code == 200
    finally:
        proxy.stop()

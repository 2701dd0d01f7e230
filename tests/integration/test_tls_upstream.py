"""Upstream TLS (an UpstreamTlsContext on a cluster's transport_socket) end to end: the
HTTP/1.1 pool and tcp_proxy connect through it; SNI, ALPN, client certificates, session
resumption, and a handshake that never finishes within connect_timeout."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support.process import start_proxy, wait_for
from tests.support.tls import TlsEchoServer, TlsFiles, upstream_tls
from tests.support.upstreams import tcp_proxy_config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return TlsFiles.make(tmp_path_factory.mktemp("certs"))


def _cluster_stats(proxy, cluster="backend") -> dict:
    prefix = f"cluster.{cluster}."
    return {k[len(prefix) :]: v for k, v in proxy.stats().items() if k.startswith(prefix) and v}


def test_tcp_proxy_through_mtls_upstream_with_sni_and_alpn(tmp_path, files):
    server = TlsEchoServer(files.server, alpn=["h2", "echo/1"], client_ca=files.ca_path)
    config = tcp_proxy_config(
        upstream_port=server.port,
        extra_cluster={"transport_socket": upstream_tls(
            sni="backend.example.com", ca=files.ca_path, cert=files.client,
            alpn=["echo/1"])},
    )  # fmt: skip
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"over tls")
            assert conn.recv(100) == b"over tls"
        seen = server.handshakes[0]
        assert seen["sni"] == "backend.example.com"
        assert seen["alpn"] == "echo/1"
        assert dict(x[0] for x in seen["peer"]["subject"])["commonName"] == "client"
        assert seen["version"] == "TLSv1.2"  # Envoy's client default maximum
        wait_for(lambda: _cluster_stats(proxy).get("ssl.handshake") == 1, what="handshake")
    finally:
        proxy.stop()
        server.close()


def test_tcp_proxy_failed_upstream_handshake(tmp_path, files):
    server = TlsEchoServer(files.server)
    config = tcp_proxy_config(
        upstream_port=server.port,
        extra_cluster={"transport_socket": upstream_tls(ca=files.rogue[0])},
        extra_tcp_proxy={"access_log": [{
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
                "StdoutAccessLog",
                "log_format": {"text_format_source": {
                    "inline_string": "TCP %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"}},
            }}]},
    )  # fmt: skip
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(100) == b""  # closed: no upstream
        wait_for(lambda: _cluster_stats(proxy).get("upstream_cx_connect_fail") == 1,
                 what="connect failure")  # fmt: skip
        assert _cluster_stats(proxy)["ssl.fail_verify_error"] == 1
    finally:
        proxy.stop()
        server.close()
    line = next(x for x in proxy.log().splitlines() if x.startswith("TCP "))
    assert line.startswith("TCP UF,URX TLS_error:|268435581:SSL_routines:OPENSSL_internal:"
                           "CERTIFICATE_VERIFY_FAILED:verify_cert_failed:")  # fmt: skip


class _HttpsUpstream(TlsEchoServer):
    """Answers each read with one HTTP/1.1 response (keep-alive)."""

    def _serve(self, raw):  # type: ignore[override]
        import ssl

        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes.append({"reused": conn.session_reused, "version": conn.version()})
        try:
            while data := conn.recv(65536):
                if b"/slow" in data:  # keeps its connection busy: the pool needs another
                    time.sleep(0.3)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
        except OSError:
            pass
        finally:
            conn.close()


def _http_config(port: int, transport_socket: dict, **cluster) -> dict:
    from tests.support.http_upstream import http_proxy_config

    config = http_proxy_config(port)
    c = config["static_resources"]["clusters"][0]
    c["transport_socket"] = transport_socket
    c.update(cluster)
    return config


def test_http_pool_reuses_tls_connections_and_resumes_sessions(tmp_path, files):
    server = _HttpsUpstream(files.server)
    config = _http_config(server.port, upstream_tls(sni="localhost", ca=files.ca_path))
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("http")
        for _ in range(5):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                assert r.read() == b"ok\n"
        assert len(server.handshakes) == 1  # one pooled TLS connection for all five
        # A second upstream connection resumes the first one's session.
        stats = _cluster_stats(proxy)
        assert stats["upstream_cx_total"] == 1
        import http.client
        import threading

        def slow_request():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/slow")
            c.getresponse().read()
            c.close()

        # Two slow requests at once need two upstream connections.
        threads = [threading.Thread(target=slow_request) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: len(server.handshakes) >= 2, what="a second connection")
        assert any(h["reused"] for h in server.handshakes[1:])
        wait_for(lambda: _cluster_stats(proxy).get("ssl.session_reused", 0) >= 1,
                 what="session_reused")  # fmt: skip
    finally:
        proxy.stop()
        server.close()


def test_connect_timeout_covers_the_handshake(tmp_path, files):
    """An upstream that accepts TCP but never answers the ClientHello: the cluster's
    connect_timeout ends the attempt (UF, upstream_cx_connect_timeout), as in Envoy."""
    silent = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:
                return

    import threading

    threading.Thread(target=accept, daemon=True).start()
    config = _http_config(silent.getsockname()[1], upstream_tls(ca=files.ca_path),
                          connect_timeout="0.3s")  # fmt: skip
    proxy = start_proxy(config, tmp_path / "legatus", args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("http")
        start = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert e.value.code == 503
        assert time.monotonic() - start < 3
        assert b"reset reason: connection timeout" in e.value.read()
        assert _cluster_stats(proxy)["upstream_cx_connect_timeout"] == 1
    finally:
        proxy.stop()
        silent.close()
        for c in held:
            c.close()

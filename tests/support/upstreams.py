"""Real TCP peers for the tests: an echo server and a sink that counts bytes."""

from __future__ import annotations

import socket
import socketserver
import threading


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            data = sock.recv(65536)
            if not data:
                sock.shutdown(socket.SHUT_WR)  # pass the half-close back
                return
            sock.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class EchoServer:
    """Echoes bytes back; answers the client's FIN with its own FIN."""

    def __init__(self, handler=_Echo) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound and closed at once): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static_cluster(name: str, port: int) -> dict:
    """A STATIC cluster with one endpoint, 127.0.0.1:``port``, and a 1 s connect timeout."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def tcp_proxy_config(
    *,
    upstream_port: int,
    listener_port: int = 0,
    stat_prefix: str = "tcp",
    cluster: str = "backend",
    extra_tcp_proxy: dict | None = None,
    extra_cluster: dict | None = None,
    listener_extra: dict | None = None,
) -> dict:
    """A minimal bootstrap: admin + one tcp_proxy listener + one static cluster."""
    tcp = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": stat_prefix,
        "cluster": cluster,
        **(extra_tcp_proxy or {}),
    }
    listener = {
        "name": "tcp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]}
        ],
        **(listener_extra or {}),
    }
    cluster_cfg = {**static_cluster("backend", upstream_port), **(extra_cluster or {})}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster_cfg]},
    }


class SinkServer:
    """Counts the bytes it reads; ``paused`` stops it reading (to back up the proxy)."""

    def __init__(self) -> None:
        self.received = 0
        self.paused = threading.Event()
        self.resumed = threading.Event()
        self.done = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        buf = bytearray(1 << 20)
        with conn:
            while True:
                if self.paused.is_set():
                    self.resumed.wait()
                n = conn.recv_into(buf)
                if not n:
                    break
                self.received += n
        self.done.set()

    def close(self) -> None:
        self.listener.close()

"""gRPC active health checking (``grpc_health_check``), Envoy against legatus: the same
cluster of gRPC upstreams, then each host's health flags, the ``health_check.*`` stats, and the
exact HTTP/2 request each upstream received.

Upstreams: grpcio servers with the standard ``grpc.health.v1`` servicer (serving, not serving,
no health service at all), a port nobody listens on, and a recording HTTP/2 server (the ``h2``
package) that keeps the request's header list in order and answers SERVING.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.integration.test_health_checking import flags
from tests.support.process import envoy_command, legatus_command, start_proxy, wait_for

HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


class HealthServer:
    """A grpcio server; ``status`` None: no health service registered (UNIMPLEMENTED)."""

    def __init__(self, status: int | None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        if status is not None:
            servicer = health.HealthServicer()
            servicer.set("svc", status)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)


class RecordingServer:
    """Keeps every request's header list (in order) and answers SERVING."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[str, str]]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        h2c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="latin-1")
        )
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())
        body = health_pb2.HealthCheckResponse(status=1).SerializeToString()
        framed = struct.pack(">BI", 0, len(body)) + body
        try:
            while data := conn.recv(65536):
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests.append(list(event.headers))
                    elif isinstance(event, h2.events.StreamEnded):
                        sid = event.stream_id
                        h2c.send_headers(sid, [(":status", "200"),
                                               ("content-type", "application/grpc")])  # fmt: skip
                        h2c.send_data(sid, framed)
                        h2c.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                conn.sendall(h2c.data_to_send())
        except OSError:
            return
        finally:
            conn.close()


def _cluster(ports: list[int], check: dict, hostnames: dict[int, str] | None = None) -> dict:
    hostnames = hostnames or {}
    endpoints = []
    for p in ports:
        endpoint: dict = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}
        if p in hostnames:
            endpoint["health_check_config"] = {"hostname": hostnames[p]}
        endpoints.append({"endpoint": endpoint})
    return {
        "name": "grpcb",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2,
        "health_checks": [
            {
                "timeout": "0.5s",
                "interval": "0.1s",
                "no_traffic_interval": "0.1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 2,
                "grpc_health_check": check,
            }
        ],
        "load_assignment": {"cluster_name": "grpcb", "endpoints": [{"lb_endpoints": endpoints}]},
    }


def _bootstrap(cluster: dict) -> dict:
    """No listener: a route to an HTTP/2 cluster needs the HTTP/2 upstream pool."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"clusters": [cluster]},
    }


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _run(tmp_path, command) -> dict:
    serving = HealthServer(health_pb2.HealthCheckResponse.SERVING)
    not_serving = HealthServer(health_pb2.HealthCheckResponse.NOT_SERVING)
    unimplemented = HealthServer(None)
    recorder, named = RecordingServer(), RecordingServer()
    refused = _closed_port()
    names = {serving.port: "serving", not_serving.port: "not_serving",
             unimplemented.port: "unimplemented", recorder.port: "recorder",
             named.port: "named", refused: "refused"}  # fmt: skip
    check = {"service_name": "svc",
             "initial_metadata": [{"header": {"key": "x-md", "value": "v"}}]}  # fmt: skip
    config = _bootstrap(_cluster(list(names), check, {named.port: "named.health"}))
    proxy = start_proxy(config, tmp_path, command=command, args=["--concurrency", "1"])
    try:

        def settled():
            f = flags(proxy, "grpcb")
            return f if len(f) == len(names) and len(recorder.requests) >= 3 else None

        got = wait_for(settled, timeout=10, what="three checks of every host")
        stats = proxy.stats()
        return {
            "flags": {names[int(k.rsplit(":", 1)[1])]: v for k, v in got.items()},
            "request": recorder.requests[0],
            "named_request": named.requests[0],
            "stats": {k: v for k, v in stats.items() if ".health_check." in k},
        }
    finally:
        proxy.stop()
        for server in (serving, not_serving, unimplemented, recorder, named):
            server.close()


def test_grpc_health_checking_matches_envoy(tmp_path):
    envoy = _run(tmp_path / "envoy", envoy_command())
    legatus = _run(tmp_path / "legatus", legatus_command())
    assert envoy["flags"] == {
        "serving": "healthy",
        "recorder": "healthy",
        "named": "healthy",
        "not_serving": "/failed_active_hc",
        "unimplemented": "/failed_active_hc",
        "refused": "/failed_active_hc",
    }
    assert legatus["flags"] == envoy["flags"]
    assert envoy["request"] == [
        (":method", "POST"), (":path", "/grpc.health.v1.Health/Check"),
        (":authority", "grpcb"), (":scheme", "http"), ("te", "trailers"),
        ("content-type", "application/grpc"), ("user-agent", "Envoy/HC"), ("x-md", "v"),
        ("grpc-timeout", "500m"),
    ]  # fmt: skip
    assert legatus["request"] == envoy["request"]
    assert dict(envoy["named_request"])[":authority"] == "named.health"
    assert legatus["named_request"] == envoy["named_request"]
    # The counters move with time; their names, and the gauges, must match.
    assert sorted(legatus["stats"]) == sorted(envoy["stats"])
    for name in ("healthy", "degraded", "passive_failure", "verify_cluster"):
        key = f"cluster.grpcb.health_check.{name}"
        assert legatus["stats"][key] == envoy["stats"][key], name
    assert legatus["stats"]["cluster.grpcb.health_check.network_failure"] > 0


def _validate(tmp_path, command, config: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(config)
    out = subprocess.run([*command, "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1, out
    return out.stdout + out.stderr


def test_grpc_health_check_needs_an_http2_cluster(tmp_path):
    config = """
static_resources:
  clusters:
  - name: grpcb
    health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1,
                     grpc_health_check: {}}]
    load_assignment:
      cluster_name: grpcb
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: 1}}}}]}]
"""
    message = "grpcb cluster must support HTTP/2 for gRPC healthchecking"
    assert message in _validate(tmp_path, envoy_command(), config)
    legatus = _validate(tmp_path, [sys.executable, "-m", "legatus"], config)
    assert f"static_resources.clusters[0].health_checks[0].grpc_health_check: {message}" in legatus

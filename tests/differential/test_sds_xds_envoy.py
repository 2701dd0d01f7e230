"""SDS over xDS through the real Envoy 1.40 and legatus side by side: a listener's
certificate and a cluster's trusted CA as secrets over ADS (state of the world and delta) and
over a gRPC SDS stream of their own, each proxy with a control plane of its own.

The bootstrap: ADS to the control plane, CDS over ADS bringing the cluster ``backend`` (a TLS
echo server, whose certificate the cluster verifies against the secret ``upstream_ca``), and
a static TCP proxy listener ``tls`` whose certificate is the secret ``server``. Nothing is
pushed of the secrets before the start. The scenario, observed on both sides:

1. warming: the server is not ready while the secrets are missing (``/ready``, the server
   state and the warming clusters), the cluster's CA arriving first, then the certificate;
2. traffic: a client sees the certificate of the secret and is echoed through the cluster;
3. rotation under traffic: a new certificate is pushed while a connection is open: the new
   connection sees it, the open one still echoes;
4. a NACK: a certificate whose key does not match; the certificate in use stays;
5. the ``sds.*`` and ``ssl_context_update_by_sds`` stats, and ``/config_dump``'s secrets
   (private keys ``[redacted]``).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from google.protobuf import json_format

from tests.differential.xds_scenario import SIDES, side_by_side
from tests.support.certs import CA
from tests.support.process import envoy_command, legatus_command, start_proxy
from tests.support.tls import DOWNSTREAM, UPSTREAM, TlsEchoServer
from tests.support.upstreams import static_cluster
from tests.support.xds_thread import XdsThread, ads_bootstrap

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

MODES = ("ads", "ads-delta", "grpc", "grpc-delta")


class Pki:
    """The CA that signs everything, two server certificates and the echo server's."""

    def __init__(self, directory: Path) -> None:
        self.ca = CA("sds root")
        self.one = self.ca.issue("one.example", common_name="one")
        self.two = self.ca.issue("two.example", common_name="two")
        self.backend = self.ca.issue("backend.example", common_name="backend")
        self.backend_files = self.backend.write(directory, "backend")
        self.other = CA("other root")  # trusted by nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("sds-pki"))


def sds_source(mode: str) -> dict:
    if mode.startswith("ads"):
        return {"ads": {}, "resource_api_version": "V3"}
    return {
        "api_config_source": {
            "api_type": "DELTA_GRPC" if mode.endswith("delta") else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
        },
        "resource_api_version": "V3",
    }


def bootstrap(xds_port: int, mode: str) -> dict:
    listener = {
        "name": "tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": "tcp",
                            "cluster": "backend",
                        },
                    }
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": DOWNSTREAM,
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [
                                {"name": "server", "sds_config": sds_source(mode)}
                            ]
                        },
                    },
                },
            }
        ],
    }
    return ads_bootstrap(
        xds_port, delta=mode == "ads-delta", static_resources={"listeners": [listener]}
    )


def backend_cluster(port: int, mode: str) -> cluster_pb2.Cluster:
    return json_format.ParseDict(backend_cluster_config(port, mode), cluster_pb2.Cluster())


def backend_cluster_config(port: int, mode: str) -> dict:
    config = static_cluster("backend", port)
    config["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM,
            "sni": "backend.example",
            "common_tls_context": {
                "validation_context_sds_secret_config": {
                    "name": "upstream_ca",
                    "sds_config": sds_source(mode),
                }
            },
        },
    }
    return config


def certificate_secret(name: str, cert_pem: bytes, key_pem: bytes) -> secret_pb2.Secret:
    return json_format.ParseDict(
        {
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_bytes": _b64(cert_pem)},
                "private_key": {"inline_bytes": _b64(key_pem)},
            },
        },
        secret_pb2.Secret(),
    )


def ca_secret(name: str, ca_pem: bytes) -> secret_pb2.Secret:
    return json_format.ParseDict(
        {"name": name, "validation_context": {"trusted_ca": {"inline_bytes": _b64(ca_pem)}}},
        secret_pb2.Secret(),
    )


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# What a side observes ---------------------------------------------------------------------


class Side:
    def __init__(self, name: str, proxy, xds: XdsThread) -> None:
        self.name = name
        self.proxy = proxy
        self.xds = xds

    def ready(self) -> dict:
        # (not server.state: Envoy sets that gauge only when it flushes its stats)
        status, body = self.proxy.admin("/ready")
        stats = self.proxy.stats()
        return {
            "ready": status,
            "body": body.strip(),
            "warming_clusters": stats.get("cluster_manager.warming_clusters"),
        }

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proxy.admin("/ready")[0] == 200:
                return
            time.sleep(0.05)

    def settled_ready(self, previous: dict | None = None, timeout: float = 3.0) -> dict:
        """``ready()`` once two looks 300 ms apart agree."""
        deadline = time.monotonic() + timeout
        last = self.ready()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.ready()
            if now == last and now != previous:
                return now
            last = now
        return last

    def secret_reply(self, name: str, since: int, timeout: float = 10.0):
        """The first ACK/NACK after request ``since`` of a Secret response to a request for
        ``name`` (over a gRPC stream per secret, the other secret's stream answers too)."""

        streams = self.xds.call(
            lambda: {
                r.stream
                for r in self.xds.server.requests
                if r.type_url == SECRET and name in _names(r)
            }
        )

        def answers(r) -> bool:
            return r.type_url == SECRET and bool(r.response_nonce) and r.stream in streams

        return self.xds.run(self.xds.server.wait_for(answers, since=since, timeout=timeout), 30)

    def mark(self) -> int:
        return self.xds.call(lambda: len(self.xds.server.requests))

    def port(self) -> int:
        return self.proxy.listener_port("tls")

    def stats(self) -> dict[str, Any]:
        out = {}
        for name, value in self.proxy.stats().items():
            if name.startswith("sds."):
                out[name] = value
            elif name.endswith("ssl_socket_factory.ssl_context_update_by_sds") or name.endswith(
                "context_secrets_not_ready"
            ):
                out[re.sub(r"127\.0\.0\.1_\d+", "<listener>", name)] = value
        out.pop("sds.server.update_time", None)
        out.pop("sds.upstream_ca.update_time", None)
        return out

    def secrets_dump(self, resource: str = "dynamic_active_secrets") -> Any:
        status, body = self.proxy.admin(f"/config_dump?resource={resource}")
        if status != 200:
            return {"status": status, "body": body}
        configs = json.loads(body).get("configs", [])
        for entry in configs:
            entry.pop("last_updated", None)
        return sorted(configs, key=lambda e: e.get("name", ""))


def _names(request) -> list[str]:
    """The secret names a SotW or delta request asks for."""
    from envoy.service.discovery.v3 import discovery_pb2

    if isinstance(request.message, discovery_pb2.DeltaDiscoveryRequest):
        return request.subscribe
    return request.resource_names


def handshake(port: int, ca_pem: bytes, payload: bytes = b"") -> dict:
    """Connect with TLS, trusting ``ca_pem``; the certificate's CN and the echo."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with raw, ctx.wrap_socket(raw) as conn:
            cn = _common_name(conn)
            echo = _echo(conn, payload) if payload else None
            return {"cn": cn, "echo": echo}
    except (OSError, ssl.SSLError) as e:
        return {"error": type(e).__name__}


def _common_name(conn: ssl.SSLSocket) -> str:
    for rdn in conn.getpeercert()["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def _echo(conn: ssl.SSLSocket, payload: bytes) -> str:
    conn.sendall(payload)
    data = b""
    while len(data) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def scenario(side: Side, pki: Pki) -> dict:
    out: dict[str, Any] = {}
    time.sleep(1.0)
    out["1 nothing"] = side.settled_ready()
    out["1 warming secrets"] = side.secrets_dump("dynamic_warming_secrets")
    since = side.mark()
    side.xds.set_resources(SECRET, [ca_secret("upstream_ca", pki.ca.cert_pem)])
    out["2 ca ack"] = side.secret_reply("upstream_ca", since).is_nack
    out["2 ca"] = side.settled_ready(out["1 nothing"])
    since = side.mark()
    side.xds.set_resources(
        SECRET,
        [
            ca_secret("upstream_ca", pki.ca.cert_pem),
            certificate_secret("server", pki.one.chain_pem, pki.one.key_pem),
        ],
    )
    side.wait_ready()
    out["3 both"] = side.settled_ready()
    port = side.port()
    out["3 traffic"] = handshake(port, pki.ca.cert_pem, b"ping")

    # Rotation under traffic: a connection open across the update keeps working.
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    open_conn = ctx.wrap_socket(raw)
    out["4 open before"] = {"cn": _common_name(open_conn), "echo": _echo(open_conn, b"a")}
    since = side.mark()
    side.xds.set_resources(
        SECRET,
        [
            ca_secret("upstream_ca", pki.ca.cert_pem),
            certificate_secret("server", pki.two.chain_pem, pki.two.key_pem),
        ],
    )
    out["4 rotation nack"] = side.secret_reply("server", since).is_nack
    time.sleep(0.5)
    out["4 new connection"] = handshake(port, pki.ca.cert_pem, b"pong")
    out["4 open after"] = _echo(open_conn, b"b")
    open_conn.close()

    # A key that does not match its certificate: NACKed, the certificate in use stays.
    since = side.mark()
    side.xds.set_resources(
        SECRET,
        [
            ca_secret("upstream_ca", pki.ca.cert_pem),
            certificate_secret("server", pki.one.chain_pem, pki.two.key_pem),
        ],
    )
    reply = side.secret_reply("server", since)
    out["5 bad key nack"] = reply.is_nack
    time.sleep(0.5)
    out["5 after nack"] = handshake(port, pki.ca.cert_pem, b"again")
    time.sleep(0.5)
    out["6 stats"] = side.stats()
    out["6 secrets"] = side.secrets_dump()
    return out


def _run_one(name: str, workdir: Path, pki: Pki, mode: str) -> dict:
    echo = TlsEchoServer(pki.backend_files)
    try:
        with XdsThread(delta=mode == "ads-delta") as xds:
            xds.set_resources(CLUSTER, [backend_cluster(echo.port, mode)])
            command = envoy_command() if name == "envoy" else legatus_command()
            args = [] if name == "envoy" else ["--use-dynamic-base-id"]
            proxy = start_proxy(
                bootstrap(xds.port, mode),
                workdir / name,
                command=command,
                args=[*args, "--concurrency", "1"],
                wait_live=False,
            )
            try:
                return scenario(Side(name, proxy, xds), pki)
            finally:
                proxy.stop()
    finally:
        echo.close()


@pytest.fixture(scope="module", params=MODES)
def runs(request, pki, tmp_path_factory) -> tuple[str, dict]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"sds-{mode}")
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {name: pool.submit(_run_one, name, workdir, pki, mode) for name in SIDES}
        return mode, {name: f.result() for name, f in futures.items()}


def _compare(runs, keys) -> None:
    _, sides = runs
    envoy = {k: v for k, v in sides["envoy"].items() if k.startswith(tuple(keys))}
    legatus = {k: v for k, v in sides["legatus"].items() if k.startswith(tuple(keys))}
    assert envoy == legatus, side_by_side(envoy, legatus)


def test_warming_until_secrets_arrive_matches(runs):
    _compare(runs, {"1", "2", "3"})


def test_rotation_under_traffic_matches(runs):
    _compare(runs, {"4"})
    assert runs[1]["legatus"]["4 new connection"]["cn"] == "two"


def test_bad_secret_is_nacked_and_old_one_serves(runs):
    _compare(runs, {"5"})
    assert runs[1]["legatus"]["5 bad key nack"] is True
    assert runs[1]["legatus"]["5 after nack"]["cn"] == "two"


def test_sds_stats_match(runs):
    _compare(runs, {"6 stats"})


def test_config_dump_secrets_match(runs):
    _compare(runs, {"6 secrets"})


# SDS on clusters from the bootstrap's secrets and from a file -----------------------------


def _tcp_listener(name: str, cluster: str) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": name,
                            "cluster": cluster,
                        },
                    }
                ]
            }
        ],
    }


def _verifying_cluster(name: str, port: int, sds: dict) -> dict:
    config = static_cluster(name, port)
    config["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM,
            "common_tls_context": {"validation_context_sds_secret_config": sds},
        },
    }
    return config


def _sds_file(path: Path, name: str, ca_pem: bytes, version: str) -> None:
    import yaml

    document = {
        "version_info": version,
        "resources": [
            {
                "@type": SECRET,
                "name": name,
                "validation_context": {"trusted_ca": {"inline_bytes": _b64(ca_pem)}},
            }
        ],
    }
    staged = path.with_suffix(".tmp")
    staged.write_text(yaml.safe_dump(document))
    staged.rename(path)  # a rename over the file: one SDS update


def cluster_sources_bootstrap(directory: Path, port: int, pki: Pki, other: CA) -> dict:
    file_source = {"path_config_source": {"path": str(directory / "ca_sds.yaml")}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "node": {"id": "test-node", "cluster": "test-cluster"},
        "static_resources": {
            "secrets": [
                _dict(ca_secret("static_ca", pki.ca.cert_pem)),
                _dict(ca_secret("other_ca", other.cert_pem)),
            ],
            "clusters": [
                _verifying_cluster("by_static", port, {"name": "static_ca"}),
                _verifying_cluster("by_other", port, {"name": "other_ca"}),
                _verifying_cluster("by_file", port, {"name": "file_ca", "sds_config": file_source}),
            ],
            "listeners": [
                _tcp_listener("to_static", "by_static"),
                _tcp_listener("to_other", "by_other"),
                _tcp_listener("to_file", "by_file"),
            ],
        },
    }


def _through(proxy, listener: str, payload: bytes) -> str:
    """What comes back through a TCP proxy listener; ``closed`` when the upstream TLS
    failed (Envoy resets the downstream connection, legatus's tcp_proxy closes it: a
    difference of tcp_proxy's, not of TLS, set aside here)."""
    try:
        with socket.create_connection(("127.0.0.1", proxy.listener_port(listener)), 5) as conn:
            conn.sendall(payload)
            conn.settimeout(3)
            data = b""
            while len(data) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace") or "closed"
    except OSError:
        return "closed"


def _cluster_stats(proxy) -> dict:
    wanted = ("ssl.handshake", "ssl.fail_verify_error", "ssl_context_update_by_sds")
    return {
        name: value
        for name, value in proxy.stats().items()
        if (name.startswith("cluster.by_") and name.endswith(wanted))
        or (name.startswith("sds.file_ca.") and not name.endswith("update_time"))
    }


def _cluster_sources_one(name: str, workdir: Path, pki: Pki) -> dict:
    other = pki.other
    echo = TlsEchoServer(pki.backend_files)
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    _sds_file(directory / "ca_sds.yaml", "file_ca", pki.ca.cert_pem, "1")
    command = envoy_command() if name == "envoy" else legatus_command()
    args = [] if name == "envoy" else ["--use-dynamic-base-id"]
    proxy = start_proxy(
        cluster_sources_bootstrap(directory, echo.port, pki, other),
        directory,
        command=command,
        args=[*args, "--concurrency", "1"],
    )
    out: dict[str, Any] = {}
    try:
        out["1 echo"] = {
            listener: _through(proxy, listener, b"hello")
            for listener in ("to_static", "to_other", "to_file")
        }
        _sds_file(directory / "ca_sds.yaml", "file_ca", other.cert_pem, "2")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proxy.stats().get("sds.file_ca.update_success", 0) >= 2:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        out["2 after rotation"] = _through(proxy, "to_file", b"again")
        time.sleep(0.3)
        out["3 stats"] = _cluster_stats(proxy)
        status, body = proxy.admin("/config_dump?resource=static_secrets")
        static = json.loads(body).get("configs", []) if status == 200 else body
        for entry in static if isinstance(static, list) else ():
            entry.pop("last_updated", None)
        out["4 static secrets"] = static
        return out
    finally:
        proxy.stop()
        echo.close()


@pytest.fixture(scope="module")
def cluster_sources(pki, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("sds-cluster-sources")
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {n: pool.submit(_cluster_sources_one, n, workdir, pki) for n in SIDES}
        return {n: f.result() for n, f in futures.items()}


def test_cluster_secrets_from_bootstrap_and_file_match(cluster_sources):
    envoy, legatus = cluster_sources["envoy"], cluster_sources["legatus"]
    assert envoy == legatus, side_by_side(envoy, legatus)
    assert legatus["1 echo"] == {"to_static": "hello", "to_other": "closed", "to_file": "hello"}
    assert legatus["2 after rotation"] == "closed"


# The initial fetch timing out: the listener and the cluster serve without a context -------


def _timeout_one(name: str, workdir: Path, pki: Pki) -> dict:
    echo = TlsEchoServer(pki.backend_files)
    try:
        with XdsThread() as xds:
            # The listener's certificate and a CDS cluster's CA over ADS, never sent. (Not a
            # static cluster: Envoy 1.40 crashes on a static cluster's secret over ADS.)
            config = bootstrap(xds.port, "ads")
            chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
            common = chain["transport_socket"]["typed_config"]["common_tls_context"]
            common["tls_certificate_sds_secret_configs"][0]["sds_config"] = {
                **sds_source("ads"),
                "initial_fetch_timeout": "1s",
            }
            cluster = backend_cluster_config(echo.port, "ads")
            tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
            tls["validation_context_sds_secret_config"]["sds_config"] = {
                **sds_source("ads"),
                "initial_fetch_timeout": "1s",
            }
            xds.set_resources(CLUSTER, [json_format.ParseDict(cluster, cluster_pb2.Cluster())])
            command = envoy_command() if name == "envoy" else legatus_command()
            args = [] if name == "envoy" else ["--use-dynamic-base-id"]
            proxy = start_proxy(
                config, workdir / name, command=command, args=[*args, "--concurrency", "1"]
            )
            try:
                side = Side(name, proxy, xds)
                out: dict[str, Any] = {"ready": side.settled_ready()}
                # The connection is closed: reset (closed with the ClientHello unread) or
                # ended (closed first by the TCP proxy, whose upstream cannot connect
                # either); Envoy does one or the other by timing, so the kind is not compared.
                result = handshake(side.port(), pki.ca.cert_pem, b"x")
                out["handshake"] = "failed" if "error" in result else result
                time.sleep(0.5)
                stats = side.stats()
                out["stats"] = {
                    k: v for k, v in stats.items() if "not_ready" in k or "init_fetch" in k
                }
                out["warming secrets"] = side.secrets_dump("dynamic_warming_secrets")
                return out
            finally:
                proxy.stop()
    finally:
        echo.close()


def test_initial_fetch_timeout_serves_without_context_match(pki, tmp_path):
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {n: pool.submit(_timeout_one, n, tmp_path, pki) for n in SIDES}
        sides = {n: f.result() for n, f in futures.items()}
    assert sides["envoy"] == sides["legatus"], side_by_side(sides["envoy"], sides["legatus"])
    assert sides["legatus"]["handshake"] == "failed"

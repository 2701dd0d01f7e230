"""``HttpProtocolOptions.auto_config`` compiled with the cluster, and the mixed pool a worker's
ThreadLocalCluster hands the router for it."""

from __future__ import annotations

import random

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401 (Any)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 (Any)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (Any)
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.conn_pool.mixed import MixedConnPool
from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig, compile_cluster
from legatus.upstream.thread_local_cluster import ThreadLocalCluster

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
AUTO_PATH = f"cluster.typed_extension_protocol_options['{HPO}'].auto_config"
TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def tls(**common) -> dict:
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": TLS_CONTEXT, "common_tls_context": common}}  # fmt: skip


def cluster(auto: dict, **extra):
    document: dict = {
        "name": "c", "connect_timeout": "1s", "transport_socket": tls(),
        "typed_extension_protocol_options": {
            HPO: {"@type": f"type.googleapis.com/{HPO}", "auto_config": auto}},
        **extra,
    }  # fmt: skip
    return compile_cluster(json_format.ParseDict(document, cluster_pb2.Cluster()), "cluster")


def test_options_of_each_protocol():
    config = cluster({"http2_protocol_options": {"max_concurrent_streams": 3},
                      "http_protocol_options": {"enable_trailers": True}})  # fmt: skip
    assert config.auto_config and not config.http2 and not config.use_downstream_protocol
    assert config.http2_settings.max_concurrent_streams == 3
    assert config.http1_settings.enable_trailers


@pytest.mark.parametrize("transport_socket", [None, {
    "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3."
                 "RawBuffer"}}])  # fmt: skip
def test_a_transport_socket_without_alpn_is_refused(transport_socket):
    """Envoy: "ALPN configured for cluster c which has a non-ALPN transport socket"."""
    document: dict = {"name": "c", "connect_timeout": "1s", "typed_extension_protocol_options": {
        HPO: {"@type": f"type.googleapis.com/{HPO}", "auto_config": {}}}}  # fmt: skip
    if transport_socket:
        document["transport_socket"] = transport_socket
    with pytest.raises(ConfigError, match="ALPN configured for cluster c which has a non-ALPN "
                       "transport socket") as e:  # fmt: skip
        compile_cluster(json_format.ParseDict(document, cluster_pb2.Cluster()), "cluster")
    assert e.value.path == AUTO_PATH


@pytest.mark.parametrize("field", ["http3_protocol_options", "alternate_protocols_cache_options"])
def test_http3_is_refused_by_path(field):
    value = {"name": "c"} if field == "alternate_protocols_cache_options" else {}
    with pytest.raises(ConfigError) as e:
        cluster({field: value})
    assert e.value.path == f"{AUTO_PATH}.{field}"


def test_grpc_health_checking_is_refused():
    health_check = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                    "healthy_threshold": 1, "grpc_health_check": {}}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        cluster({}, health_checks=[health_check])
    assert e.value.path == "cluster.health_checks[0].grpc_health_check"


def local_cluster(config) -> ThreadLocalCluster:
    tlc = ThreadLocalCluster(config, Store(), random.Random(0))
    address = SocketAddress(host="127.0.0.1", port=1)
    tlc.update_hosts((HostConfig(address=address, hostname="", weight=1, priority=0),))
    return tlc


def test_one_mixed_pool_offering_h2_and_http11():
    tlc = local_cluster(cluster({}))
    host = tlc.hosts[0]
    pool = tlc.http_conn_pool(host)
    assert type(pool) is MixedConnPool and tlc.http_conn_pool(host) is pool
    assert pool.options.transport_socket.config.common.alpn == ("h2", "http/1.1")
    assert tlc.transport_socket.config.common.alpn == ()  # (TCP: as configured)


def test_configured_alpn_protocols_are_offered_as_they_are():
    config = cluster({}, transport_socket=tls(alpn_protocols=["http/1.1"]))
    pool = local_cluster(config).http_conn_pool(local_cluster(config).hosts[0])
    assert pool.options.transport_socket.config.common.alpn == ("http/1.1",)

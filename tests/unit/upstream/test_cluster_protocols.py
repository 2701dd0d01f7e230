"""Which protocol a cluster's HTTP pools speak: HttpProtocolOptions compiled with the cluster,
and the pool a worker's ThreadLocalCluster hands the router per host and downstream protocol."""

from __future__ import annotations

import random

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 (Any)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (Any)
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.conn_pool import DrainBehavior
from legatus.conn_pool.http1 import Http1ConnPool
from legatus.conn_pool.http2 import Http2ConnPool
from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig, compile_cluster
from legatus.upstream.thread_local_cluster import ThreadLocalCluster

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
OPTIONS_PATH = f"cluster.typed_extension_protocol_options['{HPO}']"


def cluster(options: dict | None, **extra):
    document: dict = {"name": "c", "connect_timeout": "1s", **extra}
    if options is not None:
        document["typed_extension_protocol_options"] = {
            HPO: {"@type": f"type.googleapis.com/{HPO}", **options}
        }
    return compile_cluster(json_format.ParseDict(document, cluster_pb2.Cluster()), "cluster")


def test_http11_by_default():
    config = cluster(None)
    assert (config.http2, config.http2_settings, config.use_downstream_protocol) == (
        False, None, False)  # fmt: skip


def test_explicit_http2_with_its_options():
    config = cluster({"explicit_http_config": {"http2_protocol_options": {
        "max_concurrent_streams": 7, "initial_stream_window_size": 65535,
        "connection_keepalive": {"interval": "10s", "timeout": "2s"}}}})  # fmt: skip
    assert config.http2 and not config.use_downstream_protocol
    settings = config.http2_settings
    assert (settings.max_concurrent_streams, settings.initial_stream_window_size) == (7, 65535)
    assert (settings.keepalive_interval, settings.keepalive_timeout) == (10.0, 2.0)


def test_deprecated_cluster_fields_when_no_typed_options():
    """Envoy builds HttpProtocolOptions from the deprecated Cluster fields, unless
    typed_extension_protocol_options has some (then those win)."""
    config = cluster(None, http2_protocol_options={"max_concurrent_streams": 9},
                     common_http_protocol_options={"idle_timeout": "7s"})  # fmt: skip
    assert config.http2 and config.http2_settings.max_concurrent_streams == 9
    assert config.upstream_idle_timeout == 7.0
    downstream = cluster(None, protocol_selection="USE_DOWNSTREAM_PROTOCOL",
                         http_protocol_options={}, http2_protocol_options={})  # fmt: skip
    assert downstream.use_downstream_protocol
    typed_wins = cluster({"explicit_http_config": {"http_protocol_options": {}}},
                         http2_protocol_options={})  # fmt: skip
    assert not typed_wins.http2
    with pytest.raises(ConfigError, match="Both HTTP1 and HTTP2 options may only be configured"):
        cluster(None, http_protocol_options={}, http2_protocol_options={})


def test_use_downstream_protocol_config():
    config = cluster({"use_downstream_protocol_config": {
        "http_protocol_options": {"enable_trailers": True}}})  # fmt: skip
    assert config.use_downstream_protocol and not config.http2
    assert config.http2_settings is not None  # for HTTP/2 requests, Envoy's defaults
    assert config.http1_enable_trailers
    with_h2 = cluster({"use_downstream_protocol_config": {"http2_protocol_options": {}}})
    assert with_h2.http2  # Envoy's HTTP2 feature: a request without a protocol gets HTTP/2


def test_a_grpc_health_check_needs_http2():
    health_check = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                    "healthy_threshold": 1, "grpc_health_check": {}}  # fmt: skip
    cluster({"use_downstream_protocol_config": {"http2_protocol_options": {}}},
            health_checks=[health_check])  # fmt: skip
    with pytest.raises(ConfigError, match="must support HTTP/2"):
        cluster({"use_downstream_protocol_config": {}}, health_checks=[health_check])


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"auto_config": {}}, f"{OPTIONS_PATH}.auto_config"),
        ({"explicit_http_config": {"http3_protocol_options": {}}},
         f"{OPTIONS_PATH}.explicit_http_config.http3_protocol_options"),
        ({"explicit_http_config": {"http2_protocol_options": {"allow_connect": True}}},
         f"{OPTIONS_PATH}.explicit_http_config.http2_protocol_options.allow_connect"),
        ({"use_downstream_protocol_config": {"http3_protocol_options": {}}},
         f"{OPTIONS_PATH}.use_downstream_protocol_config.http3_protocol_options"),
    ],
)  # fmt: skip
def test_what_is_not_supported_is_refused_by_path(options, path):
    with pytest.raises(ConfigError) as e:
        cluster(options)
    assert e.value.path == path


def local_cluster(options: dict | None) -> ThreadLocalCluster:
    tlc = ThreadLocalCluster(cluster(options), Store(), random.Random(0))
    address = SocketAddress(host="127.0.0.1", port=1)
    tlc.update_hosts((HostConfig(address=address, hostname="", weight=1, priority=0),))
    return tlc


def test_pools_by_protocol():
    h1 = local_cluster(None)
    assert type(h1.http_conn_pool(h1.hosts[0])) is Http1ConnPool
    h2 = local_cluster({"explicit_http_config": {"http2_protocol_options": {}}})
    pool = h2.http_conn_pool(h2.hosts[0])
    assert type(pool) is Http2ConnPool and h2.http_conn_pool(h2.hosts[0]) is pool


def test_one_pool_per_downstream_protocol():
    tlc = local_cluster({"use_downstream_protocol_config": {}})
    host = tlc.hosts[0]
    assert tlc.use_downstream_protocol
    h1, h2 = tlc.http_conn_pool(host, "HTTP/1.1"), tlc.http_conn_pool(host, "HTTP/2")
    assert (type(h1), type(h2)) == (Http1ConnPool, Http2ConnPool)
    assert tlc.http_conn_pool(host, "HTTP/1.0") is h1
    assert tlc.http_conn_pool(host) is h1  # no downstream protocol, no http2_protocol_options
    # A host that leaves the cluster takes both pools with it.
    drained = []
    for pool in (h1, h2):
        pool.drain = lambda behavior, pool=pool: drained.append((pool, behavior))
    tlc.update_hosts(())
    assert drained == [(h1, DrainBehavior.DRAIN_AND_DELETE), (h2, DrainBehavior.DRAIN_AND_DELETE)]


def test_http2_over_tls_offers_alpn_h2():
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                 "UpstreamTlsContext"}}  # fmt: skip
    config = cluster({"explicit_http_config": {"http2_protocol_options": {}}},
                     transport_socket=tls)  # fmt: skip
    tlc = ThreadLocalCluster(config, Store(), random.Random(0))
    tlc.update_hosts((HostConfig(address=SocketAddress(host="127.0.0.1", port=1), hostname="",
                                 weight=1, priority=0),))  # fmt: skip
    pool = tlc.http_conn_pool(tlc.hosts[0])
    assert pool.options.transport_socket.config.common.alpn == ("h2",)
    assert tlc.transport_socket.config.common.alpn == ()  # (HTTP/1.1 and TCP: as configured)

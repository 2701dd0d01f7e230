"""A fake AdminContext: the main process as the admin endpoints see it, in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.admin.v3 import server_info_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from google.protobuf import json_format

from legatus.server.admin.context import ClusterInfo, HostInfo, ListenerInfo, ServerState
from legatus.server.admin.router import handle
from legatus.stats.store import Store

BOOTSTRAP = {
    "node": {"id": "probe-node", "cluster": "probe-cluster"},
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    "static_resources": {
        "listeners": [
            {
                "name": "tcp_in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": "type.googleapis.com/"
                                    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                    "stat_prefix": "ingress_tcp",
                                    "cluster": "backend",
                                },
                            }
                        ]
                    }
                ],
            },
            {
                "name": "http_in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                    "http_connection_manager.v3.HttpConnectionManager",
                                    "stat_prefix": "ingress_http",
                                    "route_config": {
                                        "name": "local_route",
                                        "virtual_hosts": [
                                            {
                                                "name": "vh",
                                                "domains": ["*"],
                                                "routes": [
                                                    {
                                                        "match": {"prefix": "/"},
                                                        "route": {"cluster": "backend"},
                                                    }
                                                ],
                                            },
                                        ],
                                    },
                                },
                            }
                        ]
                    }
                ],
            },
        ],
        "clusters": [
            {
                "name": "backend",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "backend",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": 9,
                                            }
                                        }
                                    }
                                },
                            ]
                        }
                    ],
                },
            },
        ],
    },
}


class FakeLogSink:
    def __init__(self) -> None:
        self._levels = {"admin": "info", "upstream": "info", "http": "info"}

    def levels(self) -> dict[str, str]:
        return dict(self._levels)

    def set_level(self, level: str) -> None:
        self._levels = dict.fromkeys(self._levels, level)

    def set_component_level(self, name: str, level: str) -> None:
        self._levels[name] = level


class FakeOptions:
    stats_tags: tuple[tuple[str, str], ...] = ()

    def to_proto(self) -> server_info_pb2.CommandLineOptions:
        return server_info_pb2.CommandLineOptions(concurrency=2, config_path="envoy.yaml")


@dataclass
class FakeContext:
    bootstrap: Any
    options: Any = field(default_factory=FakeOptions)
    stats: Store = field(default_factory=Store)
    log_sink: Any = field(default_factory=FakeLogSink)
    start_time: float = field(default_factory=time.time)
    state: ServerState = ServerState.LIVE
    healthcheck_failed: bool = False
    hot_restart_version: str = "11.104"
    listener_infos: list[ListenerInfo] = field(default_factory=list)
    cluster_infos: list[ClusterInfo] = field(default_factory=list)
    refreshes: int = 0
    shutdowns: int = 0
    reopens: int = 0

    async def refresh_stats(self) -> None:
        self.refreshes += 1

    def listeners(self) -> list[ListenerInfo]:
        return self.listener_infos

    def clusters(self) -> list[ClusterInfo]:
        return self.cluster_infos

    def shutdown(self) -> None:
        self.shutdowns += 1

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed

    def reopen_logs(self) -> None:
        self.reopens += 1


def make_context() -> FakeContext:
    bootstrap = json_format.ParseDict(BOOTSTRAP, bootstrap_pb2.Bootstrap())
    listeners = []
    for port, config in zip((33689, 45139), bootstrap.static_resources.listeners, strict=True):
        bound = listener_pb2.Listener()
        bound.CopyFrom(config)
        bound.address.socket_address.port_value = port
        listeners.append(ListenerInfo(name=config.name, address=f"127.0.0.1:{port}", config=bound))
    backend: cluster_pb2.Cluster = bootstrap.static_resources.clusters[0]
    host = HostInfo(
        address="127.0.0.1:9",
        hostname="",
        weight=1,
        priority=0,
        stats_prefix="cluster.backend.hosts.127.0.0.1:9.",
    )
    context = FakeContext(
        bootstrap=bootstrap,
        listener_infos=listeners,
        cluster_infos=[ClusterInfo(name="backend", config=backend, hosts=(host,))],
    )
    context.stats.counter(host.stats_prefix + "cx_total", hidden=True)
    context.stats.gauge(host.stats_prefix + "cx_active", hidden=True)
    return context


@pytest.fixture
def context() -> FakeContext:
    return make_context()


@pytest.fixture
def admin(context: FakeContext):
    """``await admin("/stats?usedonly")`` -> (status, content-type, body text)."""

    async def call(
        path: str, method: str = "GET", body: bytes = b"", content_type: str = ""
    ) -> tuple[int, str, str]:
        response = await handle(context, method, path, body, content_type=content_type)
        return response.status, response.header("content-type") or "", response.body.decode()

    return call
